"""The wire schema: decoding, error codes, decimals, timestamps and the JSON Schema export."""

from __future__ import annotations

import calendar
import re
import time
from decimal import Decimal
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alphaflow_live.protocol import (
    CHANNELS,
    TIMESTAMP_PATTERN,
    Batch,
    Error,
    FillEvent,
    MessageError,
    Ping,
    Prices,
    Publish,
    Snapshot,
    Subscribe,
    Unsubscribe,
    decode_admin_message,
    decode_client_message,
    decode_ingest_message,
    encode,
    format_timestamp,
    json_schema,
    server_message_decoder,
    validate_channels,
)

from .factories import TS, account, fill, order, position, position_closed, publish_frame, stamp, tick, wire

PROPERTY = settings(max_examples=200, deadline=None)


def _json(value: Any) -> bytes:
    return msgspec.json.encode(value)


def _decode_error(decode: Any, frame: str | bytes) -> MessageError:
    with pytest.raises(MessageError) as caught:
        decode(frame)
    return caught.value


def _publish_with_fill_data(**changes: Any) -> bytes:
    item = wire(fill("f-1"))
    del item["seq"]
    item["data"].update(changes)
    return _json({"type": "publish", "id": 9, "user_id": "alice", "events": [item]})


# ------------------------------------------------------------- client messages


def test_subscribe_decodes_channels_and_resume_point() -> None:
    frame = _json(
        {
            "type": "subscribe",
            "id": 1,
            "channels": ["positions", "trades"],
            "resume": {"epoch": "e-91b3", "seq": 1234},
        }
    )

    message = decode_client_message(frame)

    assert isinstance(message, Subscribe), f"expected Subscribe, got {message!r}"
    assert (message.id, message.channels) == (1, ["positions", "trades"])
    assert message.resume is not None
    assert (message.resume.epoch, message.resume.seq) == ("e-91b3", 1234)


def test_subscribe_without_channels_leaves_channels_none_meaning_all() -> None:
    message = decode_client_message('{"type": "subscribe"}')

    assert isinstance(message, Subscribe)
    assert (message.id, message.channels, message.resume) == (None, None, None)


def test_unsubscribe_and_ping_decode_with_string_ids() -> None:
    unsubscribe = decode_client_message('{"type": "unsubscribe", "id": "u-2", "channels": ["trades"]}')
    ping = decode_client_message('{"type": "ping", "id": "p-3"}')

    assert unsubscribe == Unsubscribe(id="u-2", channels=["trades"])
    assert ping == Ping(id="p-3")


def test_invalid_json_is_reported_as_invalid_json() -> None:
    error = _decode_error(decode_client_message, '{"type": "ping", ')

    assert error.code == "invalid_json", f"expected invalid_json, got {error.code}: {error.message}"
    assert error.ref is None


@pytest.mark.parametrize("depth", [5_000, 10_000])
@pytest.mark.parametrize("opener", ["[", '{"a":'])
def test_nesting_too_deep_to_decode_is_invalid_json_on_every_stream(depth: int, opener: str) -> None:
    closer = "]" if opener == "[" else "}"
    nested = opener * depth + "0" + closer * depth
    frames = [nested, f'{{"type": "ping", "id": 1, "x": {nested}}}']
    for decode in (decode_client_message, decode_ingest_message, decode_admin_message):
        for frame in frames:
            error = _decode_error(decode, frame)

            assert error.code == "invalid_json", f"{decode.__name__}: {error.code}: {error.message}"
            assert "nested too deeply" in error.message


def test_the_clients_decoders_raise_decode_error_for_nesting_too_deep() -> None:
    from alphaflow_live.protocol import admin_reply_decoder, ingest_reply_decoder, snapshot_decoder

    nested = "[" * 10_000 + "]" * 10_000
    # The nesting in a field the decoder skips (one it does not know), ahead of the rest.
    frame = f'{{"x": {nested}, "type": "ack", "epoch": "e-1", "seq": 1, "server_time": "{TS}"}}'
    for decoder in (server_message_decoder, snapshot_decoder, ingest_reply_decoder, admin_reply_decoder):
        with pytest.raises(msgspec.DecodeError, match="nested too deeply"):
            decoder.decode(frame)


