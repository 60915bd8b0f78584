"""The trusted decoders: the strict schema's twins, which decode the server's frames unchecked."""

from __future__ import annotations

import types
from decimal import Decimal
from typing import Annotated, Any, Union, get_args, get_origin

import msgspec
import pytest
from hypothesis import given, settings

from alphaflow_live import protocol
from alphaflow_live.protocol import (
    Batch,
    Error,
    Event,
    Heartbeat,
    Pong,
    ServerMessage,
    Snapshot,
    Subscribed,
    Welcome,
    encode,
    server_message_decoder,
    snapshot_decoder,
)
from alphaflow_live.state import PortfolioState
from alphaflow_live.trusted import (
    trusted_server_message_decoder,
    trusted_snapshot_decoder,
    trusted_type,
)

from .factories import EVENT_POOL, TS, event_sequences, position, position_closed, stamp, ts, wire

PROPERTY = settings(max_examples=200, deadline=None)
# Every option of a Struct's configuration (tag, omit_defaults, gc, ...).
CONFIG = [name for name in dir(msgspec.structs.StructConfig) if not name.startswith("_")]


def _members(hint: Any) -> list[Any]:
    """The hints ``hint`` is built of (its Union members, its items' types), constraints dropped."""
    if get_origin(hint) is Annotated:
        return [get_args(hint)[0]]
    return list(get_args(hint))


def _strict_structs(hint: Any, found: set[type[msgspec.Struct]]) -> set[type[msgspec.Struct]]:
    """Every Struct type a server message can hold, found by walking the strict hints."""
    if isinstance(hint, type) and issubclass(hint, msgspec.Struct):
        if hint not in found:
            found.add(hint)
            for field in msgspec.structs.fields(hint):
                _strict_structs(field.type, found)
        return found
    for member in _members(hint):
        _strict_structs(member, found)
    return found


SERVER_STRUCTS = sorted(_strict_structs(ServerMessage, set()), key=lambda cls: cls.__name__)


def _shape(hint: Any) -> Any:
    """``hint`` with its constraints dropped and every Struct named by the strict type it is."""
    if get_origin(hint) is Annotated:
        return _shape(get_args(hint)[0])
    if isinstance(hint, type) and issubclass(hint, msgspec.Struct):
        return next(cls for cls in hint.__mro__ if cls.__module__ == protocol.__name__)
    if get_origin(hint) in (Union, types.UnionType):
        return frozenset(map(_shape, get_args(hint)))
    if get_args(hint):
        return (get_origin(hint), tuple(map(_shape, get_args(hint))))
    return hint


def _constraints(hint: Any) -> list[Any]:
    if get_origin(hint) is Annotated:
        return [hint]
    return [found for member in get_args(hint) for found in _constraints(member)]


def assert_same(strict: Any, trusted: Any, where: str = "$") -> None:
    """``trusted`` holds what ``strict`` holds, value for value and type for type (Decimals too),
    in the trusted twins of the strict Structs."""
    if isinstance(strict, msgspec.Struct):
        assert type(trusted) is trusted_type(type(strict)), f"{where}: {type(trusted)} for {type(strict)}"
        for name in strict.__struct_fields__:
            assert_same(getattr(strict, name), getattr(trusted, name), f"{where}.{name}")
    elif isinstance(strict, list):
        assert isinstance(trusted, list), f"{where}: {trusted!r}"
        assert len(trusted) == len(strict), f"{where}: {len(trusted)} items, expected {len(strict)}"
        for index, (a, b) in enumerate(zip(strict, trusted, strict=True)):
            assert_same(a, b, f"{where}[{index}]")
    else:
        assert type(trusted) is type(strict), f"{where}: {trusted!r}, expected {strict!r}"
        assert trusted == strict, f"{where}: {trusted!r}, expected {strict!r}"


def _decoded_both_ways(message: Any) -> tuple[Any, Any]:
    frame = encode(message)
    return server_message_decoder.decode(frame), trusted_server_message_decoder.decode(frame)


# ------------------------------------------------------------------ one schema


def test_the_walk_finds_every_struct_of_the_server_messages() -> None:
    names = {cls.__name__ for cls in SERVER_STRUCTS}

    assert {"Batch", "Snapshot", "Position", "Order", "Account", "Fill", "ClosedPosition"} <= names
    assert {cls.__name__ for cls in Event.__args__} <= names


