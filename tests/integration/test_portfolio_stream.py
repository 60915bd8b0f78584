"""The portfolio stream: welcome, subscribe, snapshots, batches, resume, errors, heartbeats."""

from __future__ import annotations

import asyncio
import time

import pytest
from msgspec import UNSET
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory

from alphaflow_live.protocol import (
    Batch,
    Error,
    FillEvent,
    Heartbeat,
    Pong,
    PositionEvent,
    Snapshot,
    Subscribed,
    Welcome,
)
from tests.support import events as ev
from tests.support.client import (
    Publisher,
    StreamClient,
    recv,
    recv_until,
    rest_snapshot,
    same_portfolio,
    send,
    state_of,
)
from tests.support.server import Tokens

pytestmark = pytest.mark.timeout(60)


async def test_welcome_comes_first_and_describes_the_connection(start_server, tokens: Tokens) -> None:
    server = start_server("--batch-window-ms", "100", "--heartbeat-s", "7")
    client = await StreamClient.connect(server.ws_base, tokens.alice)

    welcome = client.welcome
    assert isinstance(welcome, Welcome)
    assert (welcome.protocol, welcome.user_id) == (1, "alice")
    assert welcome.connection_id and welcome.epoch
    assert (welcome.batch_window_ms, welcome.heartbeat_s) == (100, 7)
    assert welcome.channels == ["positions", "orders", "account", "trades"]
    assert welcome.server_time.endswith("Z")
    await client.close()


async def test_subscribe_without_resume_gets_subscribed_then_a_snapshot(start_server, tokens: Tokens) -> None:
    server = start_server()
    publisher = await Publisher.connect(server.ws_base, tokens.service)
    seqs = await publisher.publish(
        "alice", [ev.position("AAPL"), ev.account(), ev.fill("f-1"), ev.order("o-1")]
    )
    client = await StreamClient.connect(server.ws_base, tokens.alice)

    await send(client.ws, {"type": "subscribe", "id": 1, "channels": ["positions", "account"]})
    subscribed = await recv(client.ws)
    snapshot = await recv(client.ws)

    assert isinstance(subscribed, Subscribed)
    assert (subscribed.channels, subscribed.recovered) == (["positions", "account"], False)
    assert isinstance(snapshot, Snapshot)
    assert (snapshot.epoch, snapshot.seq) == (client.welcome.epoch, seqs[-1])
    assert [p.symbol for p in snapshot.positions] == ["AAPL"]
    assert snapshot.account is not None
    assert snapshot.orders is UNSET and snapshot.fills is UNSET, "unsubscribed channels are left out"
    await client.close()
    await publisher.close()


async def test_published_events_arrive_in_contiguous_batches_in_seq_order(
    start_server, tokens: Tokens
) -> None:
    server = start_server("--batch-window-ms", "20")
    client = await StreamClient.connect(server.ws_base, tokens.alice)
    await client.subscribe()
    publisher = await Publisher.connect(server.ws_base, tokens.service)

    for i in range(30):
        seqs = await publisher.publish("alice", [ev.fill(f"f-{i}"), ev.position("AAPL", qty=str(10 + i))])
    await client.pump_until_seq(seqs[-1])

    assert client.batches[0].from_seq == client.snapshots[-1].seq
    for before, after in zip(client.batches, client.batches[1:], strict=False):
        assert after.from_seq == before.to_seq
    for batch in client.batches:
        seqs = [e.seq for e in batch.events]
        assert seqs == sorted(seqs) and all(batch.from_seq < s <= batch.to_seq for s in seqs)
    assert client.fill_ids == [f"f-{i}" for i in range(30)], "every fill arrives once, in order"
    assert same_portfolio(client.state, state_of(await rest_snapshot(server.http_base, tokens.alice)))
    await client.close()
    await publisher.close()