def test_invalid_utf8_is_reported_as_invalid_json() -> None:
    error = _decode_error(decode_client_message, b'{"type": "\xff"}')

    assert error.code == "invalid_json"


@pytest.mark.parametrize("frame", ['[{"type": "ping"}]', '"ping"', "7", "null"])
def test_a_frame_that_is_not_an_object_is_invalid_message(frame: str) -> None:
    error = _decode_error(decode_client_message, frame)

    assert error.code == "invalid_message", f"expected invalid_message, got {error.code}: {error.message}"


def test_unknown_type_is_reported_with_ref_echoing_the_id() -> None:
    error = _decode_error(decode_client_message, '{"type": "subscribe_all", "id": 7}')

    assert (error.code, error.ref) == ("unknown_type", 7)
    assert "subscribe_all" in error.message


def test_missing_type_is_reported_as_unknown_type() -> None:
    error = _decode_error(decode_client_message, '{"id": "x-1"}')

    assert (error.code, error.ref) == ("unknown_type", "x-1")


def test_a_server_message_type_sent_by_a_client_is_unknown_type() -> None:
    error = _decode_error(decode_client_message, '{"type": "welcome", "id": 4}')

    assert (error.code, error.ref) == ("unknown_type", 4)


@pytest.mark.parametrize("type_value", [["ping"], {"ping": 1}])
def test_a_type_that_is_a_json_array_or_object_is_unknown_type_with_ref(type_value: Any) -> None:
    error = _decode_error(decode_client_message, _json({"type": type_value, "id": 7}))

    assert (error.code, error.ref) == ("unknown_type", 7)


def test_missing_required_field_is_invalid_message_with_ref() -> None:
    error = _decode_error(decode_client_message, '{"type": "unsubscribe", "id": 2}')

    assert (error.code, error.ref) == ("invalid_message", 2)
    assert "channels" in error.message


def test_channels_that_are_not_a_list_are_invalid_message() -> None:
    error = _decode_error(decode_client_message, '{"type": "subscribe", "id": 3, "channels": "trades"}')

    assert (error.code, error.ref) == ("invalid_message", 3)


def test_negative_resume_seq_is_invalid_message() -> None:
    frame = '{"type": "subscribe", "id": 5, "resume": {"epoch": "e-1", "seq": -1}}'

    error = _decode_error(decode_client_message, frame)

    assert (error.code, error.ref) == ("invalid_message", 5)


@pytest.mark.parametrize("ref", [True, None, 1.5, [1]])
def test_an_id_that_is_not_an_int_or_string_is_not_echoed_as_ref(ref: Any) -> None:
    error = _decode_error(decode_client_message, _json({"type": "nope", "id": ref}))

    assert error.code == "unknown_type"
    assert error.ref is None, f"expected no ref, got {error.ref!r}"


def test_message_error_to_error_carries_ref_only_when_there_is_one() -> None:
    with_ref = MessageError("invalid_message", "bad", 7).to_error()
    without_ref = MessageError("invalid_json", "bad").to_error()

    assert encode(with_ref) == b'{"type":"error","code":"invalid_message","message":"bad","ref":7}'
    assert encode(without_ref) == b'{"type":"error","code":"invalid_json","message":"bad"}'


def test_admin_messages_decode() -> None:
    message = decode_admin_message('{"type": "set_streaming", "id": 1, "enabled": false}')

    assert (type(message).__name__, message.id, getattr(message, "enabled", None)) == (
        "SetStreaming",
        1,
        False,
    )


# ------------------------------------------------------------------ channels


def test_validate_channels_returns_protocol_order_without_duplicates() -> None:
    got = validate_channels(["trades", "positions", "trades", "account"])

    assert got == ["positions", "account", "trades"]


def test_validate_channels_accepts_an_empty_list() -> None:
    assert validate_channels([]) == []


def test_validate_channels_names_every_unknown_channel() -> None:
    with pytest.raises(MessageError) as caught:
        validate_channels(["positions", "quotes", "news"])

    assert caught.value.code == "invalid_channel"
    assert "'quotes'" in caught.value.message
    assert "'news'" in caught.value.message


