"""The server's settings: dataclasses whose fields are the flags of ``alphaflow-live serve``.

A field's default is the only default there is: command.py turns every field
into a flag (``--field-name``, also read from ``ALPHAFLOW_FIELD_NAME``), and
its metadata (``option(...)``) adds the help text, the choices, or that it is
a ``--no-...`` switch. ``ServerConfig`` is what the server runs with; the
other dataclasses hold the flags that feed ``serve`` itself (state, logs) and
the sources, which this module does not import.
"""

from __future__ import annotations

import argparse
import os
import socket
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import Field, dataclass, field
from pathlib import Path
from typing import Any

import platformdirs

from alphaflow_live.codes import (
    CLOSE_RATE_LIMIT,
    CLOSE_SLOW_CONSUMER,
    DEFAULT_HOST,
    DEFAULT_PORT,
    INGEST_PATH,
)

from .admission import canonical_origin


def default_users_file() -> Path:
    return Path(platformdirs.user_data_dir("alphaflow-live")) / "users.json"


def default_state_dir() -> Path:
    return Path(platformdirs.user_data_dir("alphaflow-live")) / "state"


@dataclass(frozen=True, slots=True)
class Option:
    """How a field shows up as a flag."""

    # ``{default}`` in it is replaced by the field's default.
    help: str | None = None
    choices: tuple[str, ...] = ()
    # For a bool that defaults to True: the flag is --no-<name>, and it stores False.
    negated: bool = False


_OPTION = "alphaflow_server.option"


def option(
    help: str | None = None, *, choices: Sequence[str] = (), negated: bool = False
) -> Mapping[str, Any]:
    """Field metadata for its flag: ``field(default=..., metadata=option("what it does"))``."""
    return {_OPTION: Option(help, tuple(choices), negated)}


def option_of(f: Field[Any]) -> Option:
    value = f.metadata.get(_OPTION, Option())
    assert isinstance(value, Option)
    return value


class OriginError(ValueError, argparse.ArgumentTypeError):
    """A value of ``--allowed-origins`` that is no origin (argparse shows this text as it is)."""


class Origins(tuple[str, ...]):
    """``--allowed-origins``: comma-separated origins, each kept as ``canonical_origin`` spells it."""

    __slots__ = ()

    def __new__(cls, text: str | Iterable[str] = "") -> Origins:
        items = text.split(",") if isinstance(text, str) else text
        origins = []
        for item in (item.strip() for item in items):
            if not item:
                continue
            origin = canonical_origin(item)
            if origin is None:
                raise OriginError(
                    f"{item!r} is not an origin: give scheme://host[:port] (http or https, no path), "
                    "for example https://dash.example.com"
                )
            origins.append(origin)
        return super().__new__(cls, origins)

    def __str__(self) -> str:
        return ",".join(self)


@dataclass(frozen=True, slots=True)
class ServerConfig:
    host: str = field(default=DEFAULT_HOST, metadata=option("the address to listen on"))
    port: int = field(default=DEFAULT_PORT, metadata=option("0 picks a free port"))
    source: str = field(
        default="sim",
        metadata=option(
            f"where events come from besides {INGEST_PATH} (default: the market simulator)",
            choices=("sim", "alpaca", "none"),
        ),
    )
    users_file: Path = field(
        default_factory=default_users_file,
        metadata=option("users and token hashes (default: $ALPHAFLOW_USERS_FILE or {default})"),
    )
    batch_window_ms: int = field(
        default=250,
        metadata=option("the batching window in milliseconds (0: every event at once, unbatched)"),
    )
    # Off reproduces a plain periodic batcher (every batch waits a full window).
    leading_edge: bool = field(
        default=True,
        metadata=option(
            "make every batch wait a full window (no immediate send of isolated events)", negated=True
        ),
    )
    # Price ticks move marks at once; holders' positions are re-derived at most once per
    # this interval (None: the batch window, the most often a client could see them change).
    mark_interval_ms: int | None = field(
        default=None,
        metadata=option("how often price ticks re-mark the holders' positions (default: the batch window)"),
    )
    max_connections: int = field(
        default=100, metadata=option("WebSocket connections in all (portfolio, ingest, admin)")
    )
    max_per_user: int = field(default=5, metadata=option("portfolio connections per user"))
    # Sockets that have not sent a whole HTTP request yet hold a file descriptor each;
    # past the bound a new one is closed at once (None: a quarter of the open-file limit, at most 1024).
    max_pending_handshakes: int | None = field(
        default=None,
        metadata=option(
            "connections still in their opening handshake before new sockets are closed at once "
            "(default: min(1024, open-file limit / 4))"
        ),
    )
    allowed_origins: Origins = field(
        default=Origins(),
        metadata=option(
            "browser origins besides the server's own that may connect and read the REST endpoints, "
            "comma-separated (e.g. https://dash.example.com)"
        ),
    )
    heartbeat_s: float = field(
        default=15.0, metadata=option("seconds between pings; a silent peer is dropped after twice this")
    )
    disable_streaming: bool = field(
        default=False, metadata=option("start with streaming off (REST snapshot only)")
    )
    # Inbound limits of PROTOCOL.md.
    max_frame_bytes: int = field(
        default=64 * 1024, metadata=option("largest inbound message; a larger one closes the connection")
    )
    max_messages_per_s: float = field(
        default=100.0,
        metadata=option(
            "inbound messages per second per portfolio or admin connection "
            f"before close {CLOSE_RATE_LIMIT.code}"
        ),
    )
    # A market-data relay sends one message per tick, far above what a notebook client sends.
    ingest_rate: float = field(
        default=10_000.0,
        metadata=option(
            f"inbound messages per second per {INGEST_PATH} connection before close {CLOSE_RATE_LIMIT.code}"
        ),
    )
    # A connection's queued frames beyond this are discarded for one snapshot.
    max_backlog_bytes: int = field(
        default=4 * 1024 * 1024,
        metadata=option("per-connection queued bytes before a slow client is resynchronised"),
    )
    # How long a resync may wait for a socket to drain before it is closed as a slow consumer.
    slow_client_timeout_s: float = field(
        default=30.0,
        metadata=option(
            f"how long a slow client's socket may take to drain before close {CLOSE_SLOW_CONSUMER.code}"
        ),
    )
    # Replay buffer per user: at least this many events or seconds, whichever is more.
    retain_events: int = field(
        default=10_000, metadata=option("replay buffer per user: at least this many events ...")
    )
    retain_seconds: float = field(
        default=300.0, metadata=option("... or this many seconds of them, whichever is more")
    )
    compression: bool = field(default=True, metadata=option("do not offer permessage-deflate", negated=True))

    @property
    def batch_window_s(self) -> float:
        return self.batch_window_ms / 1000.0

    @property
    def mark_interval_s(self) -> float:
        interval = self.batch_window_ms if self.mark_interval_ms is None else self.mark_interval_ms
        return interval / 1000.0

    # A dead peer is dropped within 2 × heartbeat_s: a ping every heartbeat_s,
    # then the pong timeout and the closing handshake share one more heartbeat_s.
    @property
    def ping_timeout_s(self) -> float:
        return self.heartbeat_s * 0.6

    @property
    def close_timeout_s(self) -> float:
        return min(3.0, self.heartbeat_s * 0.4)


