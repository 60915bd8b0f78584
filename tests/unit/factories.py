"""Builders of valid protocol events and hypothesis strategies for the unit tests.

Every builder returns a valid event (decimal strings, ``Z`` timestamps with
milliseconds) with ``seq`` 0, as a publisher sends it; ``stamp`` gives a list
of events contiguous seqs the way the journal does.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, get_args

import msgspec
from hypothesis import strategies as st

from alphaflow_live.protocol import (
    AccountEvent,
    Event,
    FillEvent,
    OrderEvent,
    OrderStatus,
    PositionClosedEvent,
    PositionEvent,
    encode,
)
from tests.support.events import (
    BASE_EPOCH_S,
    TS,
    D,
    account,
    fill,
    order,
    position,
    position_closed,
    tick,
    ts,
)

# The builders live in tests.support.events; the unit tests import them from here too.
__all__ = [
    "BASE_EPOCH_S",
    "ORDER_IDS",
    "ORDER_STATUSES",
    "SYMBOLS",
    "TS",
    "D",
    "account",
    "event_sequences",
    "fill",
    "order",
    "position",
    "position_closed",
    "publish_frame",
    "stamp",
    "tick",
    "ts",
    "wire",
]

SYMBOLS = ("AAPL", "MSFT", "TSLA")
ORDER_IDS = ("o-1", "o-2", "o-3")
ORDER_STATUSES: tuple[OrderStatus, ...] = get_args(OrderStatus)


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