@PROPERTY
@given(st.lists(st.sampled_from(CHANNELS)))
def test_validate_channels_is_the_sorted_set_of_valid_names(names: list[str]) -> None:
    got = validate_channels(names)

    expected = [channel for channel in CHANNELS if channel in names]
    assert got == expected, f"expected {expected}, got {got}"


# -------------------------------------------------------------------- ingest


def test_publish_decodes_every_event_type_with_seq_zero() -> None:
    events = [position(), position_closed("MSFT"), order(), account(), fill("f-1")]

    message = decode_ingest_message(publish_frame(events))

    assert isinstance(message, Publish)
    assert (message.id, message.user_id) == (9, "alice")
    assert message.events == events


def test_prices_decode() -> None:
    frame = _json({"type": "prices", "id": 10, "prices": [wire(tick("AAPL", "189.10"))]})

    message = decode_ingest_message(frame)

    assert message == Prices(id=10, prices=[tick("AAPL", "189.10")])


def test_decimal_strings_round_trip_exactly() -> None:
    frame = publish_frame([fill("f-1", price="187.20", qty="0.500")])

    message = decode_ingest_message(frame)
    assert isinstance(message, Publish)
    event = message.events[0]
    assert isinstance(event, FillEvent)
    out = wire(event)

    assert event.data.price == Decimal("187.20")
    assert str(event.data.price) == "187.20"
    assert (out["data"]["price"], out["data"]["qty"]) == ("187.20", "0.500")


# Decimal strings anywhere in the grammar's range: 1-15 digits, optionally 1-10 more after the point.
plain_decimals = st.builds(
    lambda sign, whole, fraction: sign + whole + (f".{fraction}" if fraction else ""),
    st.sampled_from(["", "-"]),
    st.from_regex(r"[0-9]{1,15}", fullmatch=True),
    st.one_of(st.just(""), st.from_regex(r"[0-9]{1,10}", fullmatch=True)),
)


def _publish_with_position_data(**changes: Any) -> bytes:
    item = wire(position(price="1.00"))
    del item["seq"]
    item["data"].update(changes)
    return _json({"type": "publish", "id": 9, "user_id": "alice", "events": [item]})


@PROPERTY
@given(plain_decimals)
def test_any_decimal_of_the_grammar_decodes_to_the_value_it_spells(price: str) -> None:
    message = decode_ingest_message(_publish_with_position_data(current_price=price))
    assert isinstance(message, Publish)
    got = message.events[0].data.current_price  # type: ignore[union-attr]

    assert got == Decimal(price), f"expected {price!r}, got {got!r}"
    assert not (got.is_signed() and got == 0), f"{price!r} decoded as a negative zero"


@pytest.mark.parametrize(
    "value", ["999999999999999.9999999999", "-999999999999999.9999999999", "0.0000000001", "0", "-5"]
)
def test_decimals_at_the_grammars_bounds_are_accepted(value: str) -> None:
    message = decode_ingest_message(_publish_with_position_data(qty=value))
    assert isinstance(message, Publish)

    assert message.events[0].data.qty == Decimal(value)  # type: ignore[union-attr]


@pytest.mark.parametrize(("value", "zero"), [("-0", "0"), ("-0.00", "0.00"), ("-000.0", "000.0")])
def test_minus_zero_decodes_as_the_zero_it_means(value: str, zero: str) -> None:
    message = decode_ingest_message(_publish_with_position_data(qty=value, unrealized_pl=value))
    assert isinstance(message, Publish)
    data = message.events[0].data
    out = wire(message.events[0])["data"]

    assert not data.qty.is_signed() and not data.unrealized_pl.is_signed()  # type: ignore[union-attr]
    assert (out["qty"], out["unrealized_pl"]) == (str(Decimal(zero)), str(Decimal(zero)))


