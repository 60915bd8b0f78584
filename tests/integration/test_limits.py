"""Inbound limits, slow consumers and dead peers (PROTOCOL.md, "Limits and close codes")."""

from __future__ import annotations

import asyncio
import json
import socket

import pytest
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from alphaflow_live.protocol import Snapshot
from tests.support import admin
from tests.support import events as ev
from tests.support.client import Publisher, StreamClient, rest_snapshot, same_portfolio, send, state_of
from tests.support.server import Tokens
from tests.support.wait import async_wait_until

pytestmark = pytest.mark.timeout(60)


async def closed_with(ws: ClientConnection, timeout: float = 10) -> tuple[int | None, str | None]:
    """Read until the server closes; returns its close code and reason."""
    try:
        async with asyncio.timeout(timeout):
            while True:
                await ws.recv()
    except ConnectionClosed as exc:
        return (exc.rcvd.code, exc.rcvd.reason) if exc.rcvd else (None, None)


async def test_an_inbound_frame_over_64_kib_closes_with_1009(shared_server, tokens: Tokens) -> None:
    client = await StreamClient.connect(shared_server.ws_base, tokens.bob)

    await client.ws.send(json.dumps({"type": "ping", "pad": "x" * (65 * 1024)}))

    code, _ = await closed_with(client.ws)
    assert code == 1009


async def test_a_frame_just_under_the_limit_is_answered(shared_server, tokens: Tokens) -> None:
    client = await StreamClient.connect(shared_server.ws_base, tokens.bob)

    await client.ws.send(json.dumps({"type": "ping", "id": 1, "pad": "x" * (63 * 1024)}))

    pong = await client.pump_one()
    assert pong.id == 1


async def test_over_100_messages_a_second_closes_with_1008_rate_limit(shared_server, tokens: Tokens) -> None:
    client = await StreamClient.connect(shared_server.ws_base, tokens.bob)

    for i in range(150):
        await send(client.ws, {"type": "ping", "id": i})

    assert await closed_with(client.ws) == (1008, "rate limit")


def tick(i: int) -> dict[str, object]:
    return {
        "type": "prices",
        "id": i,
        "prices": [{"symbol": "RELAY", "price": f"{100 + i % 50}.25", "ts": ev.TS}],
    }


async def test_a_relay_at_1000_messages_a_second_for_2_s_is_not_closed_and_every_message_is_acked(
    shared_server, tokens: Tokens
) -> None:
    publisher = await Publisher.connect(shared_server.ws_base, tokens.service)
    rate, seconds = 1000, 2.0
    total = int(rate * seconds)
    acked: set[int] = set()

    async def read_acks() -> None:
        # Read while sending, as a relay does, so neither side's buffers stall the other.
        while len(acked) < total:
            reply = json.loads(await publisher.ws.recv())
            assert reply["type"] == "ack", f"expected an ack, got {reply}"
            acked.add(reply["id"])

    async def send_ticks() -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        for i in range(total):
            due = started + i / rate
            if due > loop.time():
                await asyncio.sleep(due - loop.time())  # pacing the relay, not waiting on a condition
            await send(publisher.ws, tick(i))

    async with asyncio.timeout(20):
        await asyncio.gather(read_acks(), send_ticks())

    assert acked == set(range(total))
    assert publisher.ws.close_code is None, f"closed with {publisher.ws.close_code}"


async def test_the_ingest_stream_is_closed_1008_past_its_ingest_rate(start_server, tokens: Tokens) -> None:
    server = start_server("--ingest-rate", "200")
    publisher = await Publisher.connect(server.ws_base, tokens.service)

    for i in range(600):
        await send(publisher.ws, tick(i))

    assert await closed_with(publisher.ws) == (1008, "rate limit")


async def test_the_ingest_rate_leaves_the_portfolio_stream_at_100_a_second(
    start_server, tokens: Tokens
) -> None:
    server = start_server("--ingest-rate", "100000")
    client = await StreamClient.connect(server.ws_base, tokens.bob)

    for i in range(150):
        await send(client.ws, {"type": "ping", "id": i})

    assert await closed_with(client.ws) == (1008, "rate limit")


