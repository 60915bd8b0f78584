"""The ingest stream: validated, all-or-nothing publishes acknowledged with seqs."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest

from alphaflow_live.protocol import Ack, Error, encode
from tests.support import events as ev
from tests.support.client import Publisher, StreamClient, rest_snapshot, send
from tests.support.server import Tokens

pytestmark = pytest.mark.timeout(60)


def as_json(event: msgspec.Struct) -> dict[str, Any]:
    """An event as the plain JSON object a publisher sends, ready to be spoiled."""
    result: dict[str, Any] = json.loads(encode(event))
    return result


async def test_a_publish_is_acknowledged_with_the_seqs_it_was_given(start_server, tokens: Tokens) -> None:
    server = start_server()
    publisher = await Publisher.connect(server.ws_base, tokens.service)

    first = await publisher.publish("alice", [ev.fill(), ev.position()])
    second = await publisher.publish("alice", [ev.account()])
    other_user = await publisher.publish("bob", [ev.account()])

    # fill, its derived position, the published position, then the account they changed
    assert (first, second, other_user) == ([1, 2, 3, 4], [5], [1])


async def test_one_invalid_event_rejects_the_whole_publish_and_changes_nothing(
    start_server, tokens: Tokens
) -> None:
    server = start_server()
    publisher = await Publisher.connect(server.ws_base, tokens.service)
    good = as_json(ev.fill("good"))
    bad = as_json(ev.fill("bad"))
    bad["data"]["price"] = "not-a-price"

    reply = await publisher.request({"type": "publish", "id": 3, "user_id": "alice", "events": [good, bad]})
    snapshot = await rest_snapshot(server.http_base, tokens.alice)

    assert isinstance(reply, Error) and (reply.code, reply.ref) == ("invalid_message", 3)
    assert "events[1]" in reply.message
    assert snapshot.seq == 0 and snapshot.fills == []


@pytest.mark.parametrize(
    ("mutate", "fragment"),
    [
        (lambda e: e["data"].__setitem__("qty", 10), "decimal strings"),
        (lambda e: e["data"].__setitem__("price", "NaN"), "finite"),
        (lambda e: e["data"].__setitem__("price", "-1"), "above zero"),
        (lambda e: e.__setitem__("ts", "2026-01-04 14:03:11"), "ts"),
        (lambda e: e.__setitem__("ts", "2026-01-04T14:03:11Z"), "ts"),
        (lambda e: e.__setitem__("channel", "orders"), "channel"),
        (lambda e: e.__setitem__("type", "dividend"), "type"),
        (lambda e: e["data"].pop("symbol"), "symbol"),
    ],
)
async def test_invalid_events_are_refused_with_a_clear_error(
    shared_server, tokens: Tokens, mutate, fragment
) -> None:
    publisher = await Publisher.connect(shared_server.ws_base, tokens.service)
    event = as_json(ev.fill())
    mutate(event)

    reply = await publisher.request({"type": "publish", "id": 1, "user_id": "nobody", "events": [event]})

    assert isinstance(reply, Error) and reply.code == "invalid_message", reply
    assert fragment in reply.message


async def test_a_publish_for_an_invalid_user_id_is_refused(shared_server, tokens: Tokens) -> None:
    publisher = await Publisher.connect(shared_server.ws_base, tokens.service)

    reply = await publisher.request(
        {"type": "publish", "id": 1, "user_id": "../etc", "events": [as_json(ev.fill())]}
    )

    assert isinstance(reply, Error) and reply.code == "invalid_message"


async def test_an_unknown_ingest_type_gets_unknown_type_and_the_stream_stays_open(
    shared_server, tokens
) -> None:
    publisher = await Publisher.connect(shared_server.ws_base, tokens.service)

    reply = await publisher.request({"type": "subscribe", "id": 4})
    again = await publisher.prices([ev.tick()])

    assert isinstance(reply, Error) and (reply.code, reply.ref) == ("unknown_type", 4)
    assert isinstance(again, Ack)


async def test_prices_are_validated_and_acknowledged(shared_server, tokens: Tokens) -> None:
    publisher = await Publisher.connect(shared_server.ws_base, tokens.service)

    ok = await publisher.prices([ev.tick("AAPL", "189.10"), ev.tick("MSFT", "410.00")])
    bad = await publisher.request(
        {"type": "prices", "id": 2, "prices": [{"symbol": "AAPL", "price": 189.1, "ts": ev.TS}]}
    )

    assert isinstance(ok, Ack) and ok.seqs == []
    assert isinstance(bad, Error) and "decimal strings" in bad.message


async def test_published_events_keep_their_source_timestamp(start_server, tokens: Tokens) -> None:
    server = start_server()
    client = await StreamClient.connect(server.ws_base, tokens.alice)
    await client.subscribe()
    publisher = await Publisher.connect(server.ws_base, tokens.service)
    source_ts = "2026-03-01T09:30:00.123456Z"

    await publisher.publish("alice", [ev.fill(at=source_ts)])
    batch = await client.pump_one()

    assert batch.events[0].ts == source_ts


async def test_a_user_token_cannot_publish(shared_server, tokens: Tokens) -> None:
    from tests.support.client import auth, refusal

    status, body = await refusal(shared_server.ws_base, "/ws/ingest", auth(tokens.alice))

    assert (status, body["error"]) == (403, "wrong_role")


async def test_binary_frames_on_ingest_get_an_error(shared_server, tokens: Tokens) -> None:
    publisher = await Publisher.connect(shared_server.ws_base, tokens.service)

    await publisher.ws.send(b"{}")
    reply = await publisher.ws.recv()

    assert json.loads(reply)["code"] == "invalid_message"
    await send(
        publisher.ws, {"type": "prices", "id": 1, "prices": [{"symbol": "A", "price": "1", "ts": ev.TS}]}
    )
    assert json.loads(await publisher.ws.recv())["type"] == "ack"
