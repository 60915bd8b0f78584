"""Builders of valid protocol events, shared by the unit, integration and e2e tests.

Every builder returns a valid event (decimal strings, ``Z`` timestamps with
milliseconds) with ``seq`` 0, as a publisher sends it.
"""

from __future__ import annotations

import itertools
from decimal import Decimal

from alphaflow_live.protocol import (
    Account,
    AccountEvent,
    ClosedPosition,
    Fill,
    FillEvent,
    Order,
    OrderEvent,
    OrderStatus,
    Position,
    PositionClosedEvent,
    PositionEvent,
    PriceTick,
    format_timestamp,
)

TS = "2026-01-04T14:03:11.120Z"
# 2026-01-04T14:03:11.120Z as epoch seconds, the base of ``ts()``.
BASE_EPOCH_S = 1_767_535_391.120


_fill_ids = itertools.count(1)


def D(value: str | int) -> Decimal:
    return Decimal(str(value))


def ts(offset_ms: int = 0) -> str:
    """A protocol timestamp ``offset_ms`` after TS."""
    return format_timestamp(BASE_EPOCH_S + offset_ms / 1000)


def position(symbol: str = "AAPL", qty: str = "10", price: str = "187.20", at: str = TS) -> PositionEvent:
    q, p = D(qty), D(price)
    return PositionEvent(
        ts=at,
        data=Position(
            symbol=symbol,
            qty=q,
            side="long" if q >= 0 else "short",
            avg_entry_price=p,
            current_price=p,
            market_value=q * p,
            cost_basis=q * p,
            unrealized_pl=D("0.00"),
            unrealized_plpc=D("0.0000"),
            unrealized_intraday_pl=D("0.00"),
            change_today=D("0.0000"),
            updated_at=at,
        ),
    )


def position_closed(symbol: str = "AAPL", at: str = TS) -> PositionClosedEvent:
    return PositionClosedEvent(ts=at, data=ClosedPosition(symbol=symbol))


def order(
    order_id: str = "o-1",
    status: OrderStatus = "new",
    symbol: str = "AAPL",
    filled_qty: str = "0",
    at: str = TS,
) -> OrderEvent:
    return OrderEvent(
        ts=at,
        data=Order(
            id=order_id,
            client_order_id=f"c-{order_id}",
            symbol=symbol,
            side="buy",
            type="limit",
            time_in_force="day",
            qty=D("10"),
            filled_qty=D(filled_qty),
            limit_price=D("187.00"),
            status=status,
            submitted_at=TS,
            updated_at=at,
            filled_at=at if status == "filled" else None,
        ),
    )


def account(cash: str = "100000.00", equity: str | None = None, at: str = TS) -> AccountEvent:
    c = D(cash)
    e = D(equity) if equity is not None else c
    return AccountEvent(
        ts=at,
        data=Account(
            equity=e,
            last_equity=e,
            cash=c,
            buying_power=c * 2,
            portfolio_value=e,
            long_market_value=e - c,
            short_market_value=D("0.00"),
            realized_pl_today=D("0.00"),
            updated_at=at,
        ),
    )


def fill(
    fill_id: str | None = None,
    order_id: str = "o-1",
    symbol: str = "AAPL",
    side: str = "buy",
    qty: str = "10",
    price: str = "187.20",
    at: str = TS,
) -> FillEvent:
    return FillEvent(
        ts=at,
        data=Fill(
            id=fill_id or f"f-{next(_fill_ids)}",
            order_id=order_id,
            symbol=symbol,
            side="buy" if side == "buy" else "sell",
            qty=D(qty),
            price=D(price),
            position_qty=D(qty),
            timestamp=at,
        ),
    )


def tick(symbol: str = "AAPL", price: str = "190.00", at: str = TS) -> PriceTick:
    return PriceTick(symbol=symbol, price=D(price), ts=at)
