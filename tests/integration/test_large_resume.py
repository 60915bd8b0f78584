"""A resume across a gap larger than a connection's backlog bound (issue 14, defect 5)."""

from __future__ import annotations

import asyncio

import pytest

from alphaflow_live.protocol import Subscribed, server_message_decoder
from tests.support import events as ev
from tests.support.client import Publisher, StreamClient, rest_snapshot, same_portfolio, send, state_of
from tests.support.server import ServerProcess, Tokens

pytestmark = pytest.mark.timeout(120)

BACKLOG = 1024 * 1024
FILLS = 6000
# A publish stays under the 64 KiB inbound frame limit.
PER_PUBLISH = 150


async def away_for(server: ServerProcess, tokens: Tokens, ids: list[str]) -> tuple[Publisher, StreamClient]:
    """A client that held the stream, left, and missed ``ids`` (one fill each) while away; it is
    back and has sent its resume."""
    publisher = await Publisher.connect(server.ws_base, tokens.service)
    client = await StreamClient.connect(server.ws_base, tokens.alice)
    await client.subscribe()
    held = client.state
    await client.close()
    for start in range(0, len(ids), PER_PUBLISH):
        await publisher.publish("alice", [ev.fill(i, qty="1") for i in ids[start : start + PER_PUBLISH]])
    again = await StreamClient.connect(server.ws_base, tokens.alice, max_size=None)
    again.state = held
    await send(again.ws, {"type": "subscribe", "id": 2, "resume": {"epoch": held.epoch, "seq": held.seq}})
    return publisher, again


async def test_a_resume_across_a_gap_larger_than_the_backlog_gets_subscribed_then_every_missed_event(
    start_server, tokens: Tokens
) -> None:
    server = start_server("--max-backlog-bytes", str(BACKLOG), "--batch-window-ms", "10")
    ids = [f"gap-{i}" for i in range(FILLS)]
    publisher, again = await away_for(server, tokens, ids)
    expected = await rest_snapshot(server.http_base, tokens.alice)

    first = server_message_decoder.decode(await again.ws.recv())
    sizes: list[int] = []
    async with asyncio.timeout(30):
        while again.state.seq != expected.seq:
            frame = await again.ws.recv()
            sizes.append(len(frame))
            again.apply(server_message_decoder.decode(frame))  # asserts every batch is contiguous

    assert first == Subscribed(channels=["positions", "orders", "account", "trades"], recovered=True)
    assert not again.snapshots, "every missed event came as batches, not a snapshot"
    assert len(again.batches) > 1 and sum(sizes) > BACKLOG, "more than one frame, more than the backlog"
    assert max(sizes) < BACKLOG, f"frames stay well under the backlog bound: {max(sizes)} bytes"
    assert again.fill_ids == ids, "every missed fill once, in order"
    assert same_portfolio(again.state, state_of(expected))
    await again.close()
    await publisher.close()


async def test_live_events_after_a_large_resume_follow_the_recovered_batches(
    start_server, tokens: Tokens
) -> None:
    server = start_server("--max-backlog-bytes", str(BACKLOG), "--batch-window-ms", "10")
    publisher, again = await away_for(server, tokens, [f"pre-{i}" for i in range(FILLS)])

    live = await publisher.publish("alice", [ev.fill("live-1")])  # while the recovery goes out
    await again.pump_until_seq(live[-1])

    assert again.fill_ids[-1] == "live-1" and len(again.fill_ids) == FILLS + 1
    assert not again.snapshots, "the live fill came after the recovered batches, contiguous with them"
    await again.close()
    await publisher.close()