@pytest.mark.parametrize("strict", SERVER_STRUCTS, ids=lambda cls: cls.__name__)
def test_a_trusted_type_has_the_strict_types_fields_without_their_constraints(
    strict: type[msgspec.Struct],
) -> None:
    twin = trusted_type(strict)
    strict_fields, twin_fields = msgspec.structs.fields(strict), msgspec.structs.fields(twin)

    assert issubclass(twin, strict)
    assert [f.name for f in twin_fields] == [f.name for f in strict_fields]
    assert [f.encode_name for f in twin_fields] == [f.encode_name for f in strict_fields]
    assert [(f.default, f.default_factory) for f in twin_fields] == [
        (f.default, f.default_factory) for f in strict_fields
    ]
    assert [_shape(f.type) for f in twin_fields] == [_shape(f.type) for f in strict_fields]
    assert [f.name for f in twin_fields if _constraints(f.type)] == []
    assert twin.__match_args__ == strict.__match_args__
    config, twin_config = strict.__struct_config__, twin.__struct_config__
    assert {k: getattr(twin_config, k) for k in CONFIG} == {k: getattr(config, k) for k in CONFIG}


def test_trusted_types_are_made_once_per_strict_type() -> None:
    assert trusted_type(Batch) is trusted_type(Batch)
    assert (
        msgspec.structs.fields(trusted_type(Batch))[-1].type
        == list[
            trusted_type(protocol.PositionEvent)
            | trusted_type(protocol.PositionClosedEvent)
            | trusted_type(protocol.OrderEvent)
            | trusted_type(protocol.AccountEvent)
            | trusted_type(protocol.FillEvent)
            | trusted_type(protocol.PositionDeltaEvent)
            | trusted_type(protocol.OrderDeltaEvent)
            | trusted_type(protocol.AccountDeltaEvent)
        ]
    )


# ------------------------------------------------------------------ agreement


def _one_of_each() -> list[Any]:
    events = stamp(EVENT_POOL)
    state = PortfolioState()
    state.apply_snapshot(Snapshot(epoch="e-1", seq=0, server_time=TS, positions=[], orders=[], fills=[]))
    state.apply_batch(Batch(epoch="e-1", from_seq=0, to_seq=len(events), server_time=TS, events=events))
    return [
        Welcome(
            user_id="alice",
            connection_id="c-1",
            epoch="e-1",
            server_time=TS,
            batch_window_ms=50,
            heartbeat_s=15.0,
            channels=["positions", "orders"],
            node="n-1",
        ),
        Welcome(
            user_id="alice",
            connection_id="c-1",
            epoch="e-1",
            server_time=TS,
            batch_window_ms=50,
            heartbeat_s=15.0,
            channels=[],
        ),
        Subscribed(channels=["account", "trades"], recovered=True),
        state.to_snapshot(TS),
        state.to_snapshot(TS, channels=["positions"]),
        Snapshot(epoch="e-1", seq=0, server_time=TS, account=None),
        Batch(epoch="e-1", from_seq=0, to_seq=len(events), server_time=TS, events=events),
        Heartbeat(server_time=TS, seq=7),
        Pong(id="p-1", server_time=TS),
        Pong(server_time=TS),
        Error(code="resume_unavailable", message="gone", ref=3),
        Error(code="internal", message="oops"),
    ]


def test_every_server_message_type_is_covered_by_the_examples() -> None:
    assert {type(m) for m in _one_of_each()} == set(ServerMessage.__args__)


@pytest.mark.parametrize("message", _one_of_each(), ids=lambda m: type(m).__name__)
def test_trusted_and_strict_decoders_agree_on_every_message_type(message: Any) -> None:
    strict, trusted = _decoded_both_ways(message)

    assert strict == message
    assert_same(strict, trusted)
    assert encode(trusted) == encode(message)
    assert (trusted == message, message == trusted, trusted != message, message != trusted) == (
        True,
        True,
        False,
        False,
    )


@PROPERTY
@given(event_sequences(min_size=1))
def test_trusted_and_strict_decoders_agree_on_random_batches_and_snapshots(events: list[Event]) -> None:
    batch = Batch(epoch="e-1", from_seq=0, to_seq=len(events), server_time=ts(len(events)), events=events)
    state = PortfolioState()
    state.apply_snapshot(Snapshot(epoch="e-1", seq=0, server_time=TS, positions=[], orders=[], fills=[]))
    state.apply_batch(batch)
    snapshot = state.to_snapshot(TS)

    assert_same(*_decoded_both_ways(batch))
    assert_same(*_decoded_both_ways(snapshot))
    assert_same(snapshot_decoder.decode(encode(snapshot)), trusted_snapshot_decoder.decode(encode(snapshot)))


