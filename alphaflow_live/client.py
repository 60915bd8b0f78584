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

Alerts (``alert``): an ``AlertBook`` (``alerts``) decides; the stream
evaluates it after each snapshot or batch applied, on the thread that applied
it, once the state's lock is released, and again when a cooldown it waits on
ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import os
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future
from datetime import UTC, datetime
from typing import Any, Final, TypeVar

import pandas as pd

from . import frames
from .alerts import ALERT_STATE_FIELDS, AlertBook, AlertHandle, AlertState
from .codes import DEFAULT_URL
from .connection import ConnectionOptions, run_connection
from .errors import AuthError
from .freshness import Freshness, FreshnessRules, Status
from .live_state import EVENT_NAMES as STATE_EVENTS
from .live_state import LiveState
from .loop_thread import LoopThread
from .metrics import LatencyHistogram
from .protocol import CHANNELS, Batch, Heartbeat, Snapshot
from .state import BatchOutcome, PortfolioState

FrameT = TypeVar("FrameT", pd.DataFrame, "pd.Series[Any]")
log = logging.getLogger("alphaflow_live")

# What ``on`` accepts: the state's events, and the firings of alerts.
EVENT_NAMES: Final = (*STATE_EVENTS, "alert")

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
        field_deltas: bool = True,
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
        # Ask the server for field deltas (docs/protocol.md): the frames carry only what changed.
        self.field_deltas = field_deltas

        self._live = _StreamState(
            self._check_alerts, max_fills=max_fills, max_equity_points=max_equity_points
        )
        self._alerts: AlertBook[PortfolioStream] = AlertBook()
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
            field_deltas=self.field_deltas,
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
        """Call ``callback`` on every "fill", "position", "order", "account", "status" or "alert"
        (an ``Alert``, for each firing of any alert of this stream); returns a function that
        unsubscribes it."""
        if event == "alert":
            return self._alerts.subscribe(callback)
        if event not in EVENT_NAMES:
            raise ValueError(f"unknown event {event!r}; one of: {', '.join(EVENT_NAMES)}")
        return self._live.on(event, callback)

    # ------------------------------------------------------------- alerts

    def alert(
        self,
        condition: Callable[[PortfolioStream], object],
        message: str | Callable[[PortfolioStream], object],
        *,
        name: str | None = None,
        cooldown_s: float = 60,
    ) -> AlertHandle:
        """Fire ``on("alert")`` callbacks when ``condition(live)`` becomes true, once per crossing
        and at most once per ``cooldown_s``; ``message`` is text or a function of the stream.

        ``live.alert(lambda l: l.account["equity"] - l.account["last_equity"] < -1_000,
        "day loss over 1,000")``. Conditions run on the stream's thread after each snapshot
        or batch (and once when added); one that raises counts as false. ``name`` defaults
        to the message (or ``alert-N``); an alert of the same name is replaced. Returns a
        handle: ``.cancel()`` removes the alert.
        """
        handle = self._alerts.add(condition, message, name=name, cooldown_s=cooldown_s)
        if self._live.held() is not None:
            self._recheck(time.monotonic())
        return handle

    @property
    def alerts(self) -> pd.DataFrame:
        """The alerts registered, indexed by name: message, state ("armed": the next true fires;
        "active": fired, and still true; "cooling": true again within the cooldown), cooldown_s,
        fire_count, last_fired (UTC), error (why the condition raised, else None)."""
        return alerts_frame(self._alerts.states())

    def _check_alerts(self) -> None:
        """Evaluate the alerts: after each snapshot or batch applied, with the state's lock released."""
        if not len(self._alerts):
            return
        self._alerts.evaluate(self, time.monotonic(), datetime.now(UTC), self.seq)
        due = self._alerts.next_due()
        if due is not None:
            self._recheck(due)

    def _recheck(self, at: float) -> None:
        """Evaluate the alerts again on the stream's thread at ``at`` (monotonic). A stream that is
        not started (fed by hand) evaluates at the next ``feed`` instead."""
        if self._connection is not None and self._alerts.schedule(at):
            self._runner.call_later(at - time.monotonic(), functools.partial(self._rechecked, at))

    def _rechecked(self, at: float) -> None:
        self._alerts.looked(at)
        self._check_alerts()

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


