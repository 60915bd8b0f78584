"""Fuzzing the wire: the ``Case`` every strategy draws, and the schema walk that spoils frames.

A case is a frame to send, the answers the contract allows for it (``ACK`` or
``REPLY`` for a valid frame, else error codes), and what it carries for a
model of the book. Strategies for each stream live in ``fuzz_ingest`` and
``fuzz_portfolio``; they build valid frames from the shared schema
(``fuzz_values.wire_data``) and spoil one thing in each broken one, using the
walk below (``slots_of``: every value of a frame with its schema type) to
know what a spoiled value must be answered with. A case's ``label`` names
its kind, so a report says which kinds of frame the server got wrong.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec
import msgspec.inspect as mi
from hypothesis import strategies as st

from alphaflow_live.protocol import TIMESTAMP_PATTERN

from .fuzz_values import GRAMMAR, OMIT, deep_nesting

ACK = "ack"  # an ingest ack
REPLY = "reply"  # the portfolio stream's answer to a valid message: pong, or subscribed and its data
# Every error code PROTOCOL.md defines.
CONTRACT_CODES = frozenset({
    "invalid_json", "invalid_message", "unknown_type", "invalid_channel", "resume_unavailable",
    "unavailable", "internal",
})  # fmt: skip
# Frames stay under the 64 KiB inbound limit: past it the contract closes the connection (1009).
MAX_FRAME_BYTES = 60_000
MODELLED_USER, EDGE_USER = "alice", "bob"
# Stands for the user's current epoch in a subscribe's resume; the sender puts the real one in.
EPOCH = "$EPOCH"


@dataclass(frozen=True)
class Case:
    label: str
    frame: str | bytes  # bytes go as a binary frame
    accept: frozenset[str]  # ACK / REPLY and the error codes the contract allows
    kind: str = "other"  # publish, prices, ping, subscribe, unsubscribe or other
    id: int | str | None = None  # what an error's ``ref`` must echo (None: nothing to echo)
    user: str | None = None
    events: tuple[dict[str, Any], ...] = ()  # the wire events an ack applies
    field: str | None = None  # the field an invalid_message must name
    resume: bool = False

    def message(self) -> dict[str, Any]:
        """The frame as a JSON object, or an empty one when it is none."""
        try:
            parsed = json.loads(self.frame)
        except (ValueError, RecursionError):
            return {}
        return parsed if isinstance(parsed, dict) else {}

    def show(self) -> str:
        text = self.frame if isinstance(self.frame, str) else f"<binary {self.frame[:80]!r}>"
        return repr(text if len(text) <= 240 else f"{text[:240]}… ({len(text)} chars)")


def dumps(message: Any) -> str:
    return json.dumps(message, ensure_ascii=False, separators=(",", ":"))


def message_ids() -> st.SearchStrategy[Any]:
    return st.one_of(st.integers(-(2**63), 2**63 - 1), st.text(max_size=20), st.none(), st.just(OMIT))


def with_id(message: dict[str, Any], message_id: Any) -> dict[str, Any]:
    return message if message_id is OMIT else {**message, "id": message_id}


def echo_of(message: dict[str, Any]) -> int | str | None:
    value = message.get("id")
    return value if isinstance(value, int | str) and not isinstance(value, bool) else None


# A slot of a message: the path to a value, the schema's type there, and whether it is required.
Slot = tuple[tuple[str | int, ...], Any, bool]
# Values tried where a slot's type refuses them.
WRONG_VALUES: tuple[Any, ...] = ([1], {"a": 1}, True, 42, 1.5, "x", None, [])


def slots_of(value: Any, kind: Any, path: tuple[str | int, ...] = ()) -> list[Slot]:
    """Every value present in ``value`` (a message as JSON) with its type from the schema ``kind``."""
    kind = kind.type if isinstance(kind, mi.Metadata) else kind
    if isinstance(kind, mi.UnionType):
        structs = [k for k in kind.types if isinstance(k, mi.StructType)]
        tagged = [k for k in structs if isinstance(value, dict) and value.get(k.tag_field) == k.tag]
        return slots_of(value, (tagged or structs)[0], path) if structs and isinstance(value, dict) else []
    if isinstance(kind, mi.ListType) and isinstance(value, list):
        item = kind.item_type  # an item is no required slot: a list without it may still be valid
        return [
            s
            for i, v in enumerate(value)
            for s in [((*path, i), item, False), *slots_of(v, item, (*path, i))]
        ]
    if not (isinstance(kind, mi.StructType) and isinstance(value, dict)):
        return []
    slots: list[Slot] = []
    if kind.tag_field is not None and path:  # an event's type; a message's own is fuzzed elsewhere
        slots.append(((*path, kind.tag_field), mi.LiteralType(values=(kind.tag,)), True))
    for f in kind.fields:
        if f.encode_name in value:
            here = (*path, f.encode_name)
            slots += [(here, f.type, f.required), *slots_of(value[f.encode_name], f.type, here)]
    return slots


def accepts(kind: Any, value: Any) -> bool:
    """Whether the schema's ``kind`` takes ``value`` (decimals: strings of the grammar)."""
    if isinstance(kind, mi.Metadata):
        return accepts(kind.type, value)
    if isinstance(kind, mi.UnionType):
        return any(accepts(k, value) for k in kind.types)
    if isinstance(kind, mi.NoneType):
        return value is None
    if isinstance(kind, mi.IntType):
        return (
            isinstance(value, int) and not isinstance(value, bool) and (kind.ge is None or value >= kind.ge)
        )
    if isinstance(kind, mi.StrType):
        return isinstance(value, str)
    if isinstance(kind, mi.LiteralType):
        return value in kind.values
    if isinstance(kind, mi.DecimalType):
        return isinstance(value, str) and GRAMMAR.fullmatch(value) is not None
    if isinstance(kind, mi.ListType):
        return (isinstance(value, list) and len(value) >= (kind.min_length or 0)
                and all(accepts(kind.item_type, v) for v in value))  # fmt: skip
    if isinstance(kind, mi.StructType):
        return isinstance(value, dict) and not any(f.required for f in kind.fields)
    return False


