"""PortfolioStream: the portfolio, kept current in the background of a kernel or script.

The stream runs on a daemon thread with its own asyncio loop (``LoopThread``),
so it keeps flowing while a notebook cell computes and never touches the
kernel's loop. What it receives is applied to a ``LiveState`` under a lock;
frames are built from that state on demand and cached until their table
changes. Callbacks run on the stream's thread.

Connection policy (``tracking`` decides, ``connection`` carries it out):
reconnect with exponential backoff and full jitter and resume from the last
seq; fall back to polling the REST snapshot when streaming is switched off
(503 ``streaming_disabled`` or close 4003) or the stream keeps failing, and
return to the stream when it is back; stop for good on 401/403.

``widget()`` and ``snapshot_html()`` load the notebook layer on first use
(anywidget is heavy); that layer reads the stream through ``LiveReader`` and
never imports this module.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future
from typing import Any, TypeVar

import pandas as pd

from . import frames
from .codes import DEFAULT_URL
from .connection import ConnectionOptions, run_connection
from .errors import AuthError
from .freshness import Freshness, FreshnessRules, Status
from .live_state import EVENT_NAMES, LiveState
from .loop_thread import LoopThread
from .metrics import LatencyHistogram
from .protocol import CHANNELS, Batch, Heartbeat, Snapshot
from .state import BatchOutcome, PortfolioState

FrameT = TypeVar("FrameT", pd.DataFrame, "pd.Series[Any]")
log = logging.getLogger("alphaflow_live")

__all__ = ["DEFAULT_URL", "EVENT_NAMES", "AuthError", "PortfolioStream", "connect"]


class PortfolioStream:
    """A live portfolio. Create it with ``alphaflow_live.connect()``."""

    def __init__(
        self,
        url: str | Sequence[str] | None = None,
        token: str | None = None,
        *,
        channels: Iterable[str] = CHANNELS,
        poll_interval_s: float = 5.0,
        freshness: FreshnessRules | None = None,
        max_fills: int = 10_000,
        max_equity_points: int = 10_000,
        backoff_base_s: float = 0.5,
        backoff_cap_s: float = 30.0,
        fallback_after_failures: int = 3,
        connect_timeout_s: float = 10.0,
        start: bool = True,
    ) -> None:
        self.urls = server_urls(url)
        token = token or os.environ.get("ALPHAFLOW_TOKEN")
        if not token:
            raise AuthError(
                "no token: pass token=... or set ALPHAFLOW_TOKEN "
                "(create one with: alphaflow-live users add NAME --role user)"
            )
        self._token = token
        self.channels = list(channels)
        self.poll_interval_s = poll_interval_s
        self.rules = freshness or FreshnessRules()
        self.backoff_base_s = backoff_base_s
        self.backoff_cap_s = backoff_cap_s
        self.fallback_after_failures = fallback_after_failures
        self.connect_timeout_s = connect_timeout_s

        self._live = LiveState(max_fills=max_fills, max_equity_points=max_equity_points)
        self._frame_cache: dict[str, tuple[int, Any]] = {}
        self._row_caches = {"positions": frames.RowCache(frames.POSITION_COLUMNS),
                            "orders": frames.RowCache(frames.ORDER_COLUMNS)}  # fmt: skip
        self._runner = LoopThread("alphaflow-live-stream")
        self._connection: Future[None] | None = None
        self._stop: asyncio.Event | None = None
        self._stopping = threading.Event()
        if start:
            self.start()

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Start streaming (``connect()`` does this); a second call does nothing."""
        if self._connection is not None or self._stopping.is_set():
            return
        options = ConnectionOptions(
            urls=tuple(self.urls),
            token=self._token,
            channels=tuple(self.channels),
            poll_interval_s=self.poll_interval_s,
            backoff_base_s=self.backoff_base_s,
            backoff_cap_s=self.backoff_cap_s,
            fallback_after_failures=self.fallback_after_failures,
            connect_timeout_s=self.connect_timeout_s,
        )
        self._connection = self._runner.submit(self._run(options))

    async def _run(self, options: ConnectionOptions) -> None:
        self._stop = stop = asyncio.Event()
        if self._stopping.is_set():
            return
        try:
            await run_connection(options, self._live, stop)
        finally:
            # Stopped by an error (a refused token): stay "offline", which says why there is no data.
            if self._live.error is None:
                self._live.set_status("closed")

    def close(self, timeout: float = 5.0) -> None:
        """Stop the stream and wait for its thread (idempotent)."""
        self._stopping.set()
        stop, connection = self._stop, self._connection
        if stop is not None:
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                self._runner.call_later(0, stop.set)
        if connection is not None and not self._runner.in_thread():
            with contextlib.suppress(Exception):
                connection.result(timeout)
        self._runner.stop(timeout)
        if self._live.error is None:
            self._live.set_status("closed")

    def __enter__(self) -> PortfolioStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        with self.reading() as state:
            held = f"positions={len(state.positions)} orders={len(state.orders)} seq={state.seq}"
        return f"<PortfolioStream {self.url} status={self.status} freshness={self.freshness} {held}>"

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    # ------------------------------------------------------------- reading

    @property
    def status(self) -> Status:
        return self._live.status

    @property
    def url(self) -> str:
        """The server URL the stream uses: the one it streams from, or tried last (of ``urls``)."""
        return self._live.url or self.urls[0]

    @property
    def status_reason(self) -> str:
        """Why the status is what it is ("" while live): for example why the stream fell back to
        polling ("the server refused the stream (HTTP 429): user 'alice' already has 5 ...")."""
        return self._live.status_reason

    @property
    def error(self) -> Exception | None:
        """Why the stream stopped for good (a refused token), else None."""
        return self._live.error

    @property
    def freshness(self) -> Freshness:
        return self.rules.classify(self._live.status, self._live.last_data_at, time.monotonic())

    @property
    def last_update(self) -> pd.Timestamp | None:
        updated = self._live.last_update
        return None if updated is None else pd.Timestamp(updated)

    @property
    def seq(self) -> int | None:
        with self.reading() as state:
            return state.seq

    @property
    def epoch(self) -> str | None:
        with self.reading() as state:
            return state.epoch

    @property
    def latency(self) -> LatencyHistogram:
        """End-to-end latency, event ``ts`` → applied here."""
        return self._live.latency

    @property
    def counters(self) -> dict[str, int]:
        return self._live.counters

    def reading(self) -> contextlib.AbstractContextManager[PortfolioState]:
        """The portfolio as the stream holds it, consistent for the length of the block.

        ``with live.reading() as state: ...`` — read, do not change; the stream
        waits while the block runs, so keep it short.
        """
        return self._live.reading()

    @property
    def positions(self) -> pd.DataFrame:
        """Open positions, indexed by symbol (a copy: yours to change)."""
        return self._frame(
            "positions", lambda s: frames.positions_frame(s.positions, self._row_caches["positions"])
        )

    @property
    def orders(self) -> pd.DataFrame:
        """Open and recent orders, indexed by order id."""
        return self._frame("orders", lambda s: frames.orders_frame(s.orders, self._row_caches["orders"]))

    @property
    def account(self) -> pd.Series:
        return self._frame("account", lambda s: frames.account_series(s.account))

    @property
    def fills(self) -> pd.DataFrame:
        """Executions, newest last, indexed by fill id."""
        return self._frame("fills", lambda s: frames.fills_frame(list(s.fills)))

    @property
    def equity_history(self) -> pd.DataFrame:
        """Equity, cash and day P&L at each account update, indexed by time."""
        return self._frame("equity", lambda _: frames.equity_frame(self._live.equity_points()))

    def _frame(self, table: str, build: Callable[[PortfolioState], FrameT]) -> FrameT:
        with self.reading() as state:
            version = self._live.version(table)
            cached = self._frame_cache.get(table)
            if cached is None or cached[0] != version:
                cached = (version, build(state))
                self._frame_cache[table] = cached
            frame: FrameT = cached[1].copy()
            return frame

    def widget(self, **options: Any) -> Any:
        """The full PortfolioWidget bound to this stream."""
        from .widgets import PortfolioWidget

        return PortfolioWidget(self, **options)

    def snapshot_html(self) -> str:
        """A self-contained static HTML view (no script, no network), for shared reports."""
        from .report import snapshot_html

        return snapshot_html(self)

    def stats(self) -> dict[str, Any]:
        """Client-side figures: end-to-end latency (event ts → applied), batches, reconnects, bytes."""
        summary = self.latency.summary_ms()
        return {
            "status": self.status,
            "freshness": self.freshness,
            "seq": self.seq,
            "latency_ms": {
                "p50": summary.p50,
                "p95": summary.p95,
                "p99": summary.p99,
                "count": summary.count,
            },
            **dict(self.counters),
        }

    # ------------------------------------------------------------- events

    def on(self, event: str, callback: Callable[[Any], None]) -> Callable[[], None]:
        """Call ``callback`` on every "fill", "position", "order", "account" or "status";
        returns a function that unsubscribes it."""
        return self._live.on(event, callback)

    def wait_for(self, predicate: Callable[[PortfolioStream], Any], timeout: float = 10.0) -> Any:
        """Block until ``predicate(live)`` is truthy; returns its value."""

        def check() -> Any:
            if self.error is not None:
                raise self.error
            return predicate(self)

        result = self._live.wait(check, time.monotonic() + timeout)
        if result is None:
            raise TimeoutError(f"condition not met within {timeout}s (status {self.status}, seq {self.seq})")
        return result

    async def until(self, predicate: Callable[[PortfolioStream], Any], timeout: float = 10.0) -> Any:  # noqa: ASYNC109
        """``wait_for`` for asyncio code: awaits without blocking the caller's loop."""
        return await asyncio.to_thread(self.wait_for, predicate, timeout)

    def call_later(self, delay_s: float, callback: Callable[[], None]) -> bool:
        """Run ``callback`` on the stream's thread after ``delay_s`` (widgets schedule their
        flushes here); False once the stream is closed, when nothing runs there any more."""
        return self._runner.call_later(delay_s, callback)

    # -------------------------------------------------------------- feeding

    def feed(self, message: Snapshot | Batch | Heartbeat) -> BatchOutcome | None:
        """Apply one server message to the portfolio held, as the connection does: for
        replaying recorded frames, tests and benchmarks (on a stream made with ``start=False``).
        A batch's outcome says whether it fitted; the status stays the connection's."""
        if isinstance(message, Heartbeat):
            self._live.touch(message.server_time)
            return None
        return self._live.apply(message)


