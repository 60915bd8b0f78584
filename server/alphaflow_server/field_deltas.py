"""FieldDeltas: one connection's bases for field deltas, and its batches' events encoded (no I/O).

A connection that subscribed with ``deltas: true`` holds, for each position,
order and the account, the last full value it sent (the snapshot's, or the last
event's). A live event whose key has a base goes out as the fields that changed
(``alphaflow_live.deltas``); one without a base goes out in full and becomes
the base. The bases hold references to the events' own data, never copies.

``Subscription`` resets them at every snapshot it sends and at every
subscribe, and recovered batches go out in full: the client may have applied
some of a recovered range already (a batch in flight when it resubscribed),
and a full event is right whatever it holds.
"""

from __future__ import annotations

from collections.abc import Sequence

from msgspec import UNSET

from alphaflow_live.deltas import delta_frame
from alphaflow_live.protocol import (
    Account,
    AccountEvent,
    Event,
    FillEvent,
    Order,
    OrderEvent,
    Position,
    PositionClosedEvent,
    PositionEvent,
    Snapshot,
    encode,
)


class FieldDeltas:
    def __init__(self) -> None:
        self._positions: dict[str, Position] = {}
        self._orders: dict[str, Order] = {}
        self._account: Account | None = None

    def reset(self, snapshot: Snapshot | None = None) -> None:
        """The client now holds ``snapshot`` (of its channels), or nothing this connection sent."""
        self._positions, self._orders, self._account = {}, {}, None
        if snapshot is None:
            return
        if snapshot.positions is not UNSET:
            self._positions = {p.symbol: p for p in snapshot.positions}
        if snapshot.orders is not UNSET:
            self._orders = {o.id: o for o in snapshot.orders}
        if snapshot.account is not UNSET:
            self._account = snapshot.account

    def encode(self, events: Sequence[Event], encoded: Sequence[bytes] | None, *, full: bool) -> list[bytes]:
        """Each event as it goes out on this connection: a delta where it has a base, unless ``full``.

        ``encoded`` is the events' full encodings when the caller has them (then nothing
        is encoded twice).
        """
        out: list[bytes] = []
        positions, orders = self._positions, self._orders
        for i, event in enumerate(events):
            base: Position | Order | Account | None = None
            if isinstance(event, PositionEvent):
                base = positions.get(event.data.symbol)
                positions[event.data.symbol] = event.data
            elif isinstance(event, OrderEvent):
                base = orders.get(event.data.id)
                orders[event.data.id] = event.data
            elif isinstance(event, AccountEvent):
                base, self._account = self._account, event.data
            elif isinstance(event, PositionClosedEvent):
                positions.pop(event.data.symbol, None)  # a reopened position starts in full
            if base is not None and not full:
                assert not isinstance(event, PositionClosedEvent | FillEvent)
                out.append(delta_frame(event, base))
            else:
                out.append(encode(event) if encoded is None else encoded[i])
        return out
