"""Alpaca's JSON → protocol events (no I/O).

Everything here works on the raw JSON dicts that alpaca-py returns with
``raw_data=True``, so money stays the exact decimal strings the broker sent
(its parsed models turn them into floats). Market-data prices do arrive as
floats on the feed; they go through ``Decimal(str(price))``, which keeps the
shortest decimal that round-trips (what the feed meant).
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Literal

from alphaflow_live.protocol import (
    Account,
    AccountEvent,
    Event,
    Fill,
    FillEvent,
    Order,
    OrderEvent,
    OrderStatus,
    Position,
    PositionEvent,
    PriceTick,
    format_timestamp,
)

# Alpaca order statuses that the protocol folds into its own nine.
_STATUS: dict[str, OrderStatus] = {
    "new": "new",
    "pending_new": "new",
    "held": "new",
    "accepted": "accepted",
    "accepted_for_bidding": "accepted",
    "stopped": "accepted",
    "suspended": "accepted",
    "calculated": "partially_filled",
    "partially_filled": "partially_filled",
    "filled": "filled",
    "done_for_day": "expired",
    "canceled": "canceled",
    "expired": "expired",
    "rejected": "rejected",
    "replaced": "replaced",
    "pending_cancel": "pending_cancel",
    "pending_replace": "pending_cancel",
}
_TYPE = {
    "market": "market",
    "limit": "limit",
    "stop": "stop",
    "stop_limit": "stop_limit",
    "trailing_stop": "stop",
}
FILL_EVENTS = frozenset({"fill", "partial_fill"})


def timestamp(value: Any, *, default: str | None = None) -> str:
    """An Alpaca time (RFC 3339 string with any precision, datetime, msgpack Timestamp)
    as the protocol's: UTC, ``Z``, at least milliseconds."""
    if value is None or value == "":
        if default is None:
            raise ValueError("missing timestamp")
        return default
    if hasattr(value, "to_datetime"):  # msgpack.Timestamp from the data stream
        value = value.to_datetime()
    if isinstance(value, datetime):
        moment = value if value.tzinfo else value.replace(tzinfo=UTC)
        return format_timestamp(moment.timestamp())
    text = str(value).strip()
    date_part, _, rest = text.partition("T")
    if not rest:
        raise ValueError(f"not a timestamp: {text!r}")
    # Keep the broker's precision (up to nanoseconds); normalise the zone to Z.
    for suffix in ("Z", "+00:00", "-00:00"):
        if rest.endswith(suffix):
            rest = rest[: -len(suffix)]
            break
    else:
        return format_timestamp(datetime.fromisoformat(text).timestamp())
    clock, _, fraction = rest.partition(".")
    fraction = (fraction + "000")[: max(3, min(9, len(fraction)))]
    return f"{date_part}T{clock}.{fraction}Z"


def _decimal(raw: dict[str, Any], key: str, default: str | None = "0") -> Decimal:
    value = raw.get(key)
    if value is None or value == "":
        if default is None:
            raise ValueError(f"Alpaca sent no {key!r}")
        value = default
    return Decimal(str(value))


def _optional_decimal(raw: dict[str, Any], key: str) -> Decimal | None:
    value = raw.get(key)
    return None if value in (None, "") else Decimal(str(value))


def account_event(raw: dict[str, Any], *, realized_pl_today: Decimal, now: str) -> AccountEvent:
    """The broker's account. Alpaca reports no realized P&L for the day; the engine's figure is kept."""
    equity = _decimal(raw, "equity")
    return AccountEvent(
        ts=now,
        data=Account(
            equity=equity,
            last_equity=_decimal(raw, "last_equity", str(equity)),
            cash=_decimal(raw, "cash"),
            buying_power=_decimal(raw, "buying_power"),
            portfolio_value=_decimal(raw, "portfolio_value", str(equity)),
            long_market_value=_decimal(raw, "long_market_value"),
            short_market_value=_decimal(raw, "short_market_value"),
            realized_pl_today=realized_pl_today,
            currency=str(raw.get("currency") or "USD"),
            updated_at=now,
        ),
    )


