"""Field deltas against a real server: a kernel client that asks for them (the default) holds
exactly what one that does not holds, and what the REST snapshot says, in fewer bytes."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from typing import Any

import msgspec
import pytest

import alphaflow_live as afl
from alphaflow_live.protocol import Ack, Subscribe
from tests.support import events as ev
from tests.support.client import Publisher, StreamClient, exact_portfolio, rest_snapshot, send, state_of

pytestmark = pytest.mark.timeout(120)

FAST = {"backoff_base_s": 0.05, "backoff_cap_s": 0.5, "poll_interval_s": 0.2, "connect_timeout_s": 5}
SYMBOLS = ["AAPL", "MSFT", "TSLA", "NVDA", "BRK.B"]


def _held(live: afl.PortfolioStream) -> tuple[int | None, tuple[bytes, bytes, bytes]]:
    with live.reading() as state:
        return state.seq, exact_portfolio(state)


async def test_a_client_with_deltas_holds_what_one_without_holds_in_fewer_bytes(start_server, tokens) -> None:
    server = start_server("--batch-window-ms", "20")
    feed = await Publisher.connect(server.ws_base, tokens.service)
    url = f"{server.ws_base}/ws/portfolio"
    with (
        afl.connect(url, tokens.alice, **FAST) as with_deltas,
        afl.PortfolioStream(url, tokens.alice, field_deltas=False, **FAST) as full,
    ):
        await with_deltas.until(lambda live: live.status == "live")
        await full.until(lambda live: live.status == "live")
        rng = random.Random(17)
        for n, symbol in enumerate(SYMBOLS):
            await feed.publish("alice", [ev.fill(f"f-{n}", f"o-{n}", symbol, qty=str(n + 1)),
                                         ev.order(f"o-{n}", "filled", symbol, str(n + 1))])  # fmt: skip
        for step in range(120):
            # Prices that come back to earlier values, in more than one spelling.
            price = rng.choice(["100", "100.0", "100.50", "101.25", "99.9"])
            ack = await feed.prices([ev.tick(rng.choice(SYMBOLS), price, ev.ts(step))])
            assert isinstance(ack, Ack), ack
        # Re-marks follow the last tick within a window: poll until both hold the server's state.
        async with asyncio.timeout(30):
            while True:
                rest = await rest_snapshot(server.http_base, tokens.alice)
                expected = (rest.seq, exact_portfolio(state_of(rest)))
                held = [_held(live) for live in (with_deltas, full)]
                if held == [expected, expected]:
                    break
                await asyncio.sleep(0.05)

        assert with_deltas.stats()["bytes"] < full.stats()["bytes"]
        assert with_deltas.stats().get("resyncs", 0) == 0


async def test_the_server_says_deltas_are_on_and_sends_a_delta_after_the_first_full_event(
    start_server, tokens
) -> None:
    server = start_server("--batch-window-ms", "0")
    feed = await Publisher.connect(server.ws_base, tokens.service)
    await feed.publish("alice", [ev.fill("f-1", "o-1", "AAPL")])
    client = await StreamClient.connect(server.ws_base, tokens.alice)

    async def frame_where(predicate: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        async with asyncio.timeout(10):
            while not predicate(message := msgspec.json.decode(await client.ws.recv())):
                pass
        return message

    await send(client.ws, Subscribe(id=1, channels=["positions"], deltas=True))
    subscribed = await frame_where(lambda m: m["type"] == "subscribed")
    assert subscribed["deltas"] is True
    await frame_where(lambda m: m["type"] == "snapshot")

    await feed.prices([ev.tick("AAPL", "190.00")])
    batch = await frame_where(lambda m: m["type"] == "batch" and m["events"])

    [event] = batch["events"]
    assert event["type"] == "position_delta"
    assert event["data"]["symbol"] == "AAPL" and event["data"]["current_price"] == "190.000000"
    assert "qty" not in event["data"] and "avg_entry_price" not in event["data"]
