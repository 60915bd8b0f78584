"""The ingest stream: validated, all-or-nothing publishes acknowledged with seqs."""

from __future__ import annotations

import asyncio
import json
import signal
from decimal import Decimal
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
        (lambda e: e["data"].__setitem__("price", "NaN"), "not a plain decimal"),
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


async def publish_for_ack(publisher: Publisher, user_id: str, events: list[Any]) -> Ack:
    reply = await publisher.request({"type": "publish", "id": 7, "user_id": user_id, "events": events})
    assert isinstance(reply, Ack), f"publish refused: {reply}"
    return reply


async def test_a_re_sent_fill_changes_nothing_and_the_ack_names_it_10_10_13_13(
    start_server, tokens: Tokens
) -> None:
    """Defect 2 as measured: the position went 10 → 20 → 26 → 19 and cash to −915, while the
    fills list deduplicated, so the snapshot contradicted itself."""
    server = start_server()
    publisher = await Publisher.connect(server.ws_base, tokens.service)
    f1 = as_json(ev.fill("f1", qty="10", price="50"))
    f2 = as_json(ev.fill("f2", qty="3", price="50"))
    resent_f1 = as_json(ev.fill("f1", side="sell", qty="7", price="55"))

    qtys, acks = [], []
    for events in ([f1], [f1], [f2, f2], [resent_f1]):
        acks.append(await publish_for_ack(publisher, "alice", events))
        snapshot = await rest_snapshot(server.http_base, tokens.alice)
        qtys.append(snapshot.positions[0].qty if snapshot.positions else None)

    assert qtys == [Decimal(10), Decimal(10), Decimal(13), Decimal(13)]
    assert [a.duplicates for a in acks] == [[], ["f1"], ["f2"], ["f1"]]
    assert acks[1].seqs == [] and acks[3].seqs == [], "a publish of duplicates alone has no seqs"
    assert snapshot.account is not None and snapshot.account.cash == Decimal(-650)
    assert [f.id for f in snapshot.fills] == ["f1", "f2"]


async def test_a_fill_re_sent_after_a_kill_and_restart_is_still_a_duplicate(
    start_server, tokens: Tokens
) -> None:
    server = start_server()
    publisher = await Publisher.connect(server.ws_base, tokens.service)
    await publish_for_ack(publisher, "alice", [as_json(ev.fill("k1", qty="10", price="50"))])
    before = await rest_snapshot(server.http_base, tokens.alice)

    await asyncio.to_thread(server.stop, signal.SIGKILL)
    await asyncio.to_thread(server.start)
    publisher = await Publisher.connect(server.ws_base, tokens.service)
    again = await publish_for_ack(publisher, "alice", [as_json(ev.fill("k1", qty="10", price="50"))])
    after = await rest_snapshot(server.http_base, tokens.alice)

    assert (again.seqs, again.duplicates) == ([], ["k1"])
    assert (after.seq, after.positions, after.account) == (before.seq, before.positions, before.account)
