"""Hypothesis strategies for /ws/ingest frames: publishes of every event type and prices, valid
and spoiled, plus the frames PROTOCOL.md and issue 14 name.

Publishes for ``MODELLED_USER`` keep the fields a book model follows
(quantities, prices, cash) to values it computes exactly; those for
``EDGE_USER`` take anything the grammar allows, extremes included.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import msgspec
import msgspec.inspect as mi
from hypothesis import strategies as st

from alphaflow_live.protocol import Account, ClosedPosition, Fill, Order, Position, Prices, PriceTick, Publish

from .fuzz_cases import (
    ACK,
    EDGE_USER,
    MAX_FRAME_BYTES,
    MODELLED_USER,
    WRONG_VALUES,
    Case,
    Slot,
    accepts,
    constrained,
    dumps,
    echo_of,
    has,
    is_decimal,
    is_string,
    is_timestamp,
    message_ids,
    not_messages,
    slots_of,
    splice,
    spoil,
    unwrap,
    value_at,
    with_id,
)
from .fuzz_values import (
    BAD_DECIMALS,
    OMIT,
    SYMBOLS,
    bad_decimals,
    cents,
    deep_nesting,
    plain_decimals,
    timestamps,
    wire_data,
)

DATA_OF: dict[str, type[msgspec.Struct]] = {
    "fill": Fill, "position": Position, "position_closed": ClosedPosition, "order": Order, "account": Account,
}  # fmt: skip


def _event(tag: str, data: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[dict[str, Any]]:
    return st.builds(lambda ts, d: {"type": tag, "ts": ts, "data": d}, timestamps(), data)


def _side_of_qty(data: dict[str, Any]) -> dict[str, Any]:
    return {**data, "side": "long" if Decimal(data["qty"]) >= 0 else "short"}


def modelled_events() -> st.SearchStrategy[dict[str, Any]]:
    """Events whose effect on qty and cash a model computes exactly; every other field is free."""
    symbol = st.sampled_from(SYMBOLS)
    fill = {
        "id": st.integers(0, 80).map(lambda n: f"fz-{n}"),  # a small space: ids come back as duplicates
        "symbol": symbol, "qty": cents(1, 10_000), "price": cents(1, 1_000_000),
    }  # fmt: skip
    return st.one_of(
        _event("fill", wire_data(Fill, fill)),
        _event(
            "position", wire_data(Position, {"symbol": symbol, "qty": cents(-10_000, 10_000, nonzero=True)})
        ).map(lambda e: {**e, "data": _side_of_qty(e["data"])}),
        _event("position_closed", wire_data(ClosedPosition, {"symbol": symbol})),
        _event(
            "order", wire_data(Order, {"id": st.integers(0, 30).map(lambda n: f"oz-{n}"), "symbol": symbol})
        ),
        _event("account", wire_data(Account, {"cash": cents(-(10**11), 10**11)})),
    )


def edge_events() -> st.SearchStrategy[dict[str, Any]]:
    """Events with any value the contract allows: extremes, ``-0``, leading zeros, any text."""
    positive = {"qty": plain_decimals(positive=True), "price": plain_decimals(positive=True)}
    return st.one_of(
        _event("fill", wire_data(Fill, positive)),
        _event("position", wire_data(Position)).map(lambda e: {**e, "data": _side_of_qty(e["data"])}),
        _event("position_closed", wire_data(ClosedPosition)),
        _event("order", wire_data(Order)),
        _event("account", wire_data(Account)),
    )


@st.composite
def publishes(draw: st.DrawFn, user: str = MODELLED_USER) -> Case:
    events = draw(
        st.lists(modelled_events() if user == MODELLED_USER else edge_events(), min_size=1, max_size=4)
    )
    message = with_id({"type": "publish", "user_id": user, "events": events}, draw(message_ids()))
    label = f"valid publish ({user})"
    return Case(label, dumps(message), frozenset({ACK}), "publish", echo_of(message), user, tuple(events))


@st.composite
def prices(draw: st.DrawFn) -> Case:
    ticks = draw(
        st.lists(wire_data(PriceTick, {"price": plain_decimals(positive=True)}), min_size=1, max_size=5)
    )
    message = with_id({"type": "prices", "prices": ticks}, draw(message_ids()))
    return Case("valid prices", dumps(message), frozenset({ACK}), "prices", echo_of(message))


def valid_ingest() -> st.SearchStrategy[Case]:
    return st.one_of(publishes(MODELLED_USER), publishes(EDGE_USER), prices())


_INGEST = {"publish": mi.type_info(Publish), "prices": mi.type_info(Prices)}
_BAD_TIMESTAMPS = (
    "2026-02-30T10:00:00.000Z", "2026-01-04 14:03:11.120Z", "2026-01-04T14:03:11Z",
    "2026-01-04T14:03:11.120+00:00", "2026-13-01T00:00:00.000Z", "yesterday", "",
)  # fmt: skip
# Outside both the symbol's and the user id's pattern.
_BAD_NAMES = ("", " AAPL", "A" * 65, "ÄPL", "a b", "AAPL\n", "x;y")


@st.composite
def spoiled_ingest(draw: st.DrawFn) -> Case:
    """A valid ingest frame spoiled in one way."""
    base = draw(valid_ingest())
    assert isinstance(base.frame, str)
    message = json.loads(base.frame)
    slots = slots_of(message, _INGEST[message["type"]])
    invalid = frozenset({"invalid_message"})

    def case(
        label: str, spoiled: Any, accept: frozenset[str] = invalid, raw: str | None = None, **kw: Any
    ) -> Case:
        if raw is not None:  # a frame that cannot be decoded has no id the server could echo
            return Case(label, raw, accept, base.kind, None, base.user, **kw)
        return Case(label, dumps(spoiled), accept, base.kind, echo_of(spoiled), base.user, **kw)

    def may_ack(label: str, spoiled: dict[str, Any]) -> Case:
        return case(label, spoiled, invalid | {ACK}, events=tuple(spoiled.get("events", ())))

    # Where each way of spoiling applies to this frame; one way is drawn among those that do.
    where: dict[str, list[Slot]] = {
        "decimal": [s for s in slots if is_decimal(s[1])],
        "missing": [s for s in slots if s[2]],
        "huge": [s for s in slots if is_string(s[1])],
        "timestamp": [s for s in slots if is_timestamp(s[1])],
        "not_positive": [s for s in slots if _must_be_positive(message, s[0])],
        "pattern": [s for s in slots if _patterned(s[1]) and not is_timestamp(s[1])],
        "extra": [s for s in slots if _is_object(s[1]) and isinstance(value_at(message, s[0]), dict)],
        "nested": slots,
        "wrong_type": slots,
    }
    where["number"] = where["decimal"]
    if message["type"] == "publish":
        where["event_type"] = [s for s in slots if len(s[0]) == 3 and s[0][-1] == "type"]
    how = draw(st.sampled_from(sorted(way for way, found in where.items() if found)))
    path, kind, _ = draw(st.sampled_from(where[how]))
    if how == "decimal":
        return case(
            "decimal outside the grammar", spoil(message, path, draw(bad_decimals())), field=str(path[-1])
        )
    if how == "number":
        number = draw(
            st.one_of(st.integers(-(10**40), 10**40), st.floats(allow_nan=False, allow_infinity=False))
        )
        return case("a JSON number for a decimal", spoil(message, path, number), field=str(path[-1]))
    if how == "missing":
        return case("a required field left out", spoil(message, path, OMIT))
    if how == "extra":
        at = draw(st.sampled_from(((), path)))  # the message itself, or an object in it
        name = "x-" + draw(st.text(min_size=1, max_size=10))
        value = draw(
            st.one_of(st.none(), st.integers(), st.text(max_size=20), st.lists(st.integers(), max_size=3))
        )
        return may_ack("an unknown field", spoil(message, (*at, name), value))
    if how == "huge":
        size = (MAX_FRAME_BYTES - len(base.frame.encode()) - 100) // 3
        spoiled = spoil(message, path, draw(st.sampled_from(("A", "é", "☃"))) * size)
        if constrained(kind):
            return case("a huge string", spoiled)
        return may_ack("a huge string in a free-text field", spoiled)
    if how == "nested":
        raw = splice(message, path, draw(deep_nesting(MAX_FRAME_BYTES - len(base.frame.encode()))))
        return case("deep nesting in a field", message, frozenset({"invalid_json"}), raw)
    if how == "timestamp":
        return case("an invalid timestamp", spoil(message, path, draw(st.sampled_from(_BAD_TIMESTAMPS))))
    if how == "not_positive":
        zero = draw(st.sampled_from(("0", "-0", "0.00", "-1", "-0.0000000001")))
        return case("a fill's or tick's quantity or price not above zero", spoil(message, path, zero))
    if how == "pattern":
        bad = draw(st.sampled_from(_BAD_NAMES))
        return case("a symbol or user id outside its pattern", spoil(message, path, bad))
    if how == "event_type":
        bad = draw(st.sampled_from(("fil", "Fill", "publish", "trade", "", 5, None)))
        return case("an unknown event type", spoil(message, path, bad))
    wrong = [v for v in WRONG_VALUES if not accepts(kind, v)]
    return case("a wrong type", spoil(message, path, draw(st.sampled_from(wrong))))


def _patterned(kind: Any) -> bool:
    return has(kind, lambda k: isinstance(k, mi.StrType) and bool(k.pattern))


def _is_object(kind: Any) -> bool:
    return isinstance(unwrap(kind)[0], mi.StructType)


def _must_be_positive(message: dict[str, Any], path: tuple[str | int, ...]) -> bool:
    """A fill's qty and price, a tick's price: the schema wants them above zero."""
    if path[-1] not in ("qty", "price"):
        return False
    if path[0] == "prices":
        return True
    return path[0] == "events" and len(path) == 4 and message["events"][path[1]]["type"] == "fill"


def ingest_cases() -> st.SearchStrategy[Case]:
    not_ingest = not_messages(("subscribe", "ping", "set_streaming"))
    return st.one_of(valid_ingest(), spoiled_ingest(), spoiled_ingest(), not_ingest)


# ------------------------------------------------------------------------- named cases


def _fill(fill_id: str, qty: str = "1", price: str = "100.00", symbol: str = "AAPL") -> dict[str, Any]:
    data = {"id": fill_id, "order_id": "o-named", "symbol": symbol, "side": "buy", "qty": qty, "price": price,
            "position_qty": qty, "timestamp": "2026-01-04T14:03:11.120Z"}  # fmt: skip
    return {"type": "fill", "ts": "2026-01-04T14:03:11.120Z", "data": data}


def named_ingest_cases() -> list[Case]:
    """The frames PROTOCOL.md and issue 14 name, sent before any generated one."""
    cases: list[Case] = []
    invalid = frozenset({"invalid_message"})

    def publish(
        label: str, user: str, events: list[dict[str, Any]], accept: frozenset[str], **kw: Any
    ) -> None:
        message_id = f"named-{len(cases)}"
        message = {"type": "publish", "id": message_id, "user_id": user, "events": events}
        frame = dumps(message)
        cases.append(Case(f"named: {label}", frame, accept, "publish", message_id, user, tuple(events), **kw))

    for bad in BAD_DECIMALS:
        for name in ("qty", "price"):
            spoiled = _fill(f"nf-{len(cases)}")
            spoiled["data"][name] = bad
            publish(f"a fill's {name} outside the grammar", MODELLED_USER, [spoiled], invalid, field=name)
        tick = {"symbol": "HX", "price": bad, "ts": "2026-01-04T14:03:11.120Z"}
        message_id = f"named-{len(cases)}"
        frame = dumps({"type": "prices", "id": message_id, "prices": [tick]})
        label = "named: a tick's price outside the grammar"
        cases.append(Case(label, frame, invalid, "prices", message_id, field="price"))
    widest = "999999999999999.9999999999"
    # What the contract allows must never make the engine fail: the widest values, then trading on.
    publish("the widest fill", EDGE_USER, [_fill("edge-1", widest, widest, "HX")], frozenset({ACK}))
    tick = {"symbol": "HX", "price": widest, "ts": "2026-01-04T14:03:12.000Z"}
    frame = dumps({"type": "prices", "id": "named-widest-tick", "prices": [tick]})
    cases.append(Case("named: the widest tick", frame, frozenset({ACK}), "prices", "named-widest-tick"))
    publish(
        "a fill after the widest", EDGE_USER, [_fill("edge-2", "1", "0.0000000001", "HX")], frozenset({ACK})
    )
    publish(
        "a fill after the widest",
        MODELLED_USER,
        [_fill("after-widest", "3", "100.00", "HX")],
        frozenset({ACK}),
    )
    nest = {"type": "publish", "id": "nested", "user_id": MODELLED_USER, "events": []}
    for depth in (5_000, 10_000):
        raw = dumps(nest).replace("[]", "[" * depth + "]" * depth)
        cases.append(Case(f"named: events nested {depth} deep", raw, frozenset({"invalid_json"}), "publish"))
        cases.append(
            Case(
                f"named: a frame nested {depth} deep", "[" * depth + "]" * depth, frozenset({"invalid_json"})
            )
        )
    cases.append(
        Case("named: a binary frame", dumps(nest).encode(), frozenset({"invalid_message", "invalid_json"}))
    )
    return cases
