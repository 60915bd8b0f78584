"""The fake Alpaca broker, checked with alpaca-py's real clients pointed at it via ``url_override``.

alpaca-py's streams are run the way a server embeds them: ``await stream._run_forever()`` as a
task on the running loop, stopped with ``await stream.stop_ws()``; their blocking
``subscribe_*``/``unsubscribe_*`` go through ``asyncio.to_thread``. alpaca-py is imported inside
the tests: importing any of ``alpaca.trading`` or ``alpaca.data.live`` imports websockets.legacy,
whose DeprecationWarning then falls under this module's filter instead of into collection.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Coroutine, Iterator
from typing import TYPE_CHECKING, Any

import msgpack
import pytest

from tests.support.fake_alpaca import FakeAlpaca

if TYPE_CHECKING:
    from alpaca.trading.client import TradingClient

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.filterwarnings("ignore:websockets.legacy is deprecated:DeprecationWarning"),
]

# alpaca-py's streams wait up to 5 s in recv() before they look at a stop request.
STOP_TIMEOUT = 10.0


@pytest.fixture
def fake() -> Iterator[FakeAlpaca]:
    with FakeAlpaca() as fake:
        yield fake


def client(fake: FakeAlpaca, key_id: str | None = None, secret: str | None = None) -> TradingClient:
    from alpaca.trading.client import TradingClient

    return TradingClient(
        key_id or fake.key_id, secret or fake.secret, paper=True, url_override=fake.trading_url
    )


@contextlib.asynccontextmanager
async def running(stream: Any) -> AsyncIterator[asyncio.Task[None]]:
    """Run an alpaca-py stream on this loop; on exit stop it and wait for ``_run_forever`` to end."""
    runner: Coroutine[Any, Any, None] = stream._run_forever()
    task = asyncio.create_task(runner)
    try:
        yield task
    finally:
        await stream.stop_ws()
        await asyncio.wait_for(task, STOP_TIMEOUT)


def test_rest_json_parses_into_alpaca_models(fake: FakeAlpaca) -> None:
    from alpaca.trading.enums import AccountStatus, OrderSide, OrderStatus, PositionSide, QueryOrderStatus
    from alpaca.trading.requests import GetOrdersRequest

    fake.set_account(cash=12345.67, equity="23456.78", long_market_value=1872)
    fake.set_position("AAPL", 10, 180, 187.2, lastday_price=185)
    fake.set_position("TSLA", -5, "250", "240")
    open_order = fake.add_order(symbol="MSFT", qty=5, type="limit", limit_price=400.5)
    fake.add_order(symbol="AAPL", status="filled", filled_qty=10, filled_avg_price=180)
    trading = client(fake)

    account = trading.get_account()
    assert account.status == AccountStatus.ACTIVE
    assert (account.cash, account.equity, account.portfolio_value) == ("12345.67", "23456.78", "23456.78")
    assert account.long_market_value == "1872"

    aapl, tsla = trading.get_all_positions()
    assert (aapl.symbol, aapl.qty, aapl.side, aapl.market_value) == ("AAPL", "10", PositionSide.LONG, "1872")
    assert (aapl.unrealized_pl, aapl.unrealized_intraday_pl, aapl.lastday_price) == ("72", "22", "185")
    assert (tsla.qty, tsla.side, tsla.unrealized_pl) == ("-5", PositionSide.SHORT, "50")

    orders = trading.get_orders(GetOrdersRequest(status=QueryOrderStatus.OPEN))
    assert [str(o.id) for o in orders] == [open_order["id"]]
    assert (orders[0].symbol, orders[0].side, orders[0].status) == ("MSFT", OrderSide.BUY, OrderStatus.NEW)
    assert (orders[0].qty, orders[0].limit_price, orders[0].filled_qty) == ("5", "400.5", "0")
    closed = trading.get_orders(GetOrdersRequest(status=QueryOrderStatus.CLOSED))
    assert [o.status for o in closed] == [OrderStatus.FILLED]

    fake.remove_position("TSLA")
    assert [p.symbol for p in trading.get_all_positions()] == ["AAPL"]
    assert fake.rest_calls == ["/v2/account", "/v2/positions", "/v2/orders", "/v2/orders", "/v2/positions"]


def test_bad_keys_get_401(fake: FakeAlpaca) -> None:
    from alpaca.common.exceptions import APIError

    for key_id, secret in [("PKWRONG", fake.secret), (fake.key_id, "wrong-secret")]:
        with pytest.raises(APIError) as raised:
            client(fake, key_id, secret).get_account()
        assert raised.value.status_code == 401
        assert raised.value.code == 40110000
        assert fake.secret not in str(raised.value)
    assert fake.auth_failures["rest"] == 2


async def test_trading_stream_delivers_updates_and_survives_a_drop(fake: FakeAlpaca) -> None:
    from alpaca.trading.enums import OrderStatus
    from alpaca.trading.models import TradeUpdate
    from alpaca.trading.stream import TradingStream

    stream = TradingStream(fake.key_id, fake.secret, paper=True, raw_data=True, url_override=fake.stream_url)
    updates: list[dict[str, Any]] = []

    async def on_update(update: dict[str, Any]) -> None:
        updates.append(update)

    stream.subscribe_trade_updates(on_update)
    async with running(stream):
        await fake.async_wait_for(lambda: fake.trading_listeners == 1, what="the stream to listen")
        assert fake.trading_connections == 1

        order = fake.order_json("AAPL", "buy", 10, status="filled", filled_qty=10, filled_avg_price=187.2)
        assert fake.trade_update("fill", order, position_qty=10) == 1
        await fake.async_wait_for(lambda: updates, what="the fill")
        fill = updates[0]
        assert fill["stream"] == "trade_updates"
        assert fill["data"]["event"] == "fill"
        assert (fill["data"]["price"], fill["data"]["qty"], fill["data"]["position_qty"]) == (
            "187.2",
            "10",
            "10",
        )
        assert fill["data"]["order"]["id"] == order["id"]
        parsed = TradeUpdate(**fill["data"])  # what raw_data=False would hand over
        assert (parsed.price, parsed.qty, parsed.order.status) == (187.2, 10, OrderStatus.FILLED)

        assert fake.drop_trading_stream() == 1
        await fake.async_wait_for(
            lambda: fake.trading_connections == 2 and fake.trading_listeners == 1, what="a reconnect"
        )
        cancel = fake.order_json("MSFT", "sell", 3, status="canceled")
        assert fake.trade_update("canceled", cancel) == 1
        assert fake.redeliver_last() == 1
        await fake.async_wait_for(lambda: len(updates) == 3, what="the update after the reconnect")
        assert [u["data"]["event"] for u in updates] == ["fill", "canceled", "canceled"]
        assert updates[1] == updates[2]
        assert "price" not in updates[1]["data"]
        started = time.monotonic()
    assert time.monotonic() - started < STOP_TIMEOUT
    await fake.async_wait_for(lambda: fake.trading_listeners == 0, what="the stream to close")


async def test_streams_refuse_bad_keys(fake: FakeAlpaca) -> None:
    from alpaca.data.enums import DataFeed
    from alpaca.data.live import StockDataStream
    from alpaca.trading.stream import TradingStream

    async def ignore(_: Any) -> None:
        return None

    trading = TradingStream("PKWRONG", "wrong", raw_data=True, url_override=fake.stream_url)
    trading.subscribe_trade_updates(ignore)
    data = StockDataStream("PKWRONG", "wrong", raw_data=True, feed=DataFeed.IEX, url_override=fake.data_url)
    data.subscribe_trades(ignore, "AAPL")
    async with running(trading), running(data):
        await fake.async_wait_for(
            lambda: fake.auth_failures["trading"] and fake.auth_failures["data"], what="both refusals"
        )
    assert (fake.trading_connections, fake.data_connections, fake.data_subscriptions) == (0, 0, set())


async def test_data_stream_delivers_subscribed_trades(fake: FakeAlpaca) -> None:
    from alpaca.data.enums import DataFeed
    from alpaca.data.live import StockDataStream

    stream = StockDataStream(
        fake.key_id, fake.secret, raw_data=True, feed=DataFeed.IEX, url_override=fake.data_url
    )
    trades: list[dict[str, Any]] = []

    async def on_trade(trade: dict[str, Any]) -> None:
        trades.append(trade)

    stream.subscribe_trades(on_trade, "AAPL")  # a handler must exist before _run_forever
    async with running(stream):
        await fake.async_wait_for(lambda: fake.data_subscriptions == {"AAPL"}, what="the subscription")
        assert fake.trade("MSFT", 420.0) == 0
        assert fake.trade("AAPL", 191.25, 30) == 1
        await fake.async_wait_for(lambda: trades, what="the AAPL trade")
        trade = trades[0]
        assert (trade["T"], trade["S"], trade["p"], trade["s"]) == ("t", "AAPL", 191.25, 30)
        assert isinstance(trade["p"], float)
        assert isinstance(trade["t"], msgpack.Timestamp)

        await asyncio.to_thread(stream.subscribe_trades, on_trade, "MSFT")
        await fake.async_wait_for(lambda: fake.data_subscriptions == {"AAPL", "MSFT"}, what="MSFT added")
        await asyncio.to_thread(stream.unsubscribe_trades, "AAPL")
        await fake.async_wait_for(lambda: fake.data_subscriptions == {"MSFT"}, what="AAPL removed")
        assert fake.trade("AAPL", 192.0) == 0

        assert fake.drop_data_stream() == 1
        await fake.async_wait_for(
            lambda: fake.data_connections == 2 and fake.data_subscriptions == {"MSFT"}, what="a resubscribe"
        )
        assert fake.trade("MSFT", 421.5) == 1
        await fake.async_wait_for(lambda: len(trades) == 2, what="the MSFT trade")
        assert (trades[1]["S"], trades[1]["p"]) == ("MSFT", 421.5)
    await fake.async_wait_for(lambda: not fake.data_subscriptions, what="the stream to close")