@dataclass(frozen=True, slots=True)
class ServeOptions:
    """What ``serve`` does around the server: where state lives, how much it logs."""

    state_dir: Path = field(
        default_factory=default_state_dir, metadata=option("durable state (default: {default})")
    )
    no_state: bool = field(default=False, metadata=option("keep nothing across restarts"))
    reset_state: bool = field(
        default=False, metadata=option("move the existing state file aside and start empty")
    )
    log_level: str = "INFO"


def default_node_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass(frozen=True, slots=True)
class ClusterFlags:
    """Many nodes over one Redis (``--redis``); without it the node stands alone on its state dir."""

    redis: str | None = field(
        default=None,
        metadata=option(
            "join the cluster of nodes sharing this Redis or Redis Cluster "
            "(redis://, rediss:// or unix:// URL; default: $ALPHAFLOW_REDIS, else stand alone)"
        ),
    )
    node_id: str = field(
        default_factory=default_node_id,
        metadata=option("this node's name in the cluster (default: host name and pid)"),
    )
    partitions: int = field(
        default=64,
        metadata=option(
            "engine partitions users hash onto; fixed for the life of a cluster "
            "(a node that disagrees refuses to start)"
        ),
    )
    lease_s: float = field(
        default=5.0,
        metadata=option(
            "seconds a partition or source lease lasts unrenewed (a dead node's are taken over after it)"
        ),
    )


@dataclass(frozen=True, slots=True)
class SimulatorOptions:
    """The market simulator's flags (``--source sim``)."""

    seed: int = field(default=7, metadata=option("same seed, same market"))
    sim_users: int = field(
        default=1, metadata=option("portfolios to simulate: 'demo' and sim-0001 … (for load)")
    )
    sim_tick_rate: float = field(
        default=40.0, metadata=option("price ticks per second over the whole universe")
    )
    sim_order_rate: float = field(default=0.3, metadata=option("new orders per second per user"))
    sim_speed: float = field(
        default=60.0, metadata=option("how many times faster than the clock prices move")
    )


@dataclass(frozen=True, slots=True)
class AlpacaFlags:
    """The Alpaca source's flags (``--source alpaca``); its keys come from the environment only."""

    alpaca_user: str | None = field(
        default=None, metadata=option("the AlphaFlow user whose portfolio the Alpaca account is")
    )
    alpaca_accounts: Path | None = field(
        default=None,
        metadata=option("TOML file of [[account]] user / key_env / secret_env / paper, for several users"),
    )
    alpaca_live: bool = field(default=False, metadata=option("trade the live account (default: paper)"))
    alpaca_feed: str = field(default="iex", metadata=option(choices=("iex", "sip")))
    alpaca_reconcile_s: float = field(
        default=60.0, metadata=option("how often to reconcile with the broker's REST state")
    )
    alpaca_trading_url: str | None = field(
        default=None, metadata=option("override the REST URL (tests, proxies)")
    )
    alpaca_stream_url: str | None = field(
        default=None, metadata=option("override the trade updates stream URL (tests, proxies)")
    )
    alpaca_data_url: str | None = field(
        default=None, metadata=option("override the market data stream URL (tests, proxies)")
    )