async def test_an_isolated_fill_is_sent_at_once_while_a_burst_is_coalesced(
    start_server, tokens: Tokens
) -> None:
    window_s = 1.0
    server = start_server("--batch-window-ms", str(int(window_s * 1000)))
    client = await StreamClient.connect(server.ws_base, tokens.alice)
    await client.subscribe()
    publisher = await Publisher.connect(server.ws_base, tokens.service)

    started = time.monotonic()
    lonely = await publisher.publish("alice", [ev.fill("lonely")])
    first = await client.pump_one()
    isolated_latency = time.monotonic() - started
    # A burst right after: one position updated 50 times, all inside one window.
    for i in range(50):
        seqs = await publisher.publish("alice", [ev.position("MSFT", qty=str(i + 1))])
    await client.pump_until_seq(seqs[-1], timeout=5)

    assert isinstance(first, Batch) and [e.seq for e in first.events] == lonely
    assert isolated_latency < window_s / 2, (
        f"isolated fill took {isolated_latency:.3f}s with a {window_s}s window"
    )
    burst = client.batches[1:]
    assert len(burst) <= 2, f"a burst in one window should be one or two frames, got {len(burst)}"
    assert client.state.positions["MSFT"].qty == 50
    msft = [e for b in burst for e in b.events if isinstance(e, PositionEvent)]
    assert len(msft) == len(burst), "each frame carries MSFT once"
    await client.close()
    await publisher.close()


async def test_resume_replays_exactly_the_missed_events(start_server, tokens: Tokens) -> None:
    server = start_server("--batch-window-ms", "10")
    publisher = await Publisher.connect(server.ws_base, tokens.service)
    client = await StreamClient.connect(server.ws_base, tokens.alice)
    await client.subscribe()
    seqs = await publisher.publish("alice", [ev.fill("f-a"), ev.position("AAPL", "5")])
    await client.pump_until_seq(seqs[-1])
    epoch, seq = client.state.epoch, client.state.seq
    await client.close()

    missed = await publisher.publish("alice", [ev.fill("f-b"), ev.position("AAPL", "6"), ev.fill("f-c")])
    again = await StreamClient.connect(server.ws_base, tokens.alice)
    again.state = client.state
    subscribed = await again.subscribe(resume={"epoch": epoch, "seq": seq})

    assert subscribed.recovered is True
    replay = again.batches[-1]
    assert (replay.from_seq, replay.to_seq) == (seq, missed[-1])
    assert [e.data.id for e in replay.events if isinstance(e, FillEvent)] == ["f-b", "f-c"]
    assert again.state.positions["AAPL"].qty == 16, "the published 6 plus the 10 of fill f-c"
    assert same_portfolio(again.state, state_of(await rest_snapshot(server.http_base, tokens.alice)))
    await again.close()
    await publisher.close()


async def test_resume_from_the_current_seq_recovers_an_empty_batch(start_server, tokens: Tokens) -> None:
    server = start_server()
    client = await StreamClient.connect(server.ws_base, tokens.alice)
    await client.subscribe()

    reply = await client.subscribe(resume={"epoch": client.welcome.epoch, "seq": 0}, id=2)

    assert reply.recovered is True
    assert (client.batches[-1].from_seq, client.batches[-1].to_seq, client.batches[-1].events) == (0, 0, [])
    await client.close()


@pytest.mark.parametrize("resume", [{"epoch": "e-unknown", "seq": 0}, {"epoch": None, "seq": 99}])
async def test_an_unusable_resume_point_gets_resume_unavailable_and_a_snapshot(
    start_server, tokens: Tokens, resume: dict[str, object]
) -> None:
    server = start_server()
    client = await StreamClient.connect(server.ws_base, tokens.alice)
    resume = {**resume, "epoch": resume["epoch"] or client.welcome.epoch}

    await send(client.ws, {"type": "subscribe", "id": 5, "resume": resume})
    subscribed, error, snapshot = [await recv(client.ws) for _ in range(3)]

    assert isinstance(subscribed, Subscribed) and subscribed.recovered is False, "subscribed comes first"
    assert isinstance(error, Error) and (error.code, error.ref) == ("resume_unavailable", 5)
    assert isinstance(snapshot, Snapshot)
    await client.close()


