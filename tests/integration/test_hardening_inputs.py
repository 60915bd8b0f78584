"""No value that passes decoding can make the engine fail, and none that cannot gets in.

Each test is one of the defects of issue 14, against a real server: decimals
the engine could not quantize (1), nesting too deep to decode (6), lenient
decimals and the "-0" position (11), and a state dir an older build left with
values the engine cannot use.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from decimal import Decimal
from typing import Any

import pytest

from alphaflow_live.protocol import Ack, Error, Pong, PositionClosedEvent, encode
from alphaflow_server.sqlite_store import DB_NAME
from tests.support import events as ev
from tests.support.client import Publisher, StreamClient, open_ws, recv, rest_snapshot, send
from tests.support.server import ServerProcess, Tokens
from tests.support.state_files import set_book_cash

pytestmark = pytest.mark.timeout(90)


def as_json(event: Any) -> dict[str, Any]:
    """An event as the plain JSON object a publisher sends, ready to be spoiled."""
    item: dict[str, Any] = json.loads(encode(event))
    del item["seq"]
    return item


def spoiled(event: Any, field: str, value: str) -> dict[str, Any]:
    item = as_json(event)
    item["data"][field] = value
    return item


async def publish(publisher: Publisher, user_id: str, *events: dict[str, Any]) -> Ack | Error:
    return await publisher.request({"type": "publish", "id": 5, "user_id": user_id, "events": list(events)})


def assert_refused(reply: Ack | Error, where: str) -> None:
    assert isinstance(reply, Error), f"expected the value at {where} to be refused, got {reply}"
    assert (reply.code, reply.ref) == ("invalid_message", 5), reply
    assert f"`{where}`" in reply.message, f"expected the error to name {where}: {reply.message}"


def assert_no_engine_failure(server: ServerProcess) -> None:
    log = server.log()
    for sign in ("Traceback", "InvalidOperation", "remark_failed", "internal_error"):
        assert sign not in log, f"the server logged {sign!r}:\n{log[-3000:]}"


# ------------------------------------------------- defect 1: values the engine could not use


async def test_a_price_tick_of_1e30_is_refused_and_its_holders_go_on_trading_across_a_restart(
    start_server, tokens: Tokens
) -> None:
    server = start_server()
    publisher = await Publisher.connect(server.ws_base, tokens.service)
    await publisher.publish("alice", [ev.fill("hx-1", symbol="HX", qty="10", price="5.00")])

    reply = await publisher.request(
        {"type": "prices", "id": 5, "prices": [{"symbol": "HX", "price": "1e30", "ts": ev.TS}]}
    )
    later = await publisher.publish("alice", [ev.fill("hx-2", symbol="HX", qty="1", price="6.00")])
    await asyncio.to_thread(server.restart)
    after = await rest_snapshot(server.http_base, tokens.alice)

    assert_refused(reply, "$.prices[0].price")
    assert later, "a later fill of the holder is acknowledged"
    assert [(p.symbol, p.qty, p.current_price) for p in after.positions] == [("HX", Decimal(11), Decimal(5))]
    assert_no_engine_failure(server)


async def test_a_fill_of_qty_1e30_is_refused_and_the_users_later_fills_apply(
    start_server, tokens: Tokens
) -> None:
    server = start_server()
    publisher = await Publisher.connect(server.ws_base, tokens.service)

    reply = await publish(publisher, "alice", spoiled(ev.fill("big"), "qty", "1e30"))
    later = await publisher.publish("alice", [ev.fill("ok", qty="10", price="50.00")])
    snapshot = await rest_snapshot(server.http_base, tokens.alice)

    assert_refused(reply, "$.events[0].data.qty")
    assert later
    assert [(p.symbol, p.qty) for p in snapshot.positions] == [("AAPL", Decimal(10))]
    assert snapshot.account is not None and snapshot.account.cash == Decimal(-500)
    assert_no_engine_failure(server)


async def test_an_account_with_cash_1e40_is_refused_and_the_user_trades_on_after_a_restart(
    start_server, tokens: Tokens
) -> None:
    server = start_server()
    publisher = await Publisher.connect(server.ws_base, tokens.service)

    reply = await publish(publisher, "alice", spoiled(ev.account("1000.00"), "cash", "1e40"))
    await asyncio.to_thread(server.restart)
    publisher = await Publisher.connect(server.ws_base, tokens.service)
    later = await publisher.publish("alice", [ev.fill("after-restart", qty="2", price="10.00")])
    snapshot = await rest_snapshot(server.http_base, tokens.alice)

    assert_refused(reply, "$.events[0].data.cash")
    assert later
    assert snapshot.account is not None and snapshot.account.cash == Decimal(-20)
    assert_no_engine_failure(server)


async def test_values_at_the_grammars_bounds_are_accepted_and_streamed(start_server, tokens: Tokens) -> None:
    server = start_server()
    client = await StreamClient.connect(server.ws_base, tokens.alice)
    await client.subscribe()
    publisher = await Publisher.connect(server.ws_base, tokens.service)
    biggest = "999999999999999.9999999999"

    seqs = await publisher.publish("alice", [ev.fill("max", qty=biggest, price=biggest)])
    await publisher.prices([ev.tick("AAPL", biggest)])
    await client.pump_until_seq(seqs[-1])
    await asyncio.to_thread(server.restart)
    after = await rest_snapshot(server.http_base, tokens.alice)

    assert client.state.positions["AAPL"].market_value == Decimal("999999999999999999999999800000.0000")
    assert after.positions[0].market_value == client.state.positions["AAPL"].market_value
    assert_no_engine_failure(server)


# --------------------------------------------------------- defect 6: nesting too deep


def deeply_nested(depth: int) -> str:
    return '{"type": "ping", "id": 1, "x": ' + "[" * depth + "]" * depth + "}"


@pytest.mark.parametrize("depth", [5_000, 10_000])
async def test_nesting_too_deep_on_the_portfolio_stream_is_invalid_json_without_a_traceback(
    start_server, tokens: Tokens, depth: int
) -> None:
    server = start_server()
    client = await StreamClient.connect(server.ws_base, tokens.alice)

    await client.ws.send(deeply_nested(depth))
    reply = await recv(client.ws)
    await client.ws.send('{"type": "ping", "id": 2}')
    pong = await recv(client.ws)

    assert isinstance(reply, Error) and reply.code == "invalid_json", reply
    assert isinstance(pong, Pong) and pong.id == 2, "the connection stays open"
    assert "RecursionError" not in server.log() and "Traceback" not in server.log()


@pytest.mark.parametrize("opener", ["[", '{"a":'])
async def test_nesting_too_deep_on_the_ingest_stream_is_invalid_json_without_a_traceback(
    start_server, tokens: Tokens, opener: str
) -> None:
    server = start_server()
    publisher = await Publisher.connect(server.ws_base, tokens.service)
    closer = "]" if opener == "[" else "}"
    depth = 10_000 if opener == "[" else 5_000

    replies = []
    for frame in (opener * depth + "0" + closer * depth, deeply_nested(depth).replace("ping", "publish")):
        await publisher.ws.send(frame)
        replies.append(json.loads(await publisher.ws.recv()))
    after = await publisher.prices([ev.tick()])

    assert [(r["type"], r["code"]) for r in replies] == [("error", "invalid_json")] * 2, replies
    assert isinstance(after, Ack), "the connection stays open"
    assert "RecursionError" not in server.log() and "Traceback" not in server.log()


# ----------------------------------------------- defect 11: lenient decimals, the "-0" row


@pytest.mark.parametrize(
    "value", ["1_000", " 5", "\u0661\u0662"], ids=["underscore", "space", "arabic-indic"]
)
async def test_a_lenient_decimal_is_refused_naming_the_field_and_changes_nothing(
    shared_server, tokens: Tokens, value: str
) -> None:
    publisher = await Publisher.connect(shared_server.ws_base, tokens.service)

    fill_reply = await publish(publisher, "lenient", spoiled(ev.fill(), "qty", value))
    tick_reply = await publisher.request(
        {"type": "prices", "id": 5, "prices": [{"symbol": "AAPL", "price": value, "ts": ev.TS}]}
    )
    position_reply = await publish(
        publisher, "lenient", as_json(ev.position()), spoiled(ev.order(), "qty", value)
    )

    assert_refused(fill_reply, "$.events[0].data.qty")
    assert_refused(tick_reply, "$.prices[0].price")
    assert_refused(position_reply, "$.events[1].data.qty")


async def test_a_published_position_of_qty_minus_zero_is_closed_not_kept_as_a_row(
    start_server, tokens: Tokens
) -> None:
    server = start_server()
    client = await StreamClient.connect(server.ws_base, tokens.alice)
    await client.subscribe()
    publisher = await Publisher.connect(server.ws_base, tokens.service)
    await publisher.publish("alice", [ev.fill("z-1", qty="10")])

    seqs = await publisher.publish(
        "alice", [spoiled(ev.position("AAPL"), "qty", "-0"), spoiled(ev.position("MSFT"), "qty", "-0.00")]
    )
    await client.pump_until_seq(seqs[-1])
    snapshot = await rest_snapshot(server.http_base, tokens.alice)

    streamed = [e for b in client.batches for e in b.events if e.seq in seqs and e.channel == "positions"]
    assert [(type(e), e.data.symbol) for e in streamed] == [
        (PositionClosedEvent, "AAPL"),
        (PositionClosedEvent, "MSFT"),
    ]
    assert snapshot.positions == [], f"no row of qty 0 stays: {snapshot.positions}"
    assert client.state.positions == {}


# -------------------------------- a state dir an older build left with values it cannot use


async def test_the_server_starts_on_stored_values_an_older_build_accepted_and_serves_everyone_else(
    start_server, tokens: Tokens
) -> None:
    server = start_server()
    publisher = await Publisher.connect(server.ws_base, tokens.service)
    await publisher.publish("alice", [ev.fill("a-1", symbol="HX", qty="10", price="5.00")])
    await publisher.publish("bob", [ev.fill("b-1", qty="3", price="100.00")])
    await publisher.publish("carol", [ev.fill("c-1", symbol="MSFT", qty="1", price="10.00")])
    bob_before = await rest_snapshot(server.http_base, tokens.bob)
    await asyncio.to_thread(server.stop)
    # What builds before the decimal grammar stored: a tick of 1e30, an account with cash 1e40,
    # and (older still, before the finiteness check) a book whose cash is NaN.
    with sqlite3.connect(server.state_dir / DB_NAME) as db:
        db.execute("UPDATE prices SET price = '1e30' WHERE symbol = 'HX'")
        for user_id, cash in (("alice", "1E+40"), ("carol", "NaN")):
            set_book_cash(db, user_id, cash)

    await asyncio.to_thread(server.start)
    log = server.log()
    publisher = await Publisher.connect(server.ws_base, tokens.service)
    bob_after = await rest_snapshot(server.http_base, tokens.bob)
    bob_trades = await publisher.publish("bob", [ev.fill("b-2", qty="1", price="100.00")])
    alice_trades = await publisher.publish("alice", [ev.fill("a-2", symbol="HX", qty="1", price="6.00")])
    alice = await rest_snapshot(server.http_base, tokens.alice)

    assert "HX" in log and "carol" in log, f"the start names what it could not use:\n{log[-3000:]}"
    assert "Traceback" not in log
    assert (bob_after.epoch, bob_after.positions, bob_after.account) == (
        bob_before.epoch,
        bob_before.positions,
        bob_before.account,
    )
    assert bob_trades and alice_trades
    assert [(p.symbol, p.qty) for p in alice.positions] == [("HX", Decimal(11))]
    assert alice.account is not None and alice.account.cash == Decimal(10**40 - 6)


async def test_a_portfolio_connection_survives_a_burst_of_spoiled_publishes(
    start_server, tokens: Tokens
) -> None:
    """Every refusal above leaves the user's stream exactly as it was: no event, no gap."""
    server = start_server()
    client = await StreamClient.connect(server.ws_base, tokens.alice)
    await client.subscribe()
    publisher = await Publisher.connect(server.ws_base, tokens.service)
    for value in ("1e30", "1_000", " 5", "\u0661\u0662", "+1", "1E-7", "NaN"):
        assert isinstance(await publish(publisher, "alice", spoiled(ev.fill(), "price", value)), Error)
    seqs = await publisher.publish("alice", [ev.fill("fine")])
    await client.pump_until_seq(seqs[-1])

    assert seqs[0] == 1, "nothing refused took a seq"
    assert client.fill_ids == ["fine"]
    ws = await open_ws(server.ws_base, "/ws/portfolio", tokens.alice)
    await recv(ws)
    await send(ws, {"type": "ping", "id": 3})
    assert isinstance(await recv(ws), Pong)
    assert_no_engine_failure(server)
