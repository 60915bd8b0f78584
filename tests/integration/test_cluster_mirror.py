"""A node's user streams in a cluster (``cluster.mirror``), on a real redis-server.

What the cluster suite cannot force at will is shown here: a stream primed
from the snapshot and the events after it equals one built from every event;
the owner's own commit, delivered at once and echoed by Redis, is applied
once; a live message lost on the way (a gap) is read back from the stream; a
stream whose history went away is dropped and its connections told.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence

import pytest

from alphaflow_live.protocol import Event, encode
from alphaflow_live.state import PortfolioState
from alphaflow_server.cluster import RedisLog, unsequenced, user_keys
from alphaflow_server.cluster.mirror import ClusterBus
from alphaflow_server.cluster.pubsub import ShardSubscriber
from tests.support import events as ev
from tests.support.redis import Client, RedisServer, connect

pytestmark = pytest.mark.timeout(60)

OWNER = 3


@pytest.fixture
async def client(redis_server: RedisServer) -> AsyncIterator[Client]:
    opened = await connect(redis_server)
    yield opened
    await opened.aclose()


Parts = tuple[RedisLog, ClusterBus, list[str], ShardSubscriber]


@pytest.fixture
async def parts(client: Client) -> AsyncIterator[Parts]:
    subscriber = ShardSubscriber(client)
    reset: list[str] = []
    bus = ClusterBus(RedisLog(client), subscriber, on_reset=reset.append)
    reader = asyncio.create_task(subscriber.run())
    yield RedisLog(client), bus, reset, subscriber
    reader.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await reader
    await subscriber.close()


async def until(condition: Callable[[], bool], what: str) -> None:
    """Poll a condition the event loop makes true (the reader task runs between polls)."""
    deadline = asyncio.get_running_loop().time() + 5.0
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


async def commit(log: RedisLog, user: str, events: Sequence[Event]) -> int:
    committed = await log.commit(user, OWNER, [unsequenced(e) for e in events])
    return committed.last_seq


def state_of_every_event(events: Sequence[Event]) -> PortfolioState:
    state = PortfolioState(max_fills=1000)
    for seq, event in enumerate(events, start=1):
        event.seq = seq
        state.apply_event(event)
    state.epoch, state.seq = "e-test", len(events)
    return state


def snapshot_of(state: PortfolioState) -> bytes:
    """The state's contents, without the epoch (the test's own state has none of Redis's)."""
    snapshot = state.to_snapshot("2026-12-01T00:00:00.000Z", max_fills=1000)
    snapshot.epoch = ""
    return encode(snapshot)


async def test_a_stream_primed_from_a_snapshot_and_the_events_after_it_is_the_whole_history(
    parts: Parts,
) -> None:
    log, bus, _, _ = parts
    user = "ann"
    await log.claim(user, OWNER)
    history: list[Event] = [ev.account("10000"), *(ev.fill(f"p-{i}") for i in range(6))]
    await commit(log, user, history[:4])
    epoch = (await log.head(user)).epoch
    snapshot_at = state_of_every_event(history[:4])
    assert await log.checkpoint(user, OWNER, epoch, 4, snapshot_of(snapshot_at))
    await commit(log, user, history[4:])

    stream = await bus.ensure(user)
    whole = state_of_every_event(history)
    assert (stream.epoch, stream.seq, stream.state.seq) == (epoch, 7, 7)
    assert snapshot_of(stream.state) == snapshot_of(whole)
    # Every kept event is in the replay buffer: a client resumes from any of them.
    assert stream.journal.can_resume(epoch, 0)
    assert [e.seq for e in stream.journal.events_after(0)] == list(range(1, 8))
    bus.release(user)


async def test_the_owners_commit_is_applied_once_and_a_lost_message_is_read_back(
    parts: Parts, client: Client
) -> None:
    log, bus, _, _ = parts
    user = "bea"
    await log.claim(user, OWNER)
    stream = await bus.ensure(user)
    delivered: list[int] = []
    bus.subscribe(user, lambda events, encoded, now: delivered.extend(e.seq for e in events))

    committed = await log.commit(user, OWNER, [unsequenced(ev.fill("b-1"))])
    bus.deliver_committed(user, committed)  # the owner's fast path; Redis echoes the same commit
    await until(lambda: stream.seq == 1, "the commit")

    # The subscription's connection dropped (Redis restarted, a network blip): what is committed
    # before it is back never arrives by pub/sub; the reconnection reads it from the stream.
    await client.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
    await commit(log, user, [ev.fill("b-2"), ev.fill("b-3")])
    await until(lambda: stream.seq == 3, "the events missed read back")
    await commit(log, user, [ev.fill("b-4")])
    await until(lambda: stream.seq == 4, "the gap read back")
    assert delivered == [1, 2, 3, 4]
    assert [f.id for f in stream.state.recent_fills()] == ["b-1", "b-2", "b-3", "b-4"]
    bus.release(user)


async def test_a_stream_whose_epoch_moved_is_dropped_and_its_connections_told(
    parts: Parts, client: Client
) -> None:
    log, bus, reset, _ = parts
    user = "cat"
    await log.claim(user, OWNER)
    await bus.ensure(user)
    await commit(log, user, [ev.fill("c-1")])
    await until(lambda: bus.user(user).seq == 1, "the first commit")
    # Redis lost the user's meta (an operator, a failover without the last writes): a new epoch.
    await client.delete(user_keys(user).meta)
    await commit(log, user, [ev.fill("c-2")])
    await until(lambda: reset == [user], "the stream's reset")
    # The owner still holds it: it is primed again, in the new epoch.
    await until(lambda: user in bus and bus.user(user).seq == 1, "a new stream")
    assert bus.user(user).epoch == (await log.head(user)).epoch
    bus.release(user)
    assert user not in bus


async def test_a_stream_nobody_holds_is_let_go(parts: Parts) -> None:
    _, bus, _, subscriber = parts
    user = "dan"
    await bus.ensure(user)
    await bus.ensure(user)
    bus.release(user)
    assert user in bus, "released by one of two holders"
    bus.release(user)
    assert user not in bus
    await until(lambda: user_keys(user).live not in subscriber, "the channel left")


async def test_a_stream_let_go_and_taken_again_at_once_stays_live(parts: Parts) -> None:
    """The channel's unsubscribe, still on its way, must not undo the new subscription."""
    log, bus, _, _ = parts
    user = "eve"
    await log.claim(user, OWNER)
    await bus.ensure(user)
    bus.release(user)
    stream = await bus.ensure(user)
    await commit(log, user, [ev.fill("e-1")])
    await until(lambda: stream.seq == 1, "the commit after the stream was taken again")
    bus.release(user)