class _StreamState(LiveState):
    """The stream's state: after each snapshot or batch applied (the lock released, the
    callbacks called), it has the alerts evaluated."""

    def __init__(self, after_apply: Callable[[], None], **options: Any) -> None:
        super().__init__(**options)
        self._after_apply = after_apply

    def apply(self, message: Snapshot | Batch) -> BatchOutcome | None:
        outcome = super().apply(message)
        if outcome is None or outcome is BatchOutcome.APPLIED:
            self._after_apply()
        return outcome


_ALERT_DTYPES: Final[dict[str, Any]] = {"cooldown_s": "float64", "fire_count": "int64"}


def alerts_frame(states: Sequence[AlertState]) -> pd.DataFrame:
    """Alert states as a frame indexed by name; ``last_fired`` is ``datetime64[ns, UTC]``."""
    index = pd.Index([s.name for s in states], name="name", dtype=object)
    columns = [name for name in ALERT_STATE_FIELDS if name != "name"]
    data: dict[str, Any] = {}
    for column in columns:
        values = [getattr(s, column) for s in states]
        if column == "last_fired":
            data[column] = pd.Series(frames.to_utc(values), index=index)
        else:
            data[column] = pd.Series(values, index=index, dtype=_ALERT_DTYPES.get(column, "object"))
    return pd.DataFrame(data, index=index, columns=columns)


def server_urls(url: str | Sequence[str] | None) -> list[str]:
    """The stream URLs to use: ``url`` (one, a list, or comma-separated), else ``$ALPHAFLOW_URL``
    (comma-separated for the nodes of a cluster), else the default."""
    given = url if url is not None else os.environ.get("ALPHAFLOW_URL") or DEFAULT_URL
    parts = given.split(",") if isinstance(given, str) else list(given)
    urls = list(dict.fromkeys(part.strip() for part in parts if part.strip()))
    if not urls:
        raise ValueError(f"no server URL in {given!r}: pass url=... or set ALPHAFLOW_URL")
    return urls


# The streams ``connect`` made, by (URLs, token hash, session): re-running a notebook cell
# replaces its stream.
_connected: dict[tuple[str, str, int], weakref.ref[PortfolioStream]] = {}
_connected_lock = threading.Lock()


def _session() -> int:
    """Which notebook session is connecting: one per process, but ``marimo run`` serves every
    viewer's session from one process, each with its own runtime context (on its own thread), and
    one viewer's connect() must not close another's stream."""
    marimo_context = sys.modules.get("marimo._runtime.context")  # never imports marimo itself
    if marimo_context is None:
        return 0
    try:
        context = marimo_context.safe_get_context()
    except Exception:  # marimo's internals moved: one session per process, as elsewhere
        return 0
    return 0 if context is None else id(context)


def connect(
    url: str | Sequence[str] | None = None, token: str | None = None, **options: Any
) -> PortfolioStream:
    """Start streaming the portfolio in the background and return at once.

    ``url`` defaults to ``$ALPHAFLOW_URL`` (else ws://127.0.0.1:8765/ws/portfolio); a list
    (or a comma-separated string) names the nodes of a cluster, tried in a shuffled order and
    resumed on whichever answers. ``token`` defaults to ``$ALPHAFLOW_TOKEN``. Options:
    ``channels``, ``poll_interval_s``, ``freshness`` (FreshnessRules), ``max_fills``,
    ``backoff_base_s``, ``backoff_cap_s``, ``fallback_after_failures``, ``connect_timeout_s``,
    ``field_deltas`` (default True: later events of a position carry only the fields that changed).

    Calling it again in the same session (a kernel; under ``marimo run``, a viewer's
    session) with the same URL and token closes the stream the previous call
    returned, so re-running ``live = afl.connect()`` in a notebook never piles up
    connections against the server's per-user limit.
    Streams made with ``PortfolioStream(...)`` directly are left alone.
    """
    start = options.pop("start", True)
    stream = PortfolioStream(url, token, start=False, **options)
    key = (",".join(stream.urls), hashlib.sha256(stream._token.encode()).hexdigest(), _session())
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