@pytest.mark.parametrize(
    "value",
    [
        "1e30",  # defect 1: an exponent, which the engine could not quantize
        "1E-7",
        "1_000",  # defect 11: Decimal() takes underscores ...
        " 5",  # ... surrounding spaces ...
        "5 ",
        "\u0661\u0662",  # ... and Arabic-Indic digits ("١٢")
        "+5",
        ".5",
        "5.",
        "1.2.3",
        "-",
        "--5",
        "0x10",
        "1234567890123456",  # 16 digits before the point
        "1.12345678901",  # 11 after it
        "5\n",
    ],
)
def test_a_decimal_outside_the_grammar_is_invalid_message_naming_the_field(value: str) -> None:
    error = _decode_error(decode_ingest_message, _publish_with_fill_data(qty=value))

    assert (error.code, error.ref) == ("invalid_message", 9)
    assert "`$.events[0].data.qty`" in error.message and "not a plain decimal" in error.message, error.message
    assert "15 digits" in error.message, "the error says what a decimal must look like"


def test_a_price_tick_of_1e30_is_invalid_message_naming_the_tick() -> None:
    ticks = [wire(tick("AAPL", "189.10")), {"symbol": "HX", "price": "1e30", "ts": TS}]
    frame = _json({"type": "prices", "id": 10, "prices": ticks})

    error = _decode_error(decode_ingest_message, frame)

    assert (error.code, error.ref) == ("invalid_message", 10)
    assert "`$.prices[1].price`" in error.message


def test_an_account_with_cash_1e40_is_invalid_message_naming_the_field() -> None:
    item = wire(account())
    del item["seq"]
    item["data"]["cash"] = "1e40"
    frame = _json({"type": "publish", "id": 3, "user_id": "alice", "events": [item]})

    error = _decode_error(decode_ingest_message, frame)

    assert (error.code, error.ref) == ("invalid_message", 3)
    assert "`$.events[0].data.cash`" in error.message


def test_every_decimal_field_of_every_event_type_is_held_to_the_grammar() -> None:
    samples = {"position": position(), "order": order(), "account": account(), "fill": fill("f-1")}
    for kind, event in samples.items():
        for name in type(event.data)._decimals:  # type: ignore[attr-defined]
            item = wire(event)
            del item["seq"]
            item["data"][name] = "1e3"
            frame = _json({"type": "publish", "id": 1, "user_id": "alice", "events": [item]})

            error = _decode_error(decode_ingest_message, frame)

            assert f"`$.events[0].data.{name}`" in error.message, (kind, name, error.message)


@pytest.mark.parametrize("value", [187.2, 187, 0])
def test_json_number_for_money_in_publish_is_invalid_message(value: float) -> None:
    error = _decode_error(decode_ingest_message, _publish_with_fill_data(price=value))

    assert (error.code, error.ref) == ("invalid_message", 9)
    assert "$.events[0].data.price" in error.message


def test_json_number_for_a_price_tick_is_invalid_message() -> None:
    frame = _json({"type": "prices", "id": 10, "prices": [{"symbol": "AAPL", "price": 189.1, "ts": TS}]})

    error = _decode_error(decode_ingest_message, frame)

    assert (error.code, error.ref) == ("invalid_message", 10)
    assert "$.prices[0].price" in error.message


@pytest.mark.parametrize("value", ["NaN", "nan", "sNaN", "Infinity", "-Infinity", "inf"])
def test_nan_or_infinite_decimal_is_invalid_message(value: str) -> None:
    error = _decode_error(decode_ingest_message, _publish_with_fill_data(position_qty=value))

    assert (error.code, error.ref) == ("invalid_message", 9)


@pytest.mark.parametrize("value", ["abc", "", "1,5", "0x10"])
def test_a_string_that_is_not_a_decimal_is_invalid_message(value: str) -> None:
    error = _decode_error(decode_ingest_message, _publish_with_fill_data(price=value))

    assert error.code == "invalid_message"


@pytest.mark.parametrize(("field", "value"), [("qty", "0"), ("qty", "-1"), ("price", "0.00")])
def test_fill_qty_and_price_must_be_above_zero(field: str, value: str) -> None:
    error = _decode_error(decode_ingest_message, _publish_with_fill_data(**{field: value}))

    assert error.code == "invalid_message"
    assert field in error.message


