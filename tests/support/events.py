"""Builders of valid protocol events, shared by unit and integration tests."""

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
    Position,
    PositionClosedEvent,
    PositionEvent,
    PriceTick,
)

TS = "2026-01-04T14:03:11.120Z"
_ids = itertools.count(1)


def D(value: str | int) -> Decimal:
    return Decimal(str(value))


def position(symbol: str = "AAPL", qty: str = "10", price: str = "187.20", ts: str = TS) -> PositionEvent:
    q, p = D(qty), D(price)
    return PositionEvent(
        ts=ts,
        data=Position(
            symbol=symbol, qty=q, side="long" if q >= 0 else "short", avg_entry_price=p, current_price=p,
            market_value=q * p, cost_basis=q * p, unrealized_pl=D(0), unrealized_plpc=D(0),
            unrealized_intraday_pl=D(0), change_today=D(0), updated_at=ts,
        ),
    )  # fmt: skip


def position_closed(symbol: str = "AAPL", ts: str = TS) -> PositionClosedEvent:
    return PositionClosedEvent(ts=ts, data=ClosedPosition(symbol=symbol))


def order(
    order_id: str = "o-1", status: str = "new", symbol: str = "AAPL", filled: str = "0", ts: str = TS
) -> OrderEvent:
    return OrderEvent(
        ts=ts,
        data=Order(
            id=order_id, client_order_id=f"c-{order_id}", symbol=symbol, side="buy", type="limit",
            time_in_force="day", qty=D(10), filled_qty=D(filled), limit_price=D("187.00"),
            status=status,  # type: ignore[arg-type]
            submitted_at=ts, updated_at=ts,
        ),
    )  # fmt: skip


def account(cash: str = "100000.00", ts: str = TS) -> AccountEvent:
    c = D(cash)
    return AccountEvent(
        ts=ts,
        data=Account(
            equity=c, last_equity=c, cash=c, buying_power=c * 2, portfolio_value=c, long_market_value=D(0),
            short_market_value=D(0), realized_pl_today=D(0), updated_at=ts,
        ),
    )  # fmt: skip


def fill(
    fill_id: str | None = None, symbol: str = "AAPL", qty: str = "10", price: str = "187.20", ts: str = TS
) -> FillEvent:
    fill_id = fill_id or f"f-{next(_ids)}"
    return FillEvent(
        ts=ts,
        data=Fill(
            id=fill_id, order_id="o-1", symbol=symbol, side="buy", qty=D(qty), price=D(price),
            position_qty=D(qty), timestamp=ts,
        ),
    )  # fmt: skip


def tick(symbol: str = "AAPL", price: str = "190.00", ts: str = TS) -> PriceTick:
    return PriceTick(symbol=symbol, price=D(price), ts=ts)