async def test_a_resume_older_than_the_replay_buffer_gets_a_snapshot(start_server, tokens: Tokens) -> None:
    server = start_server("--retain-events", "5", "--retain-seconds", "0")
    publisher = await Publisher.connect(server.ws_base, tokens.service)
    seqs = await publisher.publish("alice", [ev.fill(f"f-{i}") for i in range(20)])
    client = await StreamClient.connect(server.ws_base, tokens.alice)

    reply = await client.subscribe(resume={"epoch": client.welcome.epoch, "seq": 3})

    assert reply.recovered is False
    assert [e.code for e in client.errors] == ["resume_unavailable"]
    assert client.snapshots[-1].seq == seqs[-1]
    await client.close()
    await publisher.close()


async def test_unsubscribe_stops_a_channel_and_keeps_batches_contiguous(start_server, tokens: Tokens) -> None:
    server = start_server("--batch-window-ms", "10")
    client = await StreamClient.connect(server.ws_base, tokens.alice)
    await client.subscribe()
    publisher = await Publisher.connect(server.ws_base, tokens.service)

    await send(client.ws, {"type": "unsubscribe", "id": 2, "channels": ["trades"]})
    reply = await recv_until(client.ws, lambda m: isinstance(m, Subscribed))
    seqs = await publisher.publish("alice", [ev.fill("hidden"), ev.position("AAPL", "3")])
    await client.pump_until_seq(seqs[-1])

    assert reply.channels == ["positions", "orders", "account"]
    assert client.fill_ids == []
    assert client.state.positions["AAPL"].qty == 3
    await client.close()
    await publisher.close()


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("{not json", "invalid_json"),
        ("[1, 2]", "invalid_message"),
        ('{"type": "teleport", "id": 4}', "unknown_type"),
        ('{"type": "subscribe", "id": 4, "channels": "positions"}', "invalid_message"),
        ('{"type": "subscribe", "id": 4, "channels": ["positions", "gossip"]}', "invalid_channel"),
        ('{"type": "unsubscribe", "id": 4}', "invalid_message"),
    ],
)
async def test_bad_input_gets_an_error_frame_and_the_connection_stays_open(
    shared_server, tokens: Tokens, frame: str, code: str
) -> None:
    client = await StreamClient.connect(shared_server.ws_base, tokens.bob)

    await client.ws.send(frame)
    error = await recv(client.ws)
    await send(client.ws, {"type": "ping", "id": 77})
    pong = await recv(client.ws)

    assert isinstance(error, Error) and error.code == code, error
    assert error.message
    if '"id": 4' in frame:
        assert error.ref == 4
    assert isinstance(pong, Pong) and pong.id == 77
    await client.close()


async def test_a_binary_frame_gets_an_error_frame(shared_server, tokens: Tokens) -> None:
    client = await StreamClient.connect(shared_server.ws_base, tokens.bob)

    await client.ws.send(b'{"type": "ping"}')
    error = await recv(client.ws)

    assert isinstance(error, Error) and error.code == "invalid_message"
    await client.close()


async def test_ping_gets_a_pong_echoing_its_id(shared_server, tokens: Tokens) -> None:
    client = await StreamClient.connect(shared_server.ws_base, tokens.bob)

    await send(client.ws, {"type": "ping", "id": 7})
    pong = await recv(client.ws)

    assert isinstance(pong, Pong) and pong.id == 7 and pong.server_time.endswith("Z")
    await client.close()


async def test_a_heartbeat_is_sent_when_nothing_else_was(start_server, tokens: Tokens) -> None:
    server = start_server("--heartbeat-s", "0.3")
    client = await StreamClient.connect(server.ws_base, tokens.alice)
    await client.subscribe()

    heartbeat = await recv(client.ws, timeout=5)

    assert isinstance(heartbeat, Heartbeat)
    assert heartbeat.seq == client.state.seq
    await client.close()