@pytest.mark.parametrize(
    "timestamp",
    [
        "2026-01-04T14:03:11.120",  # no Z
        "2026-01-04T14:03:11Z",  # no millis
        "2026-01-04T14:03:11.12Z",  # two decimals
        "2026-01-04T14:03:11.120+00:00",  # offset instead of Z
        "2026-01-04 14:03:11.120Z",  # space instead of T
        "2026-13-04T14:03:11.120Z",  # month 13
        "2026-01-04T24:03:11.120Z",  # hour 24
        "2026-01-04T14:03:11.120z",  # lowercase z
    ],
)
def test_bad_event_timestamp_is_invalid_message(timestamp: str) -> None:
    item = wire(fill("f-1"))
    del item["seq"]
    item["ts"] = timestamp
    frame = _json({"type": "publish", "id": 9, "user_id": "alice", "events": [item]})

    error = _decode_error(decode_ingest_message, frame)

    assert (error.code, error.ref) == ("invalid_message", 9), f"{timestamp!r} was not rejected as expected"


@pytest.mark.parametrize("timestamp", ["2026-01-04T14:03:11.120Z", "2026-01-04T14:03:11.120123456Z"])
def test_millisecond_to_nanosecond_timestamps_are_accepted_unchanged(timestamp: str) -> None:
    message = decode_ingest_message(publish_frame([fill("f-1", at=timestamp)]))

    assert isinstance(message, Publish)
    assert message.events[0].ts == timestamp


def test_a_timestamp_with_a_trailing_newline_is_invalid_message() -> None:
    error = _decode_error(decode_ingest_message, publish_frame([fill("f-1", at=TS + "\n")]))

    assert error.code == "invalid_message"


@pytest.mark.parametrize("timestamp", ["2026-02-31T14:03:11.120Z", "2026-04-31T00:00:00.000Z"])
def test_an_impossible_calendar_date_is_invalid_message(timestamp: str) -> None:
    event = wire(fill("f-1"))
    del event["seq"]
    event["data"]["timestamp"] = timestamp
    frame = _json({"type": "publish", "id": 1, "user_id": "alice", "events": [event]})

    error = _decode_error(decode_ingest_message, frame)

    assert error.code == "invalid_message"
    assert "not a real date" in error.message


def test_publish_is_all_or_nothing_one_invalid_event_rejects_the_message() -> None:
    good = [wire(e) for e in (position(), fill("f-1"), account())]
    bad = wire(fill("f-2"))
    bad["data"]["price"] = "NaN"
    items = [*good[:2], bad, good[2]]
    for item in items:
        del item["seq"]
    frame = _json({"type": "publish", "id": 11, "user_id": "alice", "events": items})

    error = _decode_error(decode_ingest_message, frame)

    assert (error.code, error.ref) == ("invalid_message", 11)
    assert "$.events[2]" in error.message, f"expected the error to point at events[2], got {error.message}"


def test_publish_with_one_number_among_valid_events_is_rejected() -> None:
    items = [wire(e) for e in (position(), fill("f-1"))]
    items[1]["data"]["qty"] = 10
    for item in items:
        del item["seq"]
    frame = _json({"type": "publish", "id": 12, "user_id": "alice", "events": items})

    error = _decode_error(decode_ingest_message, frame)

    assert (error.code, error.ref) == ("invalid_message", 12)
    assert "$.events[1].data.qty" in error.message


def test_publish_without_events_is_invalid_message() -> None:
    frame = _json({"type": "publish", "id": 13, "user_id": "alice", "events": []})

    error = _decode_error(decode_ingest_message, frame)

    assert (error.code, error.ref) == ("invalid_message", 13)


def test_event_whose_channel_does_not_match_its_type_is_invalid_message() -> None:
    item = wire(fill("f-1"))
    item["channel"] = "positions"
    frame = _json({"type": "publish", "id": 14, "user_id": "alice", "events": [item]})

    error = _decode_error(decode_ingest_message, frame)

    assert error.code == "invalid_message"


