"""The Alpaca source against a fake Alpaca that alpaca-py's real clients talk to."""

from __future__ import annotations

import asyncio
import json
from decimal import Decimal

import pytest

from tests.support.client import http_get, rest_snapshot
from tests.support.fake_alpaca import DEFAULT_KEY_ID, DEFAULT_SECRET, FakeAlpaca, order_json
from tests.support.server import Tokens
from tests.support.wait import async_wait_until

pytestmark = pytest.mark.timeout(90)

D = Decimal


def start_alpaca_server(
    start_server, fake: FakeAlpaca, *, key: str = DEFAULT_KEY_ID, secret: str = DEFAULT_SECRET
):
    return start_server(
        "--source",
        "alpaca",
        "--alpaca-user",
        "alice",
        "--batch-window-ms",
        "10",
        # Only the reconciles at start and after a reconnect: a periodic one would race the
        # fake's REST state against the fills these tests push.
        "--alpaca-reconcile-s",
        "3600",
        "--alpaca-trading-url",
        fake.trading_url,
        "--alpaca-stream-url",
        fake.stream_url,
        "--alpaca-data-url",
        fake.data_url,
        env={"APCA_API_KEY_ID": key, "APCA_API_SECRET_KEY": secret},
    )


async def position_of(server, tokens: Tokens, symbol: str, predicate=lambda p: True, timeout: float = 20):
    async def found():
        snapshot = await rest_snapshot(server.http_base, tokens.alice)
        position = next((p for p in snapshot.positions if p.symbol == symbol), None)
        return (position, snapshot) if position is not None and predicate(position) else None

    return await async_wait_until(found, timeout=timeout, what=f"{symbol} to reach the server's snapshot")


async def settled(server, fake: FakeAlpaca, tokens: Tokens) -> None:
    """Wait until both start-up reconciles (at start, and when the trade stream connects) have
    been applied, so that neither can overwrite what a test pushes next with the fake's REST state."""
    await asyncio.to_thread(fake.wait_for, lambda: fake.trading_listeners >= 1, 20, "the trading stream")

    async def both_applied() -> bool:
        # Each reconcile here publishes the AAPL position and the account: two events.
        return (await rest_snapshot(server.http_base, tokens.alice)).seq >= 4

    await async_wait_until(both_applied, timeout=20, what="the reconcile after the stream connected")


@pytest.fixture
def fake() -> FakeAlpaca:
    with FakeAlpaca() as fake:
        fake.set_account(
            cash="10000.00", equity="11872.00", last_equity="11800.00", long_market_value="1872.00"
        )
        fake.set_position("AAPL", 10, "187.20", "187.20")
        yield fake


async def test_positions_and_account_from_rest_appear_in_the_snapshot(
    start_server, fake, tokens: Tokens
) -> None:
    server = start_alpaca_server(start_server, fake)

    position, snapshot = await position_of(server, tokens, "AAPL")

    assert (position.qty, position.avg_entry_price, position.side) == (D("10"), D("187.20"), "long")
    assert snapshot.account is not None and snapshot.account.cash == D("10000.00")


async def test_a_fill_moves_quantity_average_price_and_cash_exactly(
    start_server, fake, tokens: Tokens
) -> None:
    server = start_alpaca_server(start_server, fake)
    await settled(server, fake, tokens)

    order = order_json("AAPL", "buy", 5, status="filled", filled_avg_price="190.00")
    fake.trade_update("fill", order, execution_id="ex-1", qty="5", price="190.00", position_qty="15")
    position, snapshot = await position_of(server, tokens, "AAPL", lambda p: p.qty == 15)

    assert position.avg_entry_price == D("188.133333")  # (10 x 187.20 + 5 x 190.00) / 15
    assert snapshot.account is not None and snapshot.account.cash == D("9050.0000")  # 10000.00 - 950.00
    assert [f.id for f in snapshot.fills] == ["ex-1"]
    assert any(o.id == order["id"] and o.status == "filled" for o in snapshot.orders)


async def test_a_market_data_trade_recomputes_unrealized_pl(start_server, fake, tokens: Tokens) -> None:
    server = start_alpaca_server(start_server, fake)
    await position_of(server, tokens, "AAPL")
    await asyncio.to_thread(
        fake.wait_for, lambda: "AAPL" in fake.data_subscriptions, 20, "the AAPL subscription"
    )

    fake.trade("AAPL", 191.1)
    position, _ = await position_of(server, tokens, "AAPL", lambda p: p.current_price == D("191.1"))

    assert position.unrealized_pl == D("39.0000")  # 10 x (191.10 - 187.20)
    assert position.market_value == D("1911.0000")


async def test_a_fill_missed_while_the_stream_was_down_arrives_by_reconcile(
    start_server, fake, tokens
) -> None:
    server = start_alpaca_server(start_server, fake)
    await settled(server, fake, tokens)
    connections = fake.trading_connections

    fake.drop_trading_stream()
    fake.set_position("AAPL", 25, "188.00", "189.00")  # filled while nobody listened: only REST knows
    await asyncio.to_thread(fake.wait_for, lambda: fake.trading_connections > connections, 30, "a reconnect")
    position, _ = await position_of(server, tokens, "AAPL", lambda p: p.qty == 25)

    assert position.avg_entry_price == D("188.00")


async def test_a_redelivered_execution_is_applied_once(start_server, fake, tokens: Tokens) -> None:
    server = start_alpaca_server(start_server, fake)
    await settled(server, fake, tokens)

    order = order_json("AAPL", "buy", 2, status="filled", filled_avg_price="190.00")
    fake.set_position("AAPL", 12, "187.666667", "190.00")  # what the broker's REST says afterwards
    fake.trade_update("fill", order, execution_id="ex-7", qty="2", price="190.00", position_qty="12")
    await position_of(server, tokens, "AAPL", lambda p: p.qty == 12)
    fake.redeliver_last()
    fake.trade_update(
        "new", order_json("MSFT", "buy", 1)
    )  # a later update, to know the redelivery was handled
    await async_wait_until(
        lambda: _has_order(server, tokens, "MSFT"), timeout=20, what="the update after the redelivery"
    )
    position, snapshot = await position_of(server, tokens, "AAPL")

    assert position.qty == 12, "the execution moved the position once"
    assert [f.id for f in snapshot.fills].count("ex-7") == 1


async def _has_order(server, tokens: Tokens, symbol: str) -> bool:
    snapshot = await rest_snapshot(server.http_base, tokens.alice)
    return any(o.symbol == symbol for o in snapshot.orders)


async def test_bad_keys_degrade_health_and_the_server_keeps_serving(
    start_server, fake, tokens: Tokens
) -> None:
    wrong_secret = "definitely-wrong-secret"
    server = start_alpaca_server(start_server, fake, secret=wrong_secret)

    async def degraded() -> dict | None:
        status, body, _ = await asyncio.to_thread(http_get, f"{server.http_base}/healthz")
        health = json.loads(body)
        return health if status == 200 and health["status"] == "degraded" else None

    health = await async_wait_until(degraded, timeout=20, what="health to turn degraded")
    snapshot = await rest_snapshot(server.http_base, tokens.alice)

    assert any("APCA_API_KEY_ID" in reason and "401" in reason for reason in health["reasons"])
    assert snapshot.seq == 0, "still serving (the last known state, empty here)"
    log = server.log()
    assert "APCA_API_SECRET_KEY" in log
    assert wrong_secret not in log and DEFAULT_KEY_ID not in log
    assert wrong_secret not in json.dumps(health)