async def test_two_users_never_see_each_others_events(start_server, tokens: Tokens) -> None:
    server = start_server("--batch-window-ms", "5")
    alice = await StreamClient.connect(server.ws_base, tokens.alice)
    bob = await StreamClient.connect(server.ws_base, tokens.bob)
    await alice.subscribe()
    await bob.subscribe()
    publisher = await Publisher.connect(server.ws_base, tokens.service)

    for i in range(20):
        alice_seqs = await publisher.publish("alice", [ev.fill(f"alice-{i}", symbol="AAPL")])
        bob_seqs = await publisher.publish("bob", [ev.fill(f"bob-{i}", symbol="TSLA")])
    await asyncio.gather(alice.pump_until_seq(alice_seqs[-1]), bob.pump_until_seq(bob_seqs[-1]))

    assert alice.fill_ids == [f"alice-{i}" for i in range(20)]
    assert bob.fill_ids == [f"bob-{i}" for i in range(20)]
    assert alice.welcome.epoch != bob.welcome.epoch
    bob_rest = await rest_snapshot(server.http_base, tokens.bob)
    assert {f.id for f in bob_rest.fills} == {f"bob-{i}" for i in range(20)}
    await alice.close()
    await bob.close()
    await publisher.close()


async def test_permessage_deflate_is_offered_and_used(shared_server, tokens: Tokens) -> None:
    client = await StreamClient.connect(shared_server.ws_base, tokens.bob)

    extensions = client.ws.response.headers.get("Sec-WebSocket-Extensions", "")

    assert "permessage-deflate" in extensions
    await client.close()


async def test_permessage_deflate_keeps_the_servers_context_while_streaming_and_every_frame_reads(
    start_server, tokens: Tokens
) -> None:
    # The server negotiates context takeover for itself (kept only while batches flow:
    # deflate.StreamingDeflate) and none for the client; websockets' client decompresses
    # every frame across the server's kept and freed compressors, or the stream breaks.
    server = start_server("--batch-window-ms", "5")
    client = await StreamClient.connect(server.ws_base, tokens.alice)
    params = {p.strip() for p in client.ws.response.headers.get("Sec-WebSocket-Extensions", "").split(";")}
    await client.subscribe()
    publisher = await Publisher.connect(server.ws_base, tokens.service)
    seqs: list[int] = []
    for n in range(40):
        seqs += await publisher.publish(
            "alice", [ev.position(f"S{n % 7}", str(n + 1)), ev.account(f"{n}.00")]
        )
    await client.pump_until_seq(seqs[-1])

    assert "client_no_context_takeover" in params and "server_no_context_takeover" not in params, params
    assert client.state.positions.keys() == {f"S{n}" for n in range(7)}
    assert client.state.positions["S4"].qty == ev.D("40")
    await client.close()


async def test_a_client_that_asks_for_no_server_context_takeover_gets_it(
    shared_server, tokens: Tokens
) -> None:
    factory = ClientPerMessageDeflateFactory(server_no_context_takeover=True, client_no_context_takeover=True)
    client = await StreamClient.connect(
        shared_server.ws_base, tokens.bob, extensions=[factory], compression=None
    )
    params = {p.strip() for p in client.ws.response.headers.get("Sec-WebSocket-Extensions", "").split(";")}
    await client.subscribe()
    pongs = []
    for i in (1, 2):
        await send(client.ws, {"type": "ping", "id": i})
        pongs.append(await recv_until(client.ws, lambda m: isinstance(m, Pong)))

    assert "server_no_context_takeover" in params, params
    assert [p.id for p in pongs] == [1, 2]
    await client.close()


async def test_the_rest_snapshot_serves_the_same_state_as_the_stream(start_server, tokens: Tokens) -> None:
    server = start_server("--batch-window-ms", "5")
    client = await StreamClient.connect(server.ws_base, tokens.alice)
    await client.subscribe()
    publisher = await Publisher.connect(server.ws_base, tokens.service)
    seqs = await publisher.publish(
        "alice",
        [
            ev.position("AAPL"),
            ev.position("MSFT"),
            ev.position_closed("AAPL"),
            ev.order("o-9", "filled"),
            ev.account(),
        ],
    )
    await client.pump_until_seq(seqs[-1])

    rest = await rest_snapshot(server.http_base, tokens.alice)

    assert rest.seq == seqs[-1] and rest.epoch == client.state.epoch
    assert same_portfolio(client.state, state_of(rest))
    assert list(client.state.positions) == ["MSFT"]
    await client.close()
    await publisher.close()
