"""The server's settings: one dataclass, filled from flags or ALPHAFLOW_* variables."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import platformdirs


def default_users_file() -> Path:
    return Path(platformdirs.user_data_dir("alphaflow-live")) / "users.json"


def default_state_dir() -> Path:
    return Path(platformdirs.user_data_dir("alphaflow-live")) / "state"


@dataclass(frozen=True, slots=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8765
    source: str = "none"
    users_file: Path = Path("users.json")
    batch_window_ms: int = 250
    # Off reproduces a plain periodic batcher (every batch waits a full window).
    leading_edge: bool = True
    # Price ticks move marks at once; holders' positions are re-derived at most once per
    # this interval (None: the batch window, the most often a client could see them change).
    mark_interval_ms: int | None = None
    max_connections: int = 100
    max_per_user: int = 5
    heartbeat_s: float = 15.0
    disable_streaming: bool = False
    # Inbound limits of PROTOCOL.md.
    max_frame_bytes: int = 64 * 1024
    max_messages_per_s: float = 100.0
    # A connection's queued frames beyond this are discarded for one snapshot.
    max_backlog_bytes: int = 4 * 1024 * 1024
    # How long a resync may wait for a socket to drain before close 1013.
    slow_client_timeout_s: float = 30.0
    # Replay buffer per user: at least this many events or seconds, whichever is more.
    retain_events: int = 10_000
    retain_seconds: float = 300.0
    compression: bool = True

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
