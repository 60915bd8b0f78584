"""PortfolioStream: the portfolio, kept current in the background of a kernel or script.

The stream runs in a daemon thread with its own asyncio loop, so it keeps
flowing while a notebook cell computes, and never touches the kernel's loop
(no nest_asyncio). Everything it receives is applied to a PortfolioState under
a lock; frames are built from that state on demand. Callbacks run on the
stream's thread; one that raises is logged and the stream goes on.

Connection policy (``alphaflow_live.connection`` holds the loop itself):
reconnect with exponential backoff and full jitter and resume from the last
seq; fall back to polling the REST snapshot when streaming is switched off
(503 ``streaming_disabled`` or close 4003) or the stream keeps failing, and
return to the stream when it is back; stop for good on 401/403.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any, TypeVar

import pandas as pd

from . import frames
from .freshness import Freshness, FreshnessRules, Status
from .metrics import LatencyHistogram
from .protocol import (
    CHANNELS,
    AccountEvent,
    Batch,
    ClosedPosition,
    Event,
    FillEvent,
    OrderEvent,
    PositionClosedEvent,
    PositionEvent,
    Snapshot,
)
from .state import BatchOutcome, PortfolioState

log = logging.getLogger("alphaflow_live")

DEFAULT_URL = "ws://127.0.0.1:8765/ws/portfolio"
EVENT_NAMES = ("fill", "position", "order", "account", "status")
FrameT = TypeVar("FrameT", pd.DataFrame, "pd.Series[Any]")


class AuthError(RuntimeError):
    """The server refused the token (401) or its role (403); retrying would not help."""


class PortfolioStream:
    """A live portfolio. Create it with ``alphaflow_live.connect()``."""

    def __init__(
        self,
        url: str | None = None,
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
        self.url = url or os.environ.get("ALPHAFLOW_URL") or DEFAULT_URL
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

        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._state = PortfolioState(max_fills=max_fills)
        self._equity: deque[tuple[str, float, float, float]] = deque(maxlen=max_equity_points)
        self._status: Status = "connecting"
        self._last_data_at: float | None = None  # monotonic
        self._last_update: pd.Timestamp | None = None
        self.error: Exception | None = None
        self._versions: dict[str, int] = defaultdict(int)
        self._frame_cache: dict[str, tuple[int, Any]] = {}
        self._row_caches = {"positions": frames.RowCache(frames.POSITION_COLUMNS),
                            "orders": frames.RowCache(frames.ORDER_COLUMNS)}  # fmt: skip
        self._callbacks: dict[str, list[Callable[[Any], None]]] = defaultdict(list)
        self.latency = LatencyHistogram()
        self.counters: dict[str, int] = defaultdict(int)

        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event = asyncio.Event()  # replaced by the stream loop's own
        self._stopping = threading.Event()
        # A resubscribe to heal a gap is under way (see connection._handle).
        self._healing = False
        if start:
            self.start()

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        if self._thread is not None:
            return
        from .connection import run_connection

        ready = threading.Event()

        def main() -> None:
            loop = asyncio.new_event_loop()
            stop = asyncio.Event()
            self._loop, self._stop_event = loop, stop
            ready.set()
            try:
                loop.run_until_complete(run_connection(self, self._token, stop))
            except Exception as exc:  # pragma: no cover - the loop handles its own errors
                log.exception("alphaflow-live stream stopped unexpectedly")
                self.error = exc
            finally:
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()
                # Stopped by an error (a refused token): stay "offline", which says why there is no data.
                if self.error is None:
                    self._set_status("closed")

        self._thread = threading.Thread(target=main, name="alphaflow-live-stream", daemon=True)
        self._thread.start()
        ready.wait()

    def close(self, timeout: float = 5.0) -> None:
        """Stop the stream and wait for its thread (idempotent)."""
        self._stopping.set()
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(self._stop_event.set)
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        self._set_status("closed")

    def __enter__(self) -> PortfolioStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        with self._lock:
            return (f"<PortfolioStream {self.url} status={self._status} freshness={self.freshness} "
                    f"positions={len(self._state.positions)} orders={len(self._state.orders)} "
                    f"seq={self._state.seq}>")  # fmt: skip

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    # ------------------------------------------------------------- reading

    @property
    def status(self) -> Status:
        return self._status

    @property
    def freshness(self) -> Freshness:
        return self.rules.classify(self._status, self._last_data_at, time.monotonic())

    @property
    def last_update(self) -> pd.Timestamp | None:
        return self._last_update

    @property
    def seq(self) -> int | None:
        return self._state.seq

    @property
    def epoch(self) -> str | None:
        return self._state.epoch

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
        return self._frame("equity", lambda s: frames.equity_frame(list(self._equity)))

    def _frame(self, table: str, build: Callable[[PortfolioState], FrameT]) -> FrameT:
        with self._lock:
            version = self._versions[table]
            cached = self._frame_cache.get(table)
            if cached is None or cached[0] != version:
                cached = (version, build(self._state))
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
            "status": self._status,
            "freshness": self.freshness,
            "seq": self._state.seq,
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
        if event not in EVENT_NAMES:
            raise ValueError(f"unknown event {event!r}; one of: {', '.join(EVENT_NAMES)}")
        with self._lock:
            self._callbacks[event].append(callback)

        def unsubscribe() -> None:
            with self._lock:
                if callback in self._callbacks[event]:
                    self._callbacks[event].remove(callback)

        return unsubscribe

    def wait_for(self, predicate: Callable[[PortfolioStream], Any], timeout: float = 10.0) -> Any:
        """Block until ``predicate(live)`` is truthy; returns its value."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                if self.error is not None:
                    raise self.error
                result = predicate(self)
                if result:
                    return result
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(
                        f"condition not met within {timeout}s (status {self._status}, seq {self.seq})"
                    )
                self._changed.wait(min(remaining, 0.5))

    async def until(self, predicate: Callable[[PortfolioStream], Any], timeout: float = 10.0) -> Any:  # noqa: ASYNC109
        """``wait_for`` for asyncio code: awaits without blocking the caller's loop."""
        return await asyncio.to_thread(self.wait_for, predicate, timeout)

    # ------------------------------------------- applying (the stream thread)

    def _set_status(self, status: Status) -> None:
        with self._lock:
            if status == self._status:
                return
            self._status = status
            self._changed.notify_all()
        self._emit("status", [status])

    def _touch(self, server_time: str) -> None:
        """A heartbeat: the data held is current as of ``server_time``, though nothing changed."""
        with self._lock:
            self._mark_current(server_time)
            self._changed.notify_all()

    def _mark_current(self, server_time: str) -> None:
        self._last_data_at = time.monotonic()
        self._last_update = pd.Timestamp(datetime.fromisoformat(server_time))

    def _fail(self, error: Exception) -> None:
        log.error("alphaflow-live: %s", error)
        with self._lock:
            self.error = error
            self._changed.notify_all()
        self._set_status("offline")

    def _apply_snapshot(self, snapshot: Snapshot) -> None:
        with self._lock:
            state = self._state
            before = (dict(state.positions), dict(state.orders), state.account, {f.id for f in state.fills})
            state.apply_snapshot(snapshot, merge_fills=True)
            changed = _diff(before, state)
            self._note_changes(changed, snapshot.server_time)
        self._dispatch(changed)

    def _apply_batch(self, batch: Batch) -> BatchOutcome:
        with self._lock:
            outcome = self._state.apply_batch(batch)
            if outcome is BatchOutcome.APPLIED:
                self._record_latency(batch.events)
                changed = _changes_of(batch.events)
                self._note_changes(changed, batch.server_time)
        if outcome is BatchOutcome.APPLIED:
            self.counters["batches"] += 1
            self._dispatch(changed)
        return outcome

    def _note_changes(self, changed: dict[str, list[Any]], server_time: str) -> None:
        for table, key in (("positions", "position"), ("orders", "order"), ("fills", "fill")):
            if changed[key]:
                self._versions[table] += 1
        if changed["account"]:
            self._versions["account"] += 1
            self._versions["equity"] += 1
            account = self._state.account
            if account is not None:
                self._equity.append((account.updated_at, float(account.equity), float(account.cash),
                                     float(account.equity - account.last_equity)))  # fmt: skip
        self._mark_current(server_time)
        self._changed.notify_all()

    def _record_latency(self, events: Iterable[Event]) -> None:
        now = time.time()
        parsed: dict[str, float] = {}
        for event in events:
            at = parsed.get(event.ts)
            if at is None:
                at = parsed[event.ts] = datetime.fromisoformat(event.ts).timestamp()
            self.latency.record(now - at)

    def _dispatch(self, changed: dict[str, list[Any]]) -> None:
        for name, items in changed.items():
            if items:
                self._emit(name, items)

    def _emit(self, name: str, items: Iterable[Any]) -> None:
        with self._lock:
            callbacks = list(self._callbacks.get(name, ()))
        for callback in callbacks:
            for item in items:
                try:
                    callback(item)
                except Exception:
                    log.exception("alphaflow-live: a %r callback raised; the stream goes on", name)


def _changes_of(events: Iterable[Event]) -> dict[str, list[Any]]:
    changed: dict[str, list[Any]] = {"fill": [], "position": [], "order": [], "account": []}
    for event in events:
        if isinstance(event, FillEvent):
            changed["fill"].append(event.data)
        elif isinstance(event, PositionEvent | PositionClosedEvent):
            changed["position"].append(event.data)
        elif isinstance(event, OrderEvent):
            changed["order"].append(event.data)
        elif isinstance(event, AccountEvent):
            changed["account"].append(event.data)
    return changed


def _diff(before: tuple[Any, ...], state: PortfolioState) -> dict[str, list[Any]]:
    positions, orders, account, fill_ids = before
    return {
        "fill": [f for f in state.fills if f.id not in fill_ids],
        "position": [p for s, p in state.positions.items() if positions.get(s) != p]
        + [ClosedPosition(symbol=s) for s in positions if s not in state.positions],
        "order": [o for i, o in state.orders.items() if orders.get(i) != o],
        "account": [state.account] if state.account is not None and state.account != account else [],
    }
