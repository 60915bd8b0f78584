"""LiveState: the portfolio a stream holds, safe to read from any thread while it is fed (no I/O).

The connection (on the stream's thread) feeds it snapshots, batches and
heartbeats through the ``StreamSink`` methods; notebook code, widgets and the
report read it from other threads. One lock guards everything; readers take it
through ``reading()``. Callbacks registered with ``on`` run on the feeding
thread, outside the lock, after the change is visible to readers; one that
raises is logged and the stream goes on.

``LiveReader`` is what the notebook layer (widgets, the report) needs of a
stream; ``PortfolioStream`` provides it.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from typing import Any, Final, Protocol

from .freshness import FreshnessRules, Status
from .metrics import LatencyHistogram
from .protocol import (
    Account,
    AccountEvent,
    Batch,
    ClosedPosition,
    Event,
    FillEvent,
    Order,
    OrderEvent,
    Position,
    PositionClosedEvent,
    PositionEvent,
    ResumePoint,
    Snapshot,
)
from .state import BatchOutcome, PortfolioState

log = logging.getLogger("alphaflow_live")

EVENT_NAMES: Final = ("fill", "position", "order", "account", "status")
# What each table's version counts; frames are rebuilt only when theirs moved.
TABLES: Final = ("positions", "orders", "account", "fills", "equity")

# (time, equity, cash, day P&L) at each account update
EquityPoint = tuple[str, float, float, float]
Callback = Callable[[Any], None]


class LiveState:
    def __init__(
        self,
        *,
        max_fills: int = 10_000,
        max_equity_points: int = 10_000,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._monotonic = monotonic
        self._wall = wall
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._state = PortfolioState(max_fills=max_fills)
        self._equity: deque[EquityPoint] = deque(maxlen=max_equity_points)
        self._versions: dict[str, int] = dict.fromkeys(TABLES, 0)
        self._callbacks: dict[str, list[Callback]] = defaultdict(list)
        self.status: Status = "connecting"
        # Why the status is what it is, when that is worth saying ("" while live).
        self.status_reason = ""
        # The server URL the stream is trying or streaming from (None before the first attempt).
        self.url: str | None = None
        self.error: Exception | None = None
        self.last_data_at: float | None = None  # monotonic
        self.last_update: datetime | None = None
        self.latency = LatencyHistogram()
        self.counters: dict[str, int] = defaultdict(int)

    # ------------------------------------------------------------- reading

    @contextlib.contextmanager
    def reading(self) -> Iterator[PortfolioState]:
        """The portfolio held, consistent for the length of the block (do not change it)."""
        with self._lock:
            yield self._state

    def version(self, table: str) -> int:
        """Moves whenever ``table`` (one of TABLES) changes."""
        return self._versions[table]

    def equity_points(self) -> list[EquityPoint]:
        with self._lock:
            return list(self._equity)

    def wait(self, predicate: Callable[[], Any], deadline: float) -> Any:
        """Block until ``predicate()`` is truthy (returned) or ``deadline`` (monotonic) passes (None).

        The predicate runs under the lock, after every change.
        """
        with self._changed:
            while True:
                result = predicate()
                remaining = deadline - self._monotonic()
                if result or remaining <= 0:
                    return result or None
                self._changed.wait(min(remaining, 0.5))

    # ------------------------------------------------------------- events

    def on(self, event: str, callback: Callback) -> Callable[[], None]:
        if event not in EVENT_NAMES:
            raise ValueError(f"unknown event {event!r}; one of: {', '.join(EVENT_NAMES)}")
        with self._lock:
            self._callbacks[event].append(callback)

        def unsubscribe() -> None:
            with self._lock:
                if callback in self._callbacks[event]:
                    self._callbacks[event].remove(callback)

        return unsubscribe

    def _emit(self, name: str, items: Iterable[Any]) -> None:
        with self._lock:
            callbacks = list(self._callbacks.get(name, ()))
        for callback in callbacks:
            for item in items:
                try:
                    callback(item)
                except Exception:
                    log.exception("alphaflow-live: a %r callback raised; the stream goes on", name)

    def _dispatch(self, changed: dict[str, list[Any]]) -> None:
        for name, items in changed.items():
            if items:
                self._emit(name, items)

    # ------------------------------------------------ the sink (the stream's thread)

    def held(self) -> ResumePoint | None:
        with self._lock:
            state = self._state
            return None if state.epoch is None or state.seq is None else ResumePoint(state.epoch, state.seq)

    def apply(self, message: Snapshot | Batch) -> BatchOutcome | None:
        if isinstance(message, Snapshot):
            self._apply_snapshot(message)
            return None
        return self._apply_batch(message)

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
            outcome, events = self._state.apply_batch_events(batch)
            if outcome is not BatchOutcome.APPLIED:
                return outcome
            self._record_latency(events)
            changed = _changes_of(events)
            self._note_changes(changed, batch.server_time)
            self.counters["batches"] += 1
        self._dispatch(changed)
        return outcome

    def touch(self, server_time: str) -> None:
        """A heartbeat: the data held is current as of ``server_time``, though nothing changed."""
        with self._lock:
            self._mark_current(server_time)
            self._changed.notify_all()

    def set_status(self, status: Status, reason: str = "") -> None:
        with self._lock:
            if (status, reason) == (self.status, self.status_reason):
                return
            self.status, self.status_reason = status, reason
            self._changed.notify_all()
        self._emit("status", [status])

    def fail(self, error: Exception) -> None:
        log.error("alphaflow-live: %s", error)
        with self._lock:
            self.error = error
            self._changed.notify_all()
        self.set_status("offline", str(error))

    def count(self, name: str, amount: int = 1) -> None:
        with self._lock:
            self.counters[name] += amount

    def endpoint(self, url: str) -> None:
        self.url = url

    # ------------------------------------------------------------- internals

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

    def _mark_current(self, server_time: str) -> None:
        self.last_data_at = self._monotonic()
        self.last_update = datetime.fromisoformat(server_time)

    def _record_latency(self, events: Iterable[Event]) -> None:
        # A re-mark stamps all of a user's events with one ``ts``: parse and record each
        # distinct one once, counted as many times as it occurs (a 1,000-event batch has a few).
        now = self._wall()
        counts = Counter(event.ts for event in events)
        for ts, times in counts.items():
            self.latency.record(now - datetime.fromisoformat(ts).timestamp(), times)


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


def _diff(
    before: tuple[dict[str, Position], dict[str, Order], Account | None, set[str]], state: PortfolioState
) -> dict[str, list[Any]]:
    positions, orders, account, fill_ids = before
    return {
        "fill": [f for f in state.fills if f.id not in fill_ids],
        "position": [p for s, p in state.positions.items() if positions.get(s) != p]
        + [ClosedPosition(symbol=s) for s in positions if s not in state.positions],
        "order": [o for i, o in state.orders.items() if orders.get(i) != o],
        "account": [state.account] if state.account is not None and state.account != account else [],
    }


class LiveReader(Protocol):
    """What widgets and the report read of a stream (``PortfolioStream`` provides it)."""

    @property
    def rules(self) -> FreshnessRules: ...
    @property
    def status(self) -> Status: ...
    @property
    def status_reason(self) -> str: ...
    @property
    def error(self) -> Exception | None: ...
    @property
    def last_update(self) -> Any: ...

    def reading(self) -> contextlib.AbstractContextManager[PortfolioState]: ...
    def on(self, event: str, callback: Callback) -> Callable[[], None]: ...
    def call_later(self, delay_s: float, callback: Callable[[], None]) -> bool: ...
