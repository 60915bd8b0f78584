"""anywidget widgets bound to a stream; the front end lives in js/ (shipped in static/).

Traits hold the whole current state (``rows``), so a saved notebook's widget
state is complete. Changes are coalesced here and sent at most ``max_rate_hz``
times a second as one row-keyed ``delta``: ``rows`` is updated in place (so
traitlets does not resend it) and the browser merges each delta into its own
copy. A page reload asks the kernel for the state and gets the full ``rows``.
Rows carry every field of the protocol's Structs, as the wire has them.

Threads: change callbacks may come from any thread and only mark rows dirty,
under the widget's own lock. Flushes and the once-a-second status sync run
on the stream's thread (``LiveReader.call_later``), one at a time; they read
the stream through ``reading()`` after releasing the widget's lock, so the
two locks are never held together.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import anywidget
import msgspec
import traitlets

from .live_state import LiveReader
from .protocol import Account, ClosedPosition, Fill, Order, Position
from .state import PortfolioState
from .throttle import Throttle

STATIC = Path(__file__).parent / "static"
# How often heartbeats (which move last_data_ms without changing a row) reach the badge.
STATUS_SYNC_S = 1.0


def _asset(name: str) -> Path:
    """The front end as shipped (static/, made by `make install` or the wheel build),
    else straight from the source checkout's js/src/."""
    shipped = STATIC / name
    return shipped if shipped.exists() else Path(__file__).parent.parent / "js" / "src" / name


def _row(obj: msgspec.Struct) -> dict[str, Any]:
    """A struct's fields as the wire has them (decimals as strings)."""
    row: dict[str, Any] = msgspec.to_builtins(obj)
    return row


class _LiveWidget(anywidget.AnyWidget):
    _esm = _asset("widget.js")
    _css = _asset("widget.css")

    component = traitlets.Unicode("portfolio").tag(sync=True)
    status = traitlets.Unicode("connecting").tag(sync=True)
    error = traitlets.Unicode("").tag(sync=True)
    status_reason = traitlets.Unicode("").tag(sync=True)
    last_data_ms = traitlets.Float(None, allow_none=True).tag(sync=True)
    live_s = traitlets.Float(5.0).tag(sync=True)
    delayed_s = traitlets.Float(30.0).tag(sync=True)
    max_rows = traitlets.Int(50).tag(sync=True)
    title = traitlets.Unicode("").tag(sync=True)
    rows = traitlets.Dict().tag(sync=True)
    delta = traitlets.Dict().tag(sync=True)

    _component = "portfolio"

    def __init__(self, live: LiveReader, *, max_rate_hz: float = 10.0, **kwargs: Any) -> None:
        super().__init__(component=self._component, **kwargs)
        self.live = live
        self.live_s, self.delayed_s = live.rules.live_s, live.rules.delayed_s
        self._throttle = Throttle(max_rate_hz)
        self._lock = threading.Lock()  # guards the dirty sets and the throttle
        self._dirty_positions: set[str] = set()
        self._dirty_orders: set[str] = set()
        self._dirty_account = False
        self._new_fills: list[Fill] = []
        self._closed = False
        with live.reading() as state:
            self.rows = _full_rows(state)
            self._sync_status()
            self._unsubscribe = [
                live.on("position", self._on_position),
                live.on("order", self._on_order),
                live.on("account", self._on_account),
                live.on("fill", self._on_fill),
                live.on("status", self._on_status),
            ]
        live.call_later(STATUS_SYNC_S, self._tick)

    def close(self) -> None:
        self._closed = True
        for unsubscribe in self._unsubscribe:
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

    def _on_account(self, _: Account) -> None:
        with self._lock:
            self._dirty_account = True
        self._changed()

    def _on_fill(self, fill: Fill) -> None:
        with self._lock:
            self._new_fills.append(fill)
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
            self._dirty_positions, self._dirty_orders = set(), set()
            self._dirty_account, self._new_fills = False, []
        with self.live.reading() as state:
            delta: dict[str, Any] = {
                "version": self.rows.get("version", 0) + 1,
                "positions": _table_delta(positions, state.positions),
                "orders": _table_delta(orders, state.orders),
                "fills": [_row(f) for f in fills],
            }
            if account_dirty:
                delta["account"] = None if state.account is None else _row(state.account)
        _merge(self.rows, delta)
        with self.hold_sync():
            self.delta = delta
            self._sync_status()
        with self._lock:
            # Marked done only now that it is sent; a change that came meanwhile gets its own flush.
            self._throttle.flushed(time.monotonic())
            more = bool(self._dirty_positions or self._dirty_orders or self._dirty_account or self._new_fills)
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


def _full_rows(state: PortfolioState) -> dict[str, Any]:
    return {
        "version": 0,
        "positions": {s: _row(p) for s, p in state.positions.items()},
        "orders": {i: _row(o) for i, o in state.orders.items()},
        "account": None if state.account is None else _row(state.account),
    }


def _table_delta(keys: set[str], table: dict[str, Any]) -> dict[str, Any]:
    upsert = {k: _row(table[k]) for k in sorted(keys) if k in table}
    return {"upsert": upsert, "remove": sorted(k for k in keys if k not in table)}


def _merge(rows: dict[str, Any], delta: dict[str, Any]) -> None:
    """Apply a delta to rows in place (what the browser does with its copy)."""
    for table in ("positions", "orders"):
        current = rows.setdefault(table, {})
        current.update(delta[table]["upsert"])
        for key in delta[table]["remove"]:
            current.pop(key, None)
    if "account" in delta:
        rows["account"] = delta["account"]
    rows["version"] = delta["version"]


class PortfolioWidget(_LiveWidget):
    """Status, freshness, account, positions (flashing P&L), orders and fill toasts."""

    _component = "portfolio"


class ConnectionStatus(_LiveWidget):
    _component = "status"


class LiveBadge(_LiveWidget):
    _component = "badge"


class PositionsTable(_LiveWidget):
    _component = "positions"


class AccountSummary(_LiveWidget):
    _component = "account"


__all__ = ["AccountSummary", "ConnectionStatus", "LiveBadge", "PortfolioWidget", "PositionsTable"]
