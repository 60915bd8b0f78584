"""The kernel-side client against a real server: convergence, zero loss, fallbacks."""

from __future__ import annotations

import asyncio
import logging
import random
import signal

import pytest

import alphaflow_live as afl
from alphaflow_live.client import AuthError
from tests.support import events as ev
from tests.support.admin import admin_request
from tests.support.client import Publisher, rest_snapshot, same_portfolio, state_of
from tests.support.proxy import CuttableProxy
from tests.support.server import Tokens

pytestmark = pytest.mark.timeout(120)

FAST = {"backoff_base_s": 0.05, "backoff_cap_s": 0.5, "poll_interval_s": 0.2, "connect_timeout_s": 5}


def connect(base: str, token: str, **options: object) -> afl.PortfolioStream:
    return afl.connect(f"{base}/ws/portfolio", token, **{**FAST, **options})


async def converged(live: afl.PortfolioStream, http_base: str, token: str, timeout: float = 20) -> None:
    """Wait until the client holds exactly the server's REST snapshot."""
    rest = await rest_snapshot(http_base, token)
    expected = state_of(rest)

    def same(live: afl.PortfolioStream) -> bool:
        with live.reading() as state:
            return state.seq == rest.seq and same_portfolio(state, expected)

    await live.until(same, timeout=timeout)


def fill_ids(live: afl.PortfolioStream) -> list[str]:
    return list(live.fills.index)


async def publish_fills(feed: Publisher, ids: list[str]) -> None:
    for fill_id in ids:
        side = random.choice(["buy", "sell"])
        event = ev.fill(
            fill_id, symbol=random.choice(["AAPL", "MSFT", "TSLA"]), qty=str(random.randint(1, 9))
        )
        event.data.side = side
        await feed.publish("alice", [event, ev.order(f"o-{fill_id}", "filled")])


async def test_streaming_converges_to_the_servers_snapshot(start_server, tokens: Tokens) -> None:
    server = start_server("--batch-window-ms", "20")
    feed = await Publisher.connect(server.ws_base, tokens.service)
    with connect(server.ws_base, tokens.alice) as live:
        await live.until(lambda live: live.status == "live")
        ids = [f"s-{i}" for i in range(200)]
        await publish_fills(feed, ids)
        await converged(live, server.http_base, tokens.alice)

        assert fill_ids(live) == ids, "every fill once, in order"
        assert live.freshness == "live"
        assert live.positions.index.is_unique and live.positions["qty"].dtype == "float64"
        assert str(live.positions["updated_at"].dtype) == "datetime64[ns, UTC]"
        assert live.stats()["latency_ms"]["count"] > 0


async def test_twenty_random_cuts_lose_nothing_and_apply_nothing_twice(start_server, tokens: Tokens) -> None:
    server = start_server("--batch-window-ms", "10")
    feed = await Publisher.connect(server.ws_base, tokens.service)
    rng = random.Random(20)
    with CuttableProxy(server.port) as proxy:
        live = connect(f"ws://127.0.0.1:{proxy.port}", tokens.alice)
        await live.until(lambda live: live.status == "live")
        ids = [f"c-{i}" for i in range(400)]

        async def cut_randomly() -> None:
            for _ in range(20):
                await asyncio.sleep(rng.uniform(0.02, 0.15))
                proxy.cut()

        await asyncio.gather(publish_fills(feed, ids), cut_randomly())
        await converged(live, server.http_base, tokens.alice, timeout=30)
        live.close()

    assert proxy.cuts == 20
    assert live.counters["connections"] > 5, "the cuts really forced reconnects"
    assert fill_ids(live) == ids, "no fill lost, none applied twice"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
async def test_the_client_resumes_across_a_server_restart(start_server, tokens: Tokens, sig: int) -> None:
    server = start_server("--batch-window-ms", "10")
    feed = await Publisher.connect(server.ws_base, tokens.service)
    with connect(server.ws_base, tokens.alice) as live:
        await live.until(lambda live: live.status == "live")
        await publish_fills(feed, [f"r-{i}" for i in range(50)])
        epoch = live.epoch

        await asyncio.to_thread(server.stop, sig)
        await live.until(lambda live: live.status in ("reconnecting", "polling", "offline"))
        await asyncio.to_thread(server.start)
        feed = await Publisher.connect(server.ws_base, tokens.service)
        await publish_fills(feed, [f"r-{i}" for i in range(50, 100)])
        await live.until(lambda live: live.status == "live", timeout=20)
        await converged(live, server.http_base, tokens.alice)

        assert live.epoch == epoch
        assert fill_ids(live) == [f"r-{i}" for i in range(100)]


