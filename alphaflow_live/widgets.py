"""anywidget widgets bound to a stream; the front end lives in js/src (``frontend`` joins it).

Traits hold the whole current state (``rows``), so a saved notebook's widget
state is complete. Changes are coalesced here and sent at most ``max_rate_hz``
times a second as one ``delta``: ``rows`` is updated in place (so traitlets
does not resend it) and the browser merges each delta into its own copy. A
page reload asks the kernel for the state and gets the full ``rows``. Rows
carry every field of the protocol's Structs, as the wire has them.

What ``rows`` holds and how a delta changes it:

- ``positions``, ``orders`` (by symbol, by order id): row-keyed,
  ``{"upsert": {key: row}, "remove": [key]}`` with only the rows that changed.
- ``fills`` (by fill id, the newest MAX_FILL_ROWS): row-keyed the same way; the
  oldest go out as ``remove`` when new ones come in.
- ``equity``: the day's curve, ``[epoch ms, equity, day P&L]`` per account
  update, oldest first (as ``equity_history`` holds it, the newest
  MAX_EQUITY_POINTS); a delta carries only the points appended since the last.
- ``account``: the whole (small) account, in a delta only when it changed.
- A delta may also carry ``alerts``, the alerts that fired since the last one
  (``live.on("alert")``, PortfolioWidget only): shown as toasts, not kept.

Threads: change callbacks may come from any thread and only mark rows dirty,
under the widget's own lock. Flushes and the once-a-second status sync run
on the stream's thread (``LiveReader.call_later``), one at a time; they read
the stream through ``reading()`` after releasing the widget's lock, so the
two locks are never held together.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import threading
import time
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

import anywidget
import msgspec
import traitlets

from .frontend import widget_css, widget_esm
from .live_state import LiveReader
from .protocol import TERMINAL_ORDER_STATUSES, Account, ClosedPosition, Fill, Order, Position
from .state import PortfolioState
from .throttle import Throttle

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger("alphaflow_live")

# How often heartbeats (which move last_data_ms without changing a row) reach the badge.
STATUS_SYNC_S = 1.0
# The newest fills the widget holds (its blotter shows 10, then "N more" for the rest).
MAX_FILL_ROWS = 500
# The equity points it holds: as many as a stream keeps by default (js/src/rows.js has the same).
MAX_EQUITY_POINTS = 10_000
# Alerts one delta carries at most (the browser shows 3 toasts at a time).
MAX_ALERTS_PER_DELTA = 10

# [epoch ms, equity, day P&L]
EquityPoint = list[float]


class StreamReader(LiveReader, Protocol):
    """What the widgets read of a stream: ``LiveReader`` and the equity history."""

    @property
    def equity_history(self) -> pd.DataFrame: ...


def _row(obj: msgspec.Struct) -> dict[str, Any]:
    """A struct's fields as the wire has them (decimals as strings)."""
    row: dict[str, Any] = msgspec.to_builtins(obj)
    return row