def server_urls(url: str | Sequence[str] | None) -> list[str]:
    """The stream URLs to use: ``url`` (one, a list, or comma-separated), else ``$ALPHAFLOW_URL``
    (comma-separated for the nodes of a cluster), else the default."""
    given = url if url is not None else os.environ.get("ALPHAFLOW_URL") or DEFAULT_URL
    parts = given.split(",") if isinstance(given, str) else list(given)
    urls = list(dict.fromkeys(part.strip() for part in parts if part.strip()))
    if not urls:
        raise ValueError(f"no server URL in {given!r}: pass url=... or set ALPHAFLOW_URL")
    return urls


# The streams ``connect`` made, by (URLs, token hash): re-running a notebook cell replaces its stream.
_connected: dict[tuple[str, str], weakref.ref[PortfolioStream]] = {}
_connected_lock = threading.Lock()


def connect(
    url: str | Sequence[str] | None = None, token: str | None = None, **options: Any
) -> PortfolioStream:
    """Start streaming the portfolio in the background and return at once.

    ``url`` defaults to ``$ALPHAFLOW_URL`` (else ws://127.0.0.1:8765/ws/portfolio); a list
    (or a comma-separated string) names the nodes of a cluster, tried in a shuffled order and
    resumed on whichever answers. ``token`` defaults to ``$ALPHAFLOW_TOKEN``. Options:
    ``channels``, ``poll_interval_s``, ``freshness`` (FreshnessRules), ``max_fills``,
    ``backoff_base_s``, ``backoff_cap_s``, ``fallback_after_failures``, ``connect_timeout_s``.

    Calling it again in the same process with the same URL and token closes the
    stream the previous call returned, so re-running ``live = afl.connect()`` in a
    notebook never piles up connections against the server's per-user limit.
    Streams made with ``PortfolioStream(...)`` directly are left alone.
    """
    start = options.pop("start", True)
    stream = PortfolioStream(url, token, start=False, **options)
    key = (",".join(stream.urls), hashlib.sha256(stream._token.encode()).hexdigest())
    with _connected_lock:
        previous = _connected.get(key)
        _connected[key] = weakref.ref(stream)
    earlier = None if previous is None else previous()
    if earlier is not None and not earlier.stopping:
        log.info("alphaflow-live: closing the stream an earlier connect() made to %s", ",".join(stream.urls))
        earlier.close()
    if start:
        stream.start()
    return stream
