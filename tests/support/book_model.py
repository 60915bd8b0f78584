"""What a user's book must show, computed from acknowledged events alone, in exact Decimal.

The rules are the engine's (server/alphaflow_server/engine.py), reduced to
what follows from the events without any pricing:

* a position's qty is the signed sum of its fills' quantities (buy +, sell −);
  a published ``position`` sets it, a ``position_closed`` (or a sum of zero)
  removes the row;
* cash is the last published ``account``'s cash (or 0) minus Σ signed qty ×
  price of the fills since; the engine reports money at 4 decimal places
  (ROUND_HALF_EVEN) and quantities exactly as they came, so the model
  quantizes cash the same way and keeps quantities as they are;
* a fill whose id was applied already changes nothing (ids are idempotency
  keys per user); the last state of each order id stands.

Tests keep the model exact by publishing quantities and prices whose products
need no more than 4 decimal places.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_HALF_EVEN, Decimal

from msgspec import UNSET

from alphaflow_live.protocol import (
    Account,
    AccountEvent,
    Event,
    Fill,
    FillEvent,
    Order,
    OrderEvent,
    Position,
    PositionClosedEvent,
    PositionEvent,
    Snapshot,
)

MONEY = Decimal("0.0001")


def money(value: Decimal) -> Decimal:
    return value.quantize(MONEY, rounding=ROUND_HALF_EVEN)


@dataclass(frozen=True)
class Channels:
    positions: list[Position]
    orders: list[Order]
    account: Account | None
    fills: list[Fill]


def channels(snapshot: Snapshot) -> Channels:
    """The four channels of a snapshot that carries them all (the REST one, or a subscribe to all)."""
    positions, orders, account, fills = snapshot.positions, snapshot.orders, snapshot.account, snapshot.fills
    assert positions is not UNSET and orders is not UNSET and account is not UNSET and fills is not UNSET, (
        f"a snapshot of some channels only: {snapshot}"
    )
    return Channels(positions, orders, account, fills)


@dataclass
class BookModel:
    cash: Decimal = Decimal(0)
    qty: dict[str, Decimal] = field(default_factory=dict)
    # Every fill applied, in the order applied, by id.
    fills: dict[str, Fill] = field(default_factory=dict)
    order_status: dict[str, str] = field(default_factory=dict)

    def duplicates_in(self, events: Iterable[Event]) -> list[str]:
        """The ids of the fills among ``events`` applied already, by an earlier publish or earlier in
        this one: what the ack must report, each once, in order."""
        seen = set(self.fills)
        duplicates: list[str] = []
        for event in events:
            if isinstance(event, FillEvent):
                if event.data.id in seen and event.data.id not in duplicates:
                    duplicates.append(event.data.id)
                seen.add(event.data.id)
        return duplicates

    def apply(self, events: Sequence[Event]) -> None:
        """One acknowledged publish, in its order."""
        for event in events:
            if isinstance(event, FillEvent):
                self.apply_fill(event.data)
            elif isinstance(event, PositionEvent):
                if event.data.qty == 0:
                    self.qty.pop(event.data.symbol, None)
                else:
                    self.qty[event.data.symbol] = event.data.qty
            elif isinstance(event, PositionClosedEvent):
                self.qty.pop(event.data.symbol, None)
            elif isinstance(event, AccountEvent):
                self.cash = event.data.cash
            elif isinstance(event, OrderEvent):
                self.order_status[event.data.id] = event.data.status

    def apply_fill(self, fill: Fill) -> None:
        if fill.id in self.fills:
            return
        self.fills[fill.id] = fill
        signed = fill.qty if fill.side == "buy" else -fill.qty
        self.cash -= signed * fill.price
        qty = self.qty.get(fill.symbol, Decimal(0)) + signed
        if qty == 0:
            self.qty.pop(fill.symbol, None)
        else:
            self.qty[fill.symbol] = qty

    def mismatches(self, snapshot: Snapshot, *, orders: bool = True) -> list[str]:
        """What ``snapshot`` shows that the model does not, one line each (empty when they agree)."""
        problems: list[str] = []
        book = channels(snapshot)
        shown = {p.symbol: p.qty for p in book.positions}
        if shown != self.qty:
            problems.append(f"positions (symbol → qty): expected {self.qty}, got {shown}")
        account = book.account
        if account is None:
            if self.cash != 0 or self.fills:
                problems.append(f"account: expected cash {money(self.cash)}, got no account")
        elif account.cash != money(self.cash):
            problems.append(f"cash: expected {money(self.cash)}, got {account.cash}")
        if orders:
            statuses = {o.id: o.status for o in book.orders}
            if statuses != self.order_status:
                problems.append(f"orders (id → status): expected {self.order_status}, got {statuses}")
        ids = [f.id for f in book.fills]
        if len(ids) != len(set(ids)):
            repeated = sorted({i for i in ids if ids.count(i) > 1})
            problems.append(f"the snapshot's fills repeat ids: {repeated}")
        unknown = [i for i in ids if i not in self.fills]
        if unknown:
            problems.append(f"the snapshot shows fills never acknowledged: {unknown}")
        if len(ids) != min(100, len(self.fills)):
            problems.append(f"the snapshot shows {len(ids)} fills, expected {min(100, len(self.fills))}")
        return problems