class _LiveWidget(anywidget.AnyWidget):
    _esm = widget_esm()
    _css = widget_css()

    component = traitlets.Unicode("portfolio").tag(sync=True)
    status = traitlets.Unicode("connecting").tag(sync=True)
    error = traitlets.Unicode("").tag(sync=True)
    status_reason = traitlets.Unicode("").tag(sync=True)
    last_data_ms = traitlets.Float(None, allow_none=True).tag(sync=True)
    live_s = traitlets.Float(5.0).tag(sync=True)
    delayed_s = traitlets.Float(30.0).tag(sync=True)
    max_rows = traitlets.Int(50).tag(sync=True)
    title = traitlets.Unicode("").tag(sync=True)
    # The order statuses that end an order: the orders blotter's Open / Done filters.
    done_statuses = traitlets.List(traitlets.Unicode(), sorted(TERMINAL_ORDER_STATUSES)).tag(sync=True)
    rows = traitlets.Dict().tag(sync=True)
    delta = traitlets.Dict().tag(sync=True)

    _component = "portfolio"
    _shows_alerts = False  # only views with toasts subscribe to alerts

    def __init__(self, live: StreamReader, *, max_rate_hz: float = 10.0, **kwargs: Any) -> None:
        super().__init__(component=self._component, **kwargs)
        self.live = live
        self.live_s, self.delayed_s = live.rules.live_s, live.rules.delayed_s
        self._throttle = Throttle(max_rate_hz)
        self._lock = threading.Lock()  # guards the dirty sets and the throttle
        self._dirty_positions: set[str] = set()
        self._dirty_orders: set[str] = set()
        self._dirty_account = False
        self._new_fills: list[Fill] = []
        self._new_points: list[EquityPoint] = []
        self._new_alerts: list[dict[str, Any]] = []
        self._closed = False
        with live.reading() as state:
            # Read and subscribed under the stream's lock: no change falls between the two. One
            # applied just before may still be heard of after; flush drops a fill or point held.
            self.rows = _full_rows(state, _history_points(live.equity_history))
            self._sync_status()
            self._unsubscribe = [
                live.on("position", self._on_position),
                live.on("order", self._on_order),
                live.on("account", self._on_account),
                live.on("fill", self._on_fill),
                live.on("status", self._on_status),
            ]
        if self._shows_alerts:
            self._subscribe_alerts()
        live.call_later(STATUS_SYNC_S, self._tick)

    def _subscribe_alerts(self) -> None:
        try:
            self._unsubscribe.append(self.live.on("alert", self._on_alert))
        except ValueError:  # a stream without alerts
            log.debug("alphaflow-live: this stream has no 'alert' event; the widget shows no alerts")

    def close(self) -> None:
        self._closed = True
        # Once: close() runs again when the widget is collected.
        unsubscribes, self._unsubscribe = self._unsubscribe, []
        for unsubscribe in unsubscribes:
            unsubscribe()
        super().close()

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        # Front ends without the widget (nbviewer, an HTML export that kept this
        # alternative) fall back to the static snapshot.
        from .report import snapshot_html

        bundle = super()._repr_mimebundle_(**kwargs)
        data = bundle[0] if isinstance(bundle, tuple) else bundle
        if isinstance(data, dict):
            data["text/html"] = snapshot_html(self.live)
        return bundle

    # ------------------------------------------------------------- changes

    def _on_position(self, data: Position | ClosedPosition) -> None:
        with self._lock:
            self._dirty_positions.add(data.symbol)
        self._changed()

    def _on_order(self, order: Order) -> None:
        with self._lock:
            self._dirty_orders.add(order.id)
        self._changed()

    def _on_account(self, account: Account) -> None:
        point = _point(account)
        with self._lock:
            self._dirty_account = True
            self._new_points.append(point)
        self._changed()

    def _on_fill(self, fill: Fill) -> None:
        with self._lock:
            self._new_fills.append(fill)
        self._changed()

    def _on_alert(self, alert: Any) -> None:
        """An alert fired (``live.alert``): anything with ``name``, ``message`` and ``fired_at``."""
        row = _alert_row(alert)
        with self._lock:
            self._new_alerts.append(row)
            del self._new_alerts[:-MAX_ALERTS_PER_DELTA]
        self._changed()

    def _on_status(self, status: str) -> None:
        if status == "closed":
            self.flush()  # nothing runs on a closed stream's thread: the last word goes out now
        else:
            self._changed()

    def _changed(self) -> None:
        with self._lock:
            delay = self._throttle.request(time.monotonic())
        if delay is not None and not self.live.call_later(delay, self.flush):
            self.flush()

    def flush(self) -> None:
        """Send what changed since the last flush as one delta (and status), in one message."""
        with self._lock:
            positions, orders = self._dirty_positions, self._dirty_orders
            account_dirty, fills = self._dirty_account, self._new_fills
            points, alerts = self._new_points, self._new_alerts
            self._dirty_positions, self._dirty_orders = set(), set()
            self._dirty_account, self._new_fills = False, []
            self._new_points, self._new_alerts = [], []
        with self.live.reading() as state:
            delta: dict[str, Any] = {
                "version": self.rows.get("version", 0) + 1,
                "positions": _table_delta(positions, state.positions),
                "orders": _table_delta(orders, state.orders),
            }
            if account_dirty:
                delta["account"] = None if state.account is None else _row(state.account)
        delta["fills"] = _fills_delta(self.rows["fills"], fills)
        delta["equity"] = _appended(self.rows["equity"], points)
        if alerts:
            delta["alerts"] = alerts
        _merge(self.rows, delta)
        with self.hold_sync():
            self.delta = delta
            self._sync_status()
        with self._lock:
            # Marked done only now that it is sent; a change that came meanwhile gets its own flush.
            self._throttle.flushed(time.monotonic())
            more = bool(
                self._dirty_positions
                or self._dirty_orders
                or self._dirty_account
                or self._new_fills
                or self._new_points
                or self._new_alerts
            )
        if more:
            self._changed()

    def _status_traits(self) -> tuple[str, str, str, float | None]:
        live = self.live
        updated = live.last_update
        return (
            live.status,
            "" if live.error is None else str(live.error),
            live.status_reason,
            None if updated is None else updated.timestamp() * 1000,
        )

    def _sync_status(self) -> None:
        self.status, self.error, self.status_reason, self.last_data_ms = self._status_traits()

    def _tick(self) -> None:
        """Heartbeats move last_data_ms without changing any row; keep the badge honest."""
        if self._closed:
            return
        recent = time.monotonic() - self._throttle.last_flush < STATUS_SYNC_S
        # A delta that carried the status less than a second ago keeps this within the rate.
        if not recent and self._status_traits() != (
            self.status,
            self.error,
            self.status_reason,
            self.last_data_ms,
        ):
            with self.hold_sync():
                self._sync_status()
        self.live.call_later(STATUS_SYNC_S, self._tick)