def test_unknown_event_type_in_publish_is_invalid_message() -> None:
    item = wire(fill("f-1"))
    item["type"] = "dividend"
    frame = _json({"type": "publish", "id": 15, "user_id": "alice", "events": [item]})

    error = _decode_error(decode_ingest_message, frame)

    assert (error.code, error.ref) == ("invalid_message", 15)


@pytest.mark.parametrize("user_id", ["", "al ice", "a" * 65, "alice/../bob"])
def test_publish_for_an_invalid_user_id_is_invalid_message(user_id: str) -> None:
    frame = _json({"type": "publish", "id": 16, "user_id": user_id, "events": [wire(fill("f-1"))]})

    error = _decode_error(decode_ingest_message, frame)

    assert error.code == "invalid_message"


def test_a_client_message_on_the_ingest_stream_is_unknown_type() -> None:
    error = _decode_error(decode_ingest_message, '{"type": "subscribe", "id": 1}')

    assert (error.code, error.ref) == ("unknown_type", 1)


# ------------------------------------------------------------ server messages


def test_batch_round_trips_through_the_server_message_decoder() -> None:
    batch = Batch(
        epoch="e-1",
        from_seq=0,
        to_seq=5,
        server_time=TS,
        events=stamp([position(), position_closed(), order(), account(), fill("f-1")]),
    )

    got = server_message_decoder.decode(encode(batch))

    assert got == batch


def test_snapshot_leaves_out_channels_that_are_not_set() -> None:
    snapshot = Snapshot(epoch="e-1", seq=3, server_time=TS, positions=[position().data], account=None)

    got = wire(snapshot)

    assert got == {
        "type": "snapshot",
        "epoch": "e-1",
        "seq": 3,
        "server_time": TS,
        "positions": [wire(position().data)],
        "account": None,
    }


def test_event_envelope_has_seq_channel_type_ts_and_data() -> None:
    event = stamp([position()], start=1234)[0]

    got = wire(event)

    assert set(got) == {"seq", "channel", "type", "ts", "data"}
    assert (got["seq"], got["channel"], got["type"], got["ts"]) == (1235, "positions", "position", TS)


def test_an_ack_carries_duplicates_only_when_there_are_some() -> None:
    from alphaflow_live.protocol import Ack, ingest_reply_decoder

    plain = encode(Ack(id=9, seqs=[1, 2]))
    with_duplicates = encode(Ack(id=9, seqs=[], duplicates=["f-1", "f-2"]))

    assert plain == b'{"type":"ack","id":9,"seqs":[1,2]}'
    assert with_duplicates == b'{"type":"ack","id":9,"seqs":[],"duplicates":["f-1","f-2"]}'
    assert ingest_reply_decoder.decode(plain) == Ack(id=9, seqs=[1, 2], duplicates=[])


def test_error_message_omits_ref_when_unset() -> None:
    assert wire(Error(code="internal", message="boom")) == {
        "type": "error",
        "code": "internal",
        "message": "boom",
    }


# ---------------------------------------------------------------- timestamps


def test_format_timestamp_has_three_decimals_and_z() -> None:
    assert format_timestamp(1_767_535_391.12) == "2026-01-04T14:03:11.120Z"


def test_format_timestamp_of_a_whole_second_has_000_millis() -> None:
    assert format_timestamp(1_767_535_391.0) == "2026-01-04T14:03:11.000Z"


def test_format_timestamp_carries_rounded_up_millis_into_the_next_second() -> None:
    assert format_timestamp(1_767_535_391.9996) == "2026-01-04T14:03:12.000Z"


@PROPERTY
@given(st.floats(min_value=0, max_value=4_102_444_800, allow_nan=False, allow_infinity=False))
def test_format_timestamp_always_matches_the_protocol_pattern_within_half_a_millisecond(
    seconds: float,
) -> None:
    got = format_timestamp(seconds)

    assert re.fullmatch(TIMESTAMP_PATTERN.rstrip("$"), got), f"{got!r} does not match the protocol pattern"
    whole, millis = got[:-5], int(got[-4:-1])
    parsed = calendar.timegm(time.strptime(whole, "%Y-%m-%dT%H:%M:%S")) + millis / 1000
    assert abs(parsed - seconds) <= 0.0005 + 1e-6, f"{seconds} formatted as {got}"


