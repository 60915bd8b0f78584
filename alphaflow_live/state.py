"""PortfolioState: one user's portfolio as the stream describes it (no I/O).

The server keeps one per user to answer snapshots; the kernel-side client
keeps one per connection and feeds it snapshots and batches. Applying a batch
checks the epoch and the contiguity of sequence numbers, so a client either
holds every state change or knows it must resubscribe with ``resume``. Field
deltas (``deltas``) are applied to the value held: a delta with nothing to
apply to stops the batch there, the seq stays where it was, and the client
resubscribes with ``resume``.
"""

from __future__ import annotations

import enum
import itertools
from collections import OrderedDict, deque
from collections.abc import Iterable

from msgspec import UNSET

from .deltas import apply_delta
from .protocol import (
    CHANNELS,
    TERMINAL_ORDER_STATUSES,
    Account,
    AccountEvent,
    Batch,
    DeltaEvent,
    Event,
    Fill,
    FillEvent,
    Order,
    OrderDeltaEvent,
    OrderEvent,
    Position,
    PositionClosedEvent,
    PositionDeltaEvent,
    PositionEvent,
    Snapshot,
)

MAX_SNAPSHOT_FILLS = 100


class BatchOutcome(enum.Enum):
    APPLIED = "applied"
    # Already applied (a batch that ends at or before our seq): nothing changed.
    DUPLICATE = "duplicate"
    # A batch that does not start where we are: resubscribe with resume.
    GAP = "gap"
    # A batch of another epoch: our sequence numbers mean nothing there.
    EPOCH_CHANGED = "epoch_changed"
    # No snapshot yet, so there is nothing to apply a batch to.
    NO_BASE = "no_base"
    # A field delta for a position, order or account not held: resubscribe (with resume: the
    # server then sends every key in full before any delta).
    MISSING_BASE = "missing_base"


def batch_fit(epoch: str | None, seq: int | None, batch: Batch) -> BatchOutcome:
    """What applying ``batch`` to a state as of (``epoch``, ``seq``) would do (APPLIED: it fits)."""
    if seq is None:
        return BatchOutcome.NO_BASE
    if batch.epoch != epoch:
        return BatchOutcome.EPOCH_CHANGED
    if batch.from_seq > seq:
        return BatchOutcome.GAP
    if batch.to_seq <= seq and batch.from_seq < seq:
        return BatchOutcome.DUPLICATE
    return BatchOutcome.APPLIED


