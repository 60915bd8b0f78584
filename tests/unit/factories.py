"""Builders of valid protocol events and hypothesis strategies for the unit tests.

Every builder returns a valid event (decimal strings, ``Z`` timestamps with
milliseconds) with ``seq`` 0, as a publisher sends it; ``stamp`` gives a list
of events contiguous seqs the way the journal does.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from decimal import Decimal
from typing import Any

import msgspec
from hypothesis import strategies as st

from alphaflow_live.protocol import (
    Account,
    AccountEvent,
    ClosedPosition,
    Event,
    Fill,
    FillEvent,
    Order,
    OrderEvent,
    OrderStatus,
    Position,
    PositionClosedEvent,
    PositionEvent,
    PriceTick,
    encode,
    format_timestamp,
)

TS = "2026-01-04T14:03:11.120Z"
# 2026-01-04T14:03:11.120Z as epoch seconds, the base of ``ts()``.
BASE_EPOCH_S = 1_767_535_391.120

SYMBOLS = ("AAPL", "MSFT", "TSLA")
ORDER_IDS = ("o-1", "o-2", "o-3")
ORDER_STATUSES: tuple[OrderStatus, ...] = (
    "new",
    "accepted",
    "partially_filled",
    "filled",
    "canceled",
    "expired",
    "rejected",
    "replaced",
    "pending_cancel",
)

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


def stamp(events: Iterable[Event], start: int = 0) -> list[Event]:
    """Copies of ``events`` with seqs start+1, start+2, … (as the journal stamps them)."""
    return [msgspec.structs.replace(event, seq=start + n) for n, event in enumerate(events, 1)]


def wire(obj: Any) -> Any:
    """The JSON value ``obj`` travels as (dicts, lists and strings), for building frames."""
    return msgspec.json.decode(encode(obj))


def publish_frame(events: Sequence[Event], *, msg_id: int | str = 9, user_id: str = "alice") -> bytes:
    """An ingest ``publish`` frame carrying ``events`` as a publisher sends them (no seq)."""
    items = []
    for event in events:
        item = wire(event)
        del item["seq"]
        items.append(item)
    return msgspec.json.encode({"type": "publish", "id": msg_id, "user_id": user_id, "events": items})


# ------------------------------------------------------------------ strategies
#
# Drawing from a pool of prebuilt events keeps the property tests fast; the
# pool covers every event type, every order status, long and short positions,
# and a few fill ids that repeat (re-sent fills), over SYMBOLS and ORDER_IDS.


def _pool() -> tuple[Event, ...]:
    pool: list[Event] = []
    for n, symbol in enumerate(SYMBOLS):
        for qty, price in (("10", "187.20"), ("-5", "42.05"), ("3", "0.01"), ("120", "1043.99")):
            pool.append(position(symbol, qty, price, ts(n * 1000 + len(pool))))
        pool.append(position_closed(symbol, ts(n * 1000 + 7)))
    for n, order_id in enumerate(ORDER_IDS):
        for m, status in enumerate(ORDER_STATUSES):
            filled_qty = "10" if status == "filled" else str(m)
            pool.append(order(order_id, status, SYMBOLS[n], filled_qty, ts(n * 100 + m)))
    for cash, equity in (("100000.00", "100000.00"), ("98129.50", "100001.10"), ("0.00", "5.25")):
        pool.append(account(cash, equity, ts(len(pool))))
    for n in range(1, 13):
        side = "buy" if n % 2 else "sell"
        pool.append(
            fill(f"f-{n}", ORDER_IDS[n % 3], SYMBOLS[n % 3], side, str(n), f"{100 + n}.{n:02d}", ts(n))
        )
    # A re-sent fill whose payload differs from the first copy: the first must win.
    pool.append(fill("f-1", ORDER_IDS[0], SYMBOLS[0], "buy", "99", "1.00", ts(99)))
    return tuple(pool)


EVENT_POOL = _pool()

events = st.one_of(
    *(
        st.sampled_from([e for e in EVENT_POOL if type(e) is kind])
        for kind in (PositionEvent, PositionClosedEvent, OrderEvent, AccountEvent, FillEvent)
    )
)
"""One valid event (seq 0), each event type equally likely."""


def event_sequences(min_size: int = 0, max_size: int = 40) -> st.SearchStrategy[list[Event]]:
    """Lists of events stamped with contiguous seqs 1, 2, …"""
    return st.lists(events, min_size=min_size, max_size=max_size).map(stamp)


channel_sets = st.sets(st.sampled_from(("positions", "orders", "account", "trades")))
"""Any subset of the channels, the empty one included."""