async def slow_reader(server, tokens: Tokens) -> StreamClient:
    """A subscribed client whose socket backs up at once: no compression, a tiny receive
    buffer and a two-frame queue in the client library."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", server.port))
    reader = await StreamClient.connect(
        server.ws_base, tokens.alice, compression=None, max_queue=2, sock=sock
    )
    await reader.subscribe()
    return reader


async def overflow(server, tokens: Tokens) -> int:
    """Publish until the server reports a slow-consumer resync; returns the last seq.

    The kernel's socket buffers on loopback absorb about 3 MB before a send
    blocks (seen here), so this publishes up to 8 MB in 40 KB batches, on fresh
    ingest connections to stay under the inbound rate limit.
    """
    seq = 0
    publisher = await Publisher.connect(server.ws_base, tokens.service)
    for round_ in range(200):
        if round_ % 50 == 49:
            await publisher.close()
            publisher = await Publisher.connect(server.ws_base, tokens.service)
        batch = [ev.position(f"S{round_}x{i}", qty=str(i + 1)) for i in range(100)]
        seq = (await publisher.publish("alice", batch))[-1]
        if round_ % 10 == 9 and (await admin.stats(server.http_base, tokens.admin))["slow_consumer_resyncs"]:
            break
    await publisher.close()
    return seq


async def test_a_slow_reader_gets_one_fresh_snapshot_instead_of_an_unbounded_backlog(
    start_server, tokens
) -> None:
    server = start_server("--batch-window-ms", "0", "--max-backlog-bytes", "65536")
    reader = await slow_reader(server, tokens)

    last_seq = await overflow(server, tokens)
    stats = await admin.stats(server.http_base, tokens.admin)
    assert stats["slow_consumer_resyncs"] >= 1
    await reader.pump_until_seq(last_seq, timeout=20)  # now read everything

    assert len(reader.snapshots) >= 2, "a snapshot after the initial one replaced the discarded backlog"
    resync = reader.snapshots[-1]
    assert isinstance(resync, Snapshot) and resync.seq <= last_seq
    rest = await rest_snapshot(server.http_base, tokens.alice)
    assert rest.seq == last_seq
    assert same_portfolio(reader.state, state_of(rest)), "state is never lost, only intermediate states"


async def test_a_reader_that_never_drains_is_closed_with_1013(start_server, tokens) -> None:
    server = start_server(
        "--batch-window-ms", "0", "--max-backlog-bytes", "65536", "--slow-client-timeout-s", "0.5"
    )
    await slow_reader(server, tokens)

    await overflow(server, tokens)

    async def closed_1013() -> bool:
        return (await admin.stats(server.http_base, tokens.admin))["disconnects_by_code"].get("1013", 0) == 1

    await async_wait_until(closed_1013, timeout=20, what="the stuck reader to be closed with 1013")


async def test_a_dead_peer_is_dropped_within_two_heartbeats(start_server, tokens) -> None:
    heartbeat_s = 1.0
    server = start_server("--heartbeat-s", str(heartbeat_s))
    # A raw socket completes the handshake and then never reads nor answers a ping.
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    sock.sendall(
        (
            "GET /ws/portfolio HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
            f"Authorization: Bearer {tokens.alice}\r\n\r\n"
        ).encode()
    )
    assert b"101 Switching Protocols" in sock.recv(4096)
    loop = asyncio.get_running_loop()
    opened = loop.time()

    async def dropped() -> bool:
        report = await admin.stats(server.http_base, tokens.admin)
        return report["connections_by_stream"]["portfolio"] == 0

    try:
        await async_wait_until(dropped, timeout=10 * heartbeat_s, what="the dead peer to be dropped")
    finally:
        sock.close()
    elapsed = loop.time() - opened
    # PROTOCOL.md: within 2 × heartbeat_s; the margin covers the stats poll and a loaded machine.
    assert elapsed < 2 * heartbeat_s + 1.5, f"dead peer dropped after {elapsed:.2f}s"