class PortfolioState:
    """Positions, orders, account and recent fills, with the epoch and seq they are as of."""

    def __init__(self, *, max_fills: int = 1000, max_closed_orders: int = 500) -> None:
        self.epoch: str | None = None
        self.seq: int | None = None
        self.positions: dict[str, Position] = {}
        self.orders: dict[str, Order] = {}
        self.account: Account | None = None
        self.fills: deque[Fill] = deque(maxlen=max_fills)
        self._fill_ids: set[str] = set()
        # Terminal orders in the order they ended; the oldest go past the cap
        # so that a long session's blotter stays bounded.
        self._closed_orders: OrderedDict[str, None] = OrderedDict()
        self._max_closed_orders = max_closed_orders

    # ----------------------------------------------------------------- applying

    def apply_event(self, event: Event) -> None:
        """Apply one event's effect, ignoring its seq (callers check contiguity)."""
        if isinstance(event, PositionEvent):
            self.positions[event.data.symbol] = event.data
        elif isinstance(event, PositionClosedEvent):
            self.positions.pop(event.data.symbol, None)
        elif isinstance(event, OrderEvent):
            self._upsert_order(event.data)
        elif isinstance(event, AccountEvent):
            self.account = event.data
        elif isinstance(event, FillEvent):
            self._add_fill(event.data)

    def apply_events(self, events: Iterable[Event]) -> None:  # full ones: see ``apply_batch_events``
        for event in events:
            self.apply_event(event)

    def apply_snapshot(self, snapshot: Snapshot, *, merge_fills: bool = False) -> None:
        """Replace the state of every channel the snapshot carries.

        With ``merge_fills`` the fills already held are kept and the snapshot's
        (its most recent 100) are added where new: a client's history of
        executions survives a resync.
        """
        self.epoch = snapshot.epoch
        self.seq = snapshot.seq
        if snapshot.positions is not UNSET:
            self.positions = {p.symbol: p for p in snapshot.positions}
        if snapshot.orders is not UNSET:
            self.orders = {}
            self._closed_orders.clear()
            for order in snapshot.orders:
                self._upsert_order(order)
        if snapshot.account is not UNSET:
            self.account = snapshot.account
        if snapshot.fills is not UNSET:
            if not merge_fills:
                self.fills.clear()
                self._fill_ids.clear()
            for fill in snapshot.fills:
                self._add_fill(fill)

    def apply_batch(self, batch: Batch) -> BatchOutcome:
        return self.apply_batch_events(batch)[0]

    def apply_batch_events(self, batch: Batch) -> tuple[BatchOutcome, list[Event]]:
        """Apply ``batch`` if it fits; what it did, and the events it applied, deltas made whole.

        A delta with nothing to apply to (a server bug) stops the batch there and leaves the
        seq where it was: what was applied of it are upserts and fills by id, which the
        recovery from that seq applies again to the same effect.
        """
        outcome = batch_fit(self.epoch, self.seq, batch)
        if outcome is not BatchOutcome.APPLIED or self.seq is None:
            return outcome, []
        held = self.seq
        # Overlapping what we hold (a replay that raced a batch in flight): the events past our
        # seq are exactly what we miss, coalesced or not.
        events = batch.events if batch.from_seq >= held else [e for e in batch.events if e.seq > held]
        applied: list[Event] = []
        for event in events:
            # ``is_delta`` tells the two kinds of StreamEvent apart (cheaper than isinstance).
            full: Event | None = self._made_whole(event) if event.is_delta else event  # type: ignore[arg-type,assignment]
            if full is None:
                return BatchOutcome.MISSING_BASE, []
            self.apply_event(full)
            applied.append(full)
        self.seq = batch.to_seq
        return outcome, applied

    def _made_whole(self, delta: DeltaEvent) -> Event | None:
        """The full event ``delta`` stands for, against the value held; None if none is."""
        if isinstance(delta, PositionDeltaEvent):
            position = self.positions.get(delta.data.symbol)
            if position is None:
                return None
            return PositionEvent(seq=delta.seq, ts=delta.ts, data=apply_delta(position, delta))
        if isinstance(delta, OrderDeltaEvent):
            order = self.orders.get(delta.data.id)
            if order is None:
                return None
            return OrderEvent(seq=delta.seq, ts=delta.ts, data=apply_delta(order, delta))
        if self.account is None:
            return None
        return AccountEvent(seq=delta.seq, ts=delta.ts, data=apply_delta(self.account, delta))

    def _upsert_order(self, order: Order) -> None:
        self.orders[order.id] = order
        if order.status in TERMINAL_ORDER_STATUSES:
            self._closed_orders[order.id] = None
            self._closed_orders.move_to_end(order.id)
            while len(self._closed_orders) > self._max_closed_orders:
                oldest, _ = self._closed_orders.popitem(last=False)
                self.orders.pop(oldest, None)
        else:
            self._closed_orders.pop(order.id, None)

    def _add_fill(self, fill: Fill) -> None:
        if fill.id in self._fill_ids:
            return
        if len(self.fills) == self.fills.maxlen:
            self._fill_ids.discard(self.fills[0].id)
        self.fills.append(fill)
        self._fill_ids.add(fill.id)

    # ---------------------------------------------------------------- reading

    def has_fill(self, fill_id: str) -> bool:
        """Whether this execution is among the fills held (the most recent ``max_fills``)."""
        return fill_id in self._fill_ids

    def recent_fills(self, limit: int = MAX_SNAPSHOT_FILLS) -> list[Fill]:
        """The newest ``limit`` fills, newest last."""
        start = max(0, len(self.fills) - limit)
        return list(itertools.islice(self.fills, start, None))

    def to_snapshot(
        self, server_time: str, channels: Iterable[str] = CHANNELS, *, max_fills: int = MAX_SNAPSHOT_FILLS
    ) -> Snapshot:
        if self.epoch is None or self.seq is None:
            raise ValueError("no epoch and seq yet: the state has never been synchronised")
        wanted = set(channels)
        snapshot = Snapshot(epoch=self.epoch, seq=self.seq, server_time=server_time)
        if "positions" in wanted:
            snapshot.positions = sorted(self.positions.values(), key=lambda p: p.symbol)
        if "orders" in wanted:
            snapshot.orders = list(self.orders.values())
        if "account" in wanted:
            snapshot.account = self.account
        if "trades" in wanted:
            snapshot.fills = self.recent_fills(max_fills)
        return snapshot