async def test_streaming_switched_off_falls_back_to_polling_and_returns(start_server, tokens: Tokens) -> None:
    server = start_server("--batch-window-ms", "10")
    feed = await Publisher.connect(server.ws_base, tokens.service)
    with connect(server.ws_base, tokens.alice) as live:
        await live.until(lambda live: live.status == "live")
        await publish_fills(feed, [f"p-{i}" for i in range(20)])

        await admin_request(server, tokens, {"type": "set_streaming", "id": 1, "enabled": False})
        await live.until(lambda live: live.status == "polling", timeout=10)
        await publish_fills(feed, [f"p-{i}" for i in range(20, 40)])
        await converged(live, server.http_base, tokens.alice)
        assert live.status == "polling", "the data came by polling"

        await admin_request(server, tokens, {"type": "set_streaming", "id": 2, "enabled": True})
        await live.until(lambda live: live.status == "live", timeout=20)
        await publish_fills(feed, [f"p-{i}" for i in range(40, 60)])
        await converged(live, server.http_base, tokens.alice)

        assert fill_ids(live) == [f"p-{i}" for i in range(60)]
        assert live.counters["polls"] >= 1


async def test_an_unknown_token_stops_with_a_clear_error_and_no_retries(start_server, tokens: Tokens) -> None:
    server = start_server()
    live = connect(server.ws_base, "afl_wrong")

    with pytest.raises(AuthError, match="HTTP 401"):
        await live.until(lambda live: False, timeout=10)

    assert live.status == "offline"
    assert live.counters["reconnects"] == 0
    assert "afl_wrong" not in repr(live)
    live.close()


def test_connect_without_a_token_says_how_to_get_one(monkeypatch) -> None:
    monkeypatch.delenv("ALPHAFLOW_TOKEN", raising=False)

    with pytest.raises(AuthError, match="ALPHAFLOW_TOKEN"):
        afl.connect("ws://127.0.0.1:9/ws/portfolio")


async def test_a_failing_callback_is_logged_and_the_stream_goes_on(
    start_server, tokens: Tokens, caplog
) -> None:
    server = start_server("--batch-window-ms", "5")
    feed = await Publisher.connect(server.ws_base, tokens.service)
    seen: list[str] = []
    with connect(server.ws_base, tokens.alice) as live:
        live.on("fill", lambda fill: 1 / 0)
        unsubscribe = live.on("fill", lambda fill: seen.append(fill.id))
        statuses: list[str] = []
        live.on("status", statuses.append)
        await live.until(lambda live: live.status == "live")
        with caplog.at_level(logging.ERROR, logger="alphaflow_live"):
            await publish_fills(feed, ["cb-1", "cb-2"])
            await live.until(lambda live: len(seen) == 2)
        unsubscribe()
        await publish_fills(feed, ["cb-3"])
        await live.until(lambda live: "cb-3" in live.fills.index)

    assert seen == ["cb-1", "cb-2"]
    assert "callback raised" in caplog.text
    assert statuses[-1] == "closed"


async def test_frames_are_copies_the_user_may_change(start_server, tokens: Tokens) -> None:
    server = start_server("--batch-window-ms", "5")
    feed = await Publisher.connect(server.ws_base, tokens.service)
    with connect(server.ws_base, tokens.alice) as live:
        await publish_fills(feed, ["m-1"])
        await live.until(lambda live: len(live.fills) == 1)

        frame = live.positions
        frame["qty"] = 0.0

        assert (live.positions["qty"] != 0).all()


async def test_an_asyncio_application_can_await_the_stream(start_server, tokens: Tokens) -> None:
    server = start_server("--batch-window-ms", "5")
    feed = await Publisher.connect(server.ws_base, tokens.service)
    live = connect(server.ws_base, tokens.alice)
    ticker = asyncio.create_task(publish_fills(feed, ["a-1", "a-2", "a-3"]))

    count = await live.until(lambda live: len(live.fills) == 3 and 3, timeout=10)

    await ticker
    assert count == 3
    live.close()


async def test_a_heartbeat_moves_last_update_without_any_change(start_server, tokens: Tokens) -> None:
    server = start_server("--heartbeat-s", "0.3")
    with connect(server.ws_base, tokens.alice) as live:
        await live.until(lambda live: live.status == "live" and live.last_update is not None)
        first = live.last_update
        seq = live.seq

        await live.until(lambda live: live.last_update > first, timeout=10)

        assert live.seq == seq, "nothing changed: only heartbeats arrived"
        assert live.freshness == "live"