def _full_rows(state: PortfolioState, equity: Iterable[EquityPoint] = ()) -> dict[str, Any]:
    fills = list(state.fills)[-MAX_FILL_ROWS:]
    return {
        "version": 0,
        "positions": {s: _row(p) for s, p in state.positions.items()},
        "orders": {i: _row(o) for i, o in state.orders.items()},
        "fills": {f.id: _row(f) for f in fills},
        "equity": list(equity)[-MAX_EQUITY_POINTS:],
        "account": None if state.account is None else _row(state.account),
    }


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _ms(timestamp: str) -> float:
    """Epoch ms of a wire timestamp, floored exactly as equity_history's index is."""
    return float((datetime.fromisoformat(timestamp) - _EPOCH) // timedelta(milliseconds=1))


def _point(account: Account) -> EquityPoint:
    """The equity point of an account update, as the stream's equity_history records it."""
    return [_ms(account.updated_at), float(account.equity), float(account.equity - account.last_equity)]


def _history_points(history: pd.DataFrame) -> list[EquityPoint]:
    """equity_history (indexed by time; equity, day_pl) as equity points."""
    times = history.index.to_numpy(dtype="datetime64[ms]").astype("int64").tolist()
    columns = zip(times, history["equity"].tolist(), history["day_pl"].tolist(), strict=True)
    return [[float(t), float(equity), float(day_pl)] for t, equity, day_pl in columns]


def _alert_row(alert: Any) -> dict[str, Any]:
    fired = getattr(alert, "fired_at", None)
    if isinstance(fired, datetime):
        fired = fired.isoformat()
    return {
        "name": str(getattr(alert, "name", None) or ""),
        "message": str(getattr(alert, "message", None) or ""),
        "fired_at": None if fired is None else str(fired),
    }


def _table_delta(keys: set[str], table: dict[str, Any]) -> dict[str, Any]:
    upsert = {k: _row(table[k]) for k in sorted(keys) if k in table}
    return {"upsert": upsert, "remove": sorted(k for k in keys if k not in table)}


def _fills_delta(held: dict[str, Any], fills: Sequence[Fill]) -> dict[str, Any]:
    """The new fills as upserts, and the oldest held ones that make room for them as removes."""
    upsert = {f.id: _row(f) for f in fills if f.id not in held}
    remove: list[str] = []
    excess = len(held) + len(upsert) - MAX_FILL_ROWS
    for key in list(itertools.islice(itertools.chain(held, upsert), max(0, excess))):
        if key in upsert:
            del upsert[key]  # in and out within one flush: never sent
        else:
            remove.append(key)
    return {"upsert": upsert, "remove": remove}


def _appended(held: Sequence[EquityPoint], points: Sequence[EquityPoint]) -> list[EquityPoint]:
    """The points that extend the curve: none that repeats the one before it (the update the
    widget read in its history and then heard of again)."""
    new: list[EquityPoint] = []
    last = held[-1] if held else None
    for point in points:
        if point != last:
            new.append(point)
            last = point
    return new


def _merge(rows: dict[str, Any], delta: dict[str, Any]) -> None:
    """Apply a delta to rows in place (what the browser does with its copy)."""
    for table in ("positions", "orders", "fills"):
        current = rows.setdefault(table, {})
        current.update(delta[table]["upsert"])
        for key in delta[table]["remove"]:
            current.pop(key, None)
    equity = rows.setdefault("equity", [])
    equity.extend(delta["equity"])
    del equity[:-MAX_EQUITY_POINTS]
    if "account" in delta:
        rows["account"] = delta["account"]
    rows["version"] = delta["version"]


class PortfolioWidget(_LiveWidget):
    """Status, freshness, account and exposure, the day's equity chart, positions (flashing
    P&L, weights, totals), the orders and fills blotters, and toasts for fills and alerts."""

    # The static snapshot (report.snapshot_html) as of the last cell run: the notebook's saved
    # widget state keeps it, and export.WidgetSnapshots puts it in an exported page. Refreshed
    # once per cell run and when the stream closes, not with every delta.
    snapshot = traitlets.Unicode("").tag(sync=True)

    _component = "portfolio"
    _shows_alerts = True

    def __init__(self, live: StreamReader, **kwargs: Any) -> None:
        super().__init__(live, **kwargs)
        self.refresh_snapshot()
        self._shell = _ipython()
        if self._shell is not None:
            self._shell.events.register("post_run_cell", self._after_cell)

    def refresh_snapshot(self) -> None:
        from .report import snapshot_html

        self.snapshot = snapshot_html(self.live)

    def _after_cell(self, _result: Any = None) -> None:
        if not self._closed:
            self.refresh_snapshot()

    def _on_status(self, status: str) -> None:
        if status == "closed" and not self._closed:
            self.refresh_snapshot()
        super()._on_status(status)

    def close(self) -> None:
        shell, self._shell = getattr(self, "_shell", None), None
        if shell is not None:
            with contextlib.suppress(ValueError):
                shell.events.unregister("post_run_cell", self._after_cell)
        super().close()


def _ipython() -> Any:
    """The running IPython shell, if this is a kernel (or an IPython session)."""
    try:
        from IPython import get_ipython
    except ImportError:
        return None
    return get_ipython()


class ConnectionStatus(_LiveWidget):
    _component = "status"


class LiveBadge(_LiveWidget):
    _component = "badge"


class PositionsTable(_LiveWidget):
    _component = "positions"


class AccountSummary(_LiveWidget):
    _component = "account"


__all__ = ["AccountSummary", "ConnectionStatus", "LiveBadge", "PortfolioWidget", "PositionsTable"]