def unwrap(kind: Any) -> tuple[Any, ...]:
    kind = kind.type if isinstance(kind, mi.Metadata) else kind
    return tuple(k for u in kind.types for k in unwrap(u)) if isinstance(kind, mi.UnionType) else (kind,)


def has(kind: Any, test: Callable[[Any], bool]) -> bool:
    return any(test(k) for k in unwrap(kind))


def is_decimal(kind: Any) -> bool:
    return has(kind, lambda k: isinstance(k, mi.DecimalType))


def is_string(kind: Any) -> bool:
    return has(kind, lambda k: isinstance(k, mi.StrType | mi.LiteralType))


def is_timestamp(kind: Any) -> bool:
    return has(kind, lambda k: isinstance(k, mi.StrType) and k.pattern == TIMESTAMP_PATTERN)


def constrained(kind: Any) -> bool:
    """A string the schema bounds (a pattern, a length, a set of values): a huge one is refused."""
    return has(
        kind,
        lambda k: (
            isinstance(k, mi.LiteralType) or (isinstance(k, mi.StrType) and bool(k.pattern or k.max_length))
        ),
    )


def spoil(message: Any, path: tuple[str | int, ...], value: Any) -> Any:
    copy = json.loads(json.dumps(message))
    target = copy
    for key in path[:-1]:
        target = target[key]
    if value is OMIT:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return copy


_SPLICE = "\u0000splice\u0000"


def splice(message: dict[str, Any], path: tuple[str | int, ...], raw: str) -> str:
    """The message's JSON with the raw JSON text ``raw`` at ``path``."""
    return dumps(spoil(message, path, _SPLICE)).replace(dumps(_SPLICE), raw, 1)


def value_at(message: Any, path: tuple[str | int, ...]) -> Any:
    for key in path:
        message = message[key]
    return message


# ------------------------------------------------------------------------ not messages


def _is_json(text: str) -> bool:
    try:
        msgspec.json.decode(text)
    except (msgspec.DecodeError, RecursionError):
        return False
    return True


@st.composite
def not_messages(draw: st.DrawFn, other_types: tuple[str, ...]) -> Case:
    """Frames that are no message of the stream: unknown types, non-objects, bad JSON, binary."""
    how = draw(st.sampled_from(("type", "no_type", "non_object", "json", "nested", "binary")))
    message_id = draw(st.integers(0, 2**31))
    if how == "type":
        kind = draw(st.one_of(st.sampled_from(other_types), st.text(max_size=12)))
        message = {"type": kind, "id": message_id}
        return Case("an unknown message type", dumps(message), frozenset({"unknown_type"}), id=message_id)
    if how == "no_type":
        kind = draw(st.sampled_from((OMIT, None, 7, ["ping"], {"t": 1}, True)))
        message = with_id({"id": message_id}, OMIT) if kind is OMIT else {"type": kind, "id": message_id}
        accept = frozenset({"unknown_type", "invalid_message"})
        return Case("a type that is no string", dumps(message), accept, id=message_id)
    if how == "non_object":
        frame = draw(
            st.sampled_from(("[]", '[{"type":"ping"}]', '"ping"', "42", "null", "true", "-3.5e2", '""'))
        )
        return Case("not an object", frame, frozenset({"invalid_message", "invalid_json"}))
    if how == "json":
        frame = draw(st.one_of(
            st.sampled_from(("", "{", "}", "{'type': 'ping'}", '{"type":"ping",}', "NaN", '{"type":"ping"}}',
                             '{"type":"ping"} {"type":"ping"}', "\u0000", '{"type":"ping","id":01}', "tru")),
            st.text(min_size=1, max_size=30).map(lambda t: "{" + t),
        ).filter(lambda text: not _is_json(text)))  # fmt: skip
        return Case("invalid JSON", frame, frozenset({"invalid_json"}))
    if how == "nested":
        frame = draw(deep_nesting(MAX_FRAME_BYTES))
        return Case("a frame nested deep", frame, frozenset({"invalid_json"}))
    payload = draw(
        st.one_of(st.binary(max_size=64), st.just(b'{"type":"ping","id":1}'), st.just(b"\xff\xfe"))
    )
    return Case("a binary frame", payload, frozenset({"invalid_message", "invalid_json"}))
