"""Field deltas: what changed between two states of a position, order or account, and back.

The sending side keeps, per connection, the last full value it sent of each
key (its *base*) and encodes each later event as the fields that differ from
it (``delta_frame``); the receiving side applies a delta to the value it holds
(``apply_delta``). Both sides hold the same base because the server resets its
bases at every ``subscribe`` (to the snapshot it sends, or to nothing) and
sends recovered batches in full: docs/protocol.md, "Field deltas", has the
rules, and a property test checks that a client applying deltas ends in the
state of one applying full events.

"Changed" is exact: ``1.0`` and ``1.00`` are different values here, as they
are different strings on the wire, so a value keeps its spelling through
deltas (the widget shows prices with the precision they carry).
"""

from __future__ import annotations

import copy
import functools
from decimal import Decimal
from typing import Any, Final, TypeVar, cast

import msgspec
from msgspec import UNSET

from .protocol import (
    Account,
    AccountDeltaEvent,
    AccountEvent,
    DeltaEvent,
    Order,
    OrderDeltaEvent,
    OrderEvent,
    Position,
    PositionDeltaEvent,
    PositionEvent,
    encode,
)

Data = Position | Order | Account
KeyedEvent = PositionEvent | OrderEvent | AccountEvent
D = TypeVar("D", Position, Order, Account)

# Each full event type → the ``type`` tag of its delta.
DELTA_TAGS: Final[dict[type, str]] = {
    PositionEvent: PositionDeltaEvent.__struct_config__.tag,  # type: ignore[dict-item]
    OrderEvent: OrderDeltaEvent.__struct_config__.tag,  # type: ignore[dict-item]
    AccountEvent: AccountDeltaEvent.__struct_config__.tag,  # type: ignore[dict-item]
}
# The field a delta always carries, so that the receiver knows what it applies to.
_KEYS: Final[dict[type, str | None]] = {Position: "symbol", Order: "id", Account: None}


def same(a: Any, b: Any) -> bool:
    """Whether two field values are the same value as the wire spells it."""
    if a is b:
        return True
    if type(a) is Decimal and type(b) is Decimal:
        return not a.compare_total(b)  # 0 only for one representation: 1.0 ≠ 1.00, -0 ≠ 0
    return bool(a == b)


def changes(base: Data, new: Data) -> dict[str, Any]:
    """The fields of ``new`` that differ from ``base`` (its key always), by wire name."""
    strict = _strict_type(type(new))
    key = _KEYS[strict]
    changed: dict[str, Any] = {} if key is None else {key: getattr(new, key)}
    for name in strict.__struct_fields__:
        value = getattr(new, name)
        if not same(value, getattr(base, name)):
            changed[name] = value
    return changed


def delta_frame(event: KeyedEvent, base: Data) -> bytes:
    """``event`` encoded as a delta against ``base``: the bytes of its delta event type."""
    return encode(
        {
            "type": DELTA_TAGS[_strict_type(type(event))],
            "seq": event.seq,
            "ts": event.ts,
            "channel": event.channel,
            "data": changes(base, event.data),
        }
    )


def apply_delta(base: D, delta: DeltaEvent) -> D:
    """``base`` with the fields ``delta`` carries; the type of ``base`` (strict or trusted) is kept.

    A copy with the fields set, not ``structs.replace``: the values were checked where they
    entered the system, and ``replace`` would run the type's checks again (most of the cost)."""
    data = delta.data
    merged = copy.copy(base)
    for name in data.__struct_fields__:
        value = getattr(data, name)
        if value is not UNSET:
            setattr(merged, name, value)
    return merged


@functools.cache
def _strict_type(cls: type) -> type[msgspec.Struct]:
    """The protocol type behind a trusted twin (``trusted`` subclasses the strict types)."""
    for klass in cls.__mro__:
        if klass in _KEYS or klass in DELTA_TAGS:
            return cast("type[msgspec.Struct]", klass)
    raise TypeError(f"no field deltas for {cls.__name__}")