# --------------------------------------------------------------- JSON Schema


def test_json_schema_describes_every_message_type() -> None:
    schema = json_schema()

    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    names = {ref["$ref"].rsplit("/", 1)[1] for ref in schema["oneOf"]}
    expected = {
        "Welcome",
        "Subscribed",
        "Snapshot",
        "Batch",
        "Heartbeat",
        "Pong",
        "Error",
        "Subscribe",
        "Unsubscribe",
        "Ping",
        "Publish",
        "Prices",
        "Ack",
        "SetStreaming",
        "GetStats",
        "Stats",
    }
    assert names == expected, f"missing {expected - names}, extra {names - expected}"
    assert names <= set(schema["$defs"])


def test_json_schema_states_decimals_as_strings_and_the_timestamp_pattern() -> None:
    defs = json_schema()["$defs"]

    price = defs["Fill"]["properties"]["price"]
    stamp_field = defs["Fill"]["properties"]["timestamp"]
    assert price["type"] == "string", f"expected a string type for decimals, got {price}"
    assert stamp_field["pattern"] == TIMESTAMP_PATTERN


def test_json_schema_is_json_serialisable() -> None:
    encoded = msgspec.json.encode(json_schema())

    assert msgspec.json.decode(encoded)["title"] == "AlphaFlow Live wire protocol v1"


def test_the_published_json_schema_is_the_one_the_code_exports() -> None:
    """docs/protocol.schema.json is what other services read; regenerate it with
    `alphaflow-live schema > docs/protocol.schema.json` when the wire schema changes."""
    import json
    from pathlib import Path

    from alphaflow_live.protocol import json_schema

    published = Path(__file__).resolve().parents[2] / "docs" / "protocol.schema.json"

    assert json.loads(published.read_text()) == json.loads(json.dumps(json_schema()))


def test_every_decimal_field_of_every_data_struct_is_checked_for_finiteness() -> None:
    import typing

    from alphaflow_live import protocol

    for cls in (protocol.Position, protocol.Order, protocol.Account, protocol.Fill, protocol.PriceTick):
        hints = typing.get_type_hints(cls, vars(protocol))
        decimals = {
            name
            for name in cls.__struct_fields__
            if hints[name] is Decimal or Decimal in typing.get_args(hints[name])
        }
        assert set(cls._decimals) == decimals, cls.__name__


def test_trusted_construction_skips_the_checks_only_inside_its_block() -> None:
    from alphaflow_live.protocol import PriceTick, trusted_construction

    with trusted_construction():
        PriceTick(symbol="AAPL", price=Decimal("NaN"), ts="2026-02-31T00:00:00.000Z")
    with pytest.raises(ValueError, match="finite"):
        PriceTick(symbol="AAPL", price=Decimal("NaN"), ts="2026-01-04T14:03:11.120Z")
    with pytest.raises(ValueError, match="real date"):
        PriceTick(symbol="AAPL", price=Decimal("1"), ts="2026-02-31T00:00:00.000Z")


def test_data_and_events_stay_out_of_the_cyclic_garbage_collector() -> None:
    import gc

    from alphaflow_live.protocol import ClosedPosition, PositionClosedEvent

    event = PositionClosedEvent(ts="2026-01-04T14:03:11.120Z", data=ClosedPosition(symbol="AAPL"))
    assert not gc.is_tracked(event) and not gc.is_tracked(event.data)


def test_a_batch_joined_from_encoded_events_is_byte_for_byte_the_encoded_batch() -> None:
    from alphaflow_live.protocol import Batch, encode_batch

    events = stamp([fill("f-1"), position(), account(), order(), position_closed()], start=41)
    batch = Batch(epoch="e-7f3a", from_seq=41, to_seq=46, server_time=TS, events=events)

    joined = encode_batch("e-7f3a", 41, 46, TS, [encode(e) for e in events])

    assert joined == encode(batch)
    assert encode_batch("e-1", 3, 3, TS, []) == encode(
        Batch(epoch="e-1", from_seq=3, to_seq=3, server_time=TS, events=[])
    )