def position_event(raw: dict[str, Any], *, now: str) -> PositionEvent:
    qty = _decimal(raw, "qty", None)
    side = str(raw.get("side") or ("short" if qty < 0 else "long"))
    if side == "short" and qty > 0:
        qty = -qty  # the protocol's qty is signed, as Alpaca's positions API reports it
    return PositionEvent(
        ts=now,
        data=Position(
            symbol=str(raw["symbol"]),
            qty=qty,
            side="short" if side == "short" else "long",
            avg_entry_price=_decimal(raw, "avg_entry_price", None),
            current_price=_decimal(raw, "current_price", str(raw.get("avg_entry_price"))),
            market_value=_decimal(raw, "market_value"),
            cost_basis=_decimal(raw, "cost_basis"),
            unrealized_pl=_decimal(raw, "unrealized_pl"),
            unrealized_plpc=_decimal(raw, "unrealized_plpc"),
            unrealized_intraday_pl=_decimal(raw, "unrealized_intraday_pl"),
            change_today=_decimal(raw, "change_today"),
            asset_class=str(raw.get("asset_class") or "us_equity"),
            updated_at=now,
        ),
    )


def order(raw: dict[str, Any], *, now: str) -> Order:
    status = _STATUS.get(str(raw.get("status")), "accepted")
    kind = _TYPE.get(str(raw.get("type") or raw.get("order_type")), "market")
    filled_qty = _decimal(raw, "filled_qty")
    submitted = timestamp(raw.get("submitted_at") or raw.get("created_at"), default=now)
    return Order(
        id=str(raw["id"]),
        client_order_id=str(raw.get("client_order_id") or "")[:128],
        symbol=str(raw["symbol"]),
        side="sell" if raw.get("side") == "sell" else "buy",
        type=kind,  # type: ignore[arg-type]
        time_in_force=str(raw.get("time_in_force") or "day"),
        # A notional order has no qty until it fills; show what filled so far.
        qty=_optional_decimal(raw, "qty") or filled_qty,
        filled_qty=filled_qty,
        filled_avg_price=_optional_decimal(raw, "filled_avg_price"),
        limit_price=_optional_decimal(raw, "limit_price"),
        stop_price=_optional_decimal(raw, "stop_price"),
        status=status,
        submitted_at=submitted,
        updated_at=timestamp(raw.get("updated_at"), default=submitted),
        filled_at=timestamp(raw["filled_at"]) if raw.get("filled_at") else None,
    )


def order_event(raw: dict[str, Any], *, now: str) -> OrderEvent:
    data = order(raw, now=now)
    return OrderEvent(ts=data.updated_at, data=data)


def trade_update_events(raw: dict[str, Any], *, now: str) -> tuple[list[Event], str | None]:
    """A trade update: the order's new state and, for fills, the execution.

    Returns the events and the execution id (None when it is not a fill), so
    the caller can drop a redelivered execution.
    """
    data = raw.get("data", raw)
    at = timestamp(data.get("timestamp"), default=now)
    events: list[Event] = [OrderEvent(ts=at, data=order(data["order"], now=at))]
    if data.get("event") not in FILL_EVENTS:
        return events, None
    execution_id = str(data.get("execution_id") or f"{data['order']['id']}@{at}")
    side: Literal["buy", "sell"] = "sell" if data["order"].get("side") == "sell" else "buy"
    events.insert(
        0,
        FillEvent(
            ts=at,
            data=Fill(
                id=execution_id,
                order_id=str(data["order"]["id"]),
                symbol=str(data["order"]["symbol"]),
                side=side,
                qty=_decimal(data, "qty", None),
                price=_decimal(data, "price", None),
                position_qty=_decimal(data, "position_qty"),
                timestamp=at,
            ),
        ),
    )
    return events, execution_id


def price_tick(raw: dict[str, Any], *, now: str) -> PriceTick:
    """A market-data trade ({"T": "t", "S": symbol, "p": price, "t": time})."""
    return PriceTick(
        symbol=str(raw["S"]), price=Decimal(str(raw["p"])), ts=timestamp(raw.get("t"), default=now)
    )