@PROPERTY
@given(event_sequences(min_size=1))
def test_a_state_fed_trusted_messages_holds_what_one_fed_strict_messages_holds(events: list[Event]) -> None:
    held = {}
    for name, decode in (("strict", server_message_decoder), ("trusted", trusted_server_message_decoder)):
        state = PortfolioState()
        empty = Snapshot(epoch="e-1", seq=0, server_time=TS, positions=[], orders=[], fills=[])
        state.apply_snapshot(decode.decode(encode(empty)))
        batch = Batch(epoch="e-1", from_seq=0, to_seq=len(events), server_time=TS, events=events)
        state.apply_batch(decode.decode(encode(batch)))
        held[name] = state

    strict, trusted = held["strict"], held["trusted"]
    assert trusted.seq == strict.seq
    assert_same(sorted(strict.positions), sorted(trusted.positions))
    assert_same(
        [strict.positions[s] for s in sorted(strict.positions)],
        [trusted.positions[s] for s in sorted(trusted.positions)],
    )
    assert_same(list(strict.orders.values()), list(trusted.orders.values()))
    assert_same(list(strict.fills), list(trusted.fills))
    assert_same(strict.account, trusted.account)


def test_a_trusted_message_equals_a_strict_one_only_when_every_value_does() -> None:
    strict = position().data
    trusted = trusted_snapshot_decoder.decode(
        encode(Snapshot(epoch="e-1", seq=1, server_time=TS, positions=[strict]))
    ).positions[0]
    other = msgspec.structs.replace(strict, qty=strict.qty + 1)

    assert type(trusted) is not type(strict)
    assert (trusted == strict, strict == trusted, trusted != strict, strict != trusted) == (
        True,
        True,
        False,
        False,
    )
    assert (trusted == other, other == trusted, trusted != other, other != trusted) == (
        False,
        False,
        True,
        True,
    )
    assert {"AAPL": trusted} == {"AAPL": strict}
    assert trusted != position_closed().data and trusted != "AAPL"
    assert repr(trusted) == repr(strict)


# ------------------------------------------------------------------ what it checks, what it does not


def test_the_trusted_decoder_skips_the_value_checks_the_strict_one_makes() -> None:
    data = wire(position().data) | {"updated_at": "2026-02-30T10:00:00.000Z", "symbol": "not a symbol!"}
    frame = msgspec.json.encode(
        {
            "type": "batch",
            "epoch": "e-1",
            "from_seq": 0,
            "to_seq": 1,
            "server_time": "now",
            "events": [{"type": "position", "seq": 1, "ts": TS, "data": data | {"qty": "NaN"}}],
        }
    )

    with pytest.raises(msgspec.ValidationError):
        server_message_decoder.decode(frame)
    got = trusted_server_message_decoder.decode(frame)

    assert isinstance(got, Batch)
    qty = got.events[0].data.qty
    assert isinstance(qty, Decimal) and qty.is_nan()


@pytest.mark.parametrize(
    "frame",
    [
        b'{"type": "heartbeat", "server_time": "x"}',  # seq missing
        b'{"type": "heartbeat", "server_time": "x", "seq": "7"}',  # seq not an int
        b'{"type": "ack", "server_time": "x", "seq": 7}',  # not a server message
        b'{"type": "batch", "epoch": "e", "from_seq": 0, "to_seq": 1, "server_time": "x",'
        b' "events": [{"type": "position", "ts": "x", "data": {"symbol": "A"}}]}',  # data incomplete
        b'{"type": "batch", "epoch": "e", "from_seq": 0, "to_seq": 1, "server_time": "x",'
        b' "events": [{"type": "position_closed", "ts": "x", "channel": "orders",'
        b' "data": {"symbol": "A"}}]}',  # a Literal that does not match
    ],
)
def test_the_trusted_decoder_still_refuses_frames_that_do_not_fit_the_schema(frame: bytes) -> None:
    with pytest.raises(msgspec.ValidationError):
        trusted_server_message_decoder.decode(frame)


def test_the_trusted_decoders_raise_decode_error_for_nesting_too_deep() -> None:
    nested = "[" * 10_000 + "]" * 10_000
    frame = f'{{"x": {nested}, "type": "snapshot", "epoch": "e-1", "seq": 1, "server_time": "{TS}"}}'
    for decoder in (trusted_server_message_decoder, trusted_snapshot_decoder):
        with pytest.raises(msgspec.DecodeError, match="nested too deeply"):
            decoder.decode(frame)
