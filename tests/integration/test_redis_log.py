"""The commit log on a real redis-server and a real 3-master Redis Cluster.

The tests that take ``deployment`` run on both: seqs stay contiguous
whoever commits, a fenced commit changes nothing, resume reads exactly what
was missed or says it is gone, every commit is published, and nothing acked
is lost when Redis is killed with SIGKILL and started again on its AOF. A
Redis that is full (one server is enough to show it) refuses as unavailable.
"""

from __future__ import annotations

import asyncio
import random
import time

import msgspec
import pytest

from alphaflow_live.protocol import Event, encode
from alphaflow_server.cluster import (
    Committed,
    Fenced,
    Gone,
    RedisLog,
    Replay,
    Retention,
    Unavailable,
    unsequenced,
    user_keys,
)
from tests.support import events as ev
from tests.support.redis import Connect, Deployment, LiveSubscriber, RedisServer, connect

pytestmark = pytest.mark.timeout(60)

OWNER = 7  # the fencing token of the partition's owner in these tests
_decode = msgspec.json.Decoder(Event).decode


async def owned_log(open_client: Connect, user: str, retention: Retention | None = None) -> RedisLog:
    log = RedisLog(await open_client(), retention=retention)
    await log.claim(user, OWNER)
    return log


def fills(count: int, tag: str) -> list[Event]:
    return [ev.fill(f"{tag}-{i}") for i in range(count)]


async def commit(log: RedisLog, user: str, events: list[Event], token: int = OWNER) -> Committed:
    return await log.commit(user, token, [unsequenced(event) for event in events])


async def commit_snapshotted(log: RedisLog, user: str, events: list[Event]) -> Committed:
    """A commit, then a snapshot at its last seq, as an owner keeps them: the stream may be trimmed
    up to the snapshot, never past it."""
    committed = await commit(log, user, events)
    assert await log.checkpoint(
        user, OWNER, committed.epoch, committed.last_seq, b'{"at":%d}' % committed.last_seq
    )
    return committed


async def read_all(log: RedisLog, user: str) -> Replay:
    head = await log.head(user)
    replay = await log.read_after(user, head.epoch, 0)
    assert isinstance(replay, Replay), f"expected the whole stream, got {replay}"
    return replay


def sequenced(events: list[Event], first_seq: int) -> list[bytes]:
    """What the stream must hold for ``events`` committed from ``first_seq``: ``encode`` at each seq."""
    return [encode(msgspec.structs.replace(e, seq=first_seq + i)) for i, e in enumerate(events)]


async def test_two_clients_committing_at_once_get_contiguous_seqs(open_client: Connect) -> None:
    user = "alice"
    logs = [await owned_log(open_client, user), RedisLog(await open_client())]
    rng = random.Random(15)
    plans = [[fills(rng.randint(1, 3), f"w{w}c{c}") for c in range(30)] for w in range(2)]

    async def worker(log: RedisLog, plan: list[list[Event]]) -> list[tuple[Committed, list[Event]]]:
        return [(await commit(log, user, events), events) for events in plan]

    done = await asyncio.gather(*(worker(log, plan) for log, plan in zip(logs, plans, strict=True)))

    results = sorted((c for worker_done in done for c in worker_done), key=lambda c: c[0].first_seq)
    total = sum(len(events) for plan in plans for events in plan)
    ranges = [(c.first_seq, c.last_seq) for c, _ in results]
    assert [first for first, _ in ranges] == [1] + [last + 1 for _, last in ranges[:-1]], ranges
    assert ranges[-1][1] == total
    stream = await read_all(logs[0], user)
    assert stream.head == total and len(stream.events) == total
    for committed, events in results:
        held = stream.events[committed.first_seq - 1 : committed.last_seq]
        assert held == committed.events == sequenced(events, committed.first_seq)


async def test_a_fenced_commit_changes_nothing(open_client: Connect) -> None:
    user = "bob"
    old_owner = await owned_log(open_client, user)
    await commit(old_owner, user, fills(2, "before"))
    new_owner = RedisLog(await open_client())
    async with LiveSubscriber(await open_client(), user_keys(user).live) as live:
        assert (await new_owner.claim(user, OWNER + 1)).seq == 2

        with pytest.raises(Fenced) as refused:
            await commit(old_owner, user, fills(1, "stale"))
        assert refused.value.owner_token == OWNER + 1
        with pytest.raises(Fenced):
            await old_owner.claim(user, OWNER)  # an older token cannot take the user back

        assert (await old_owner.head(user)).seq == 2
        after = await commit(new_owner, user, fills(1, "after"), token=OWNER + 1)
        assert after.first_seq == 3
        published = await live.next()
        assert (published.first_seq, published.last_seq) == (3, 3), "the fenced commit was published"
    stream = await read_all(new_owner, user)
    assert [_decode(raw).data.id for raw in stream.events] == ["before-0", "before-1", "after-0"]


async def test_resume_reads_exactly_the_events_after_a_seq(open_client: Connect) -> None:
    user = "carol"
    log = await owned_log(open_client, user)
    stamped: list[bytes] = []
    for size in (1, 4, 2, 3):
        stamped += (await commit(log, user, fills(size, f"c{len(stamped)}"))).events
    epoch = (await log.head(user)).epoch

    for seq in range(len(stamped) + 1):
        replay = await log.read_after(user, epoch, seq)
        assert isinstance(replay, Replay) and replay.events == stamped[seq:], f"resume from {seq}: {replay}"
        assert replay.complete and replay.head == len(stamped)

    paged: list[bytes] = []
    seq = 0
    while True:
        page = await log.read_after(user, epoch, seq, limit=3)
        assert isinstance(page, Replay) and len(page.events) <= 3
        paged += page.events
        seq = page.last_seq
        if page.complete:
            break
    assert paged == stamped

    assert await log.read_after(user, "e-another", 0) == Gone("epoch", epoch, len(stamped))
    assert await log.read_after(user, epoch, len(stamped) + 1) == Gone("ahead", epoch, len(stamped))
    assert await log.read_after("nobody", epoch, 0) == Gone("no_stream", None, 0)


async def test_retention_keeps_the_last_events_and_reports_the_range_gone(open_client: Connect) -> None:
    by_count = await owned_log(open_client, "dave", Retention(retain_events=3, retain_seconds=0))
    for i in range(10):
        await commit_snapshotted(by_count, "dave", fills(1, f"d{i}"))
    epoch = (await by_count.head("dave")).epoch
    kept = await by_count.read_after("dave", epoch, 7)
    assert isinstance(kept, Replay) and [_decode(raw).seq for raw in kept.events] == [8, 9, 10]
    assert await by_count.read_after("dave", epoch, 6) == Gone("trimmed", epoch, 10)

    # Young events stay past the count, up to the memory bound.
    capped = await owned_log(open_client, "erin", Retention(retain_events=3, retain_seconds=60, max_events=6))
    await commit_snapshotted(capped, "erin", fills(10, "e"))
    epoch = (await capped.head("erin")).epoch
    kept = await capped.read_after("erin", epoch, 4)
    assert isinstance(kept, Replay) and len(kept.events) == 6
    assert await capped.read_after("erin", epoch, 3) == Gone("trimmed", epoch, 10)


async def test_retention_keeps_the_last_seconds_then_lets_older_events_go(open_client: Connect) -> None:
    user, window = "frank", 1.0
    log = await owned_log(open_client, user, Retention(retain_events=2, retain_seconds=window))
    started = time.monotonic()
    await commit_snapshotted(log, user, fills(10, "old"))
    epoch = (await log.head(user)).epoch
    assert isinstance(await log.read_after(user, epoch, 0), Replay), "young events went before their time"

    deadline = started + window + 5.0
    while isinstance(await log.read_after(user, epoch, 0), Replay):
        assert time.monotonic() < deadline, "events older than the window were never trimmed"
        await commit_snapshotted(log, user, fills(1, "tick"))
        await asyncio.sleep(0.05)
    assert time.monotonic() - started >= window * 0.9, "events went before the window was over"
    # The ticks of the last moments are younger than the window: all still there.
    head = (await log.head(user)).seq
    recent = await log.read_after(user, epoch, head - 5)
    assert isinstance(recent, Replay) and len(recent.events) == 5


async def test_events_after_the_snapshot_stay_and_prime_reads_them_with_it(open_client: Connect) -> None:
    user = "gwen"
    log = await owned_log(open_client, user, Retention(retain_events=2, retain_seconds=0))
    assert await log.prime(user) is not None  # the claim made the epoch: an empty stream
    await commit(log, user, fills(4, "before"))
    epoch = (await log.head(user)).epoch
    # No snapshot yet: a node could only prime from the first event, so nothing is trimmed.
    primed = await log.prime(user)
    assert primed is not None and (primed.first_seq, primed.snap_seq, len(primed.events)) == (1, 0, 4)
    assert await log.checkpoint(user, OWNER, epoch, 3, b'{"at":3}')
    assert not await log.checkpoint(user, OWNER, epoch, 2, b'{"at":2}'), "an older snapshot replaced a newer"
    assert not await log.checkpoint(user, OWNER, epoch, 9, b'{"at":9}'), "a snapshot ahead of the stream"
    with pytest.raises(Fenced):
        await log.checkpoint(user, OWNER - 1, epoch, 4, b"{}")
    await commit(log, user, fills(6, "after"))
    primed = await log.prime(user)
    assert primed is not None and primed.epoch == epoch and primed.seq == 10
    assert (primed.snap_seq, primed.snapshot) == (3, b'{"at":3}')
    assert primed.first_seq <= 4, "events after the snapshot were trimmed"
    assert [_decode(raw).seq for raw in primed.events] == list(range(primed.first_seq, 11))


async def test_a_commit_records_the_book_and_fill_ids_with_its_events(open_client: Connect) -> None:
    user = "hank"
    log = await owned_log(open_client, user)
    events = [ev.fill("f-1"), ev.fill("f-2")]
    committed = await log.commit(
        user, OWNER, [unsequenced(e) for e in events], book=b'{"cash":"1"}', fills=[(0, "f-1"), (1, "f-2")]
    )
    assert await log.book(user) == b'{"cash":"1"}'
    assert await log.fill_ids(user) == [("f-1", committed.first_seq), ("f-2", committed.first_seq + 1)]
    # A commit without a book keeps the stored one; fill ids beyond the bound go, oldest first.
    await log.commit(user, OWNER, [unsequenced(ev.fill("f-3"))], fills=[(0, "f-3")], keep_fills=2)
    assert await log.book(user) == b'{"cash":"1"}'
    assert [fill_id for fill_id, _ in await log.fill_ids(user)] == ["f-2", "f-3"]


async def test_each_commit_reaches_a_sharded_subscriber_without_a_read(open_client: Connect) -> None:
    user = "grace"
    log = await owned_log(open_client, user)
    batches = [[ev.position("AAPL"), ev.account()], [ev.fill("g-1")], [ev.order("o-9"), ev.position_closed()]]
    async with LiveSubscriber(await open_client(), user_keys(user).live) as live:
        committed = [await commit(log, user, events) for events in batches]
        for done, events in zip(committed, batches, strict=True):
            published = await live.next()
            assert (published.epoch, published.first_seq, published.last_seq) == (
                done.epoch,
                done.first_seq,
                done.last_seq,
            )
            assert [bytes(raw) for raw in published.events] == done.events
            assert done.events == sequenced(events, done.first_seq)


async def test_a_commit_sent_again_is_applied_once(open_client: Connect) -> None:
    user = "heidi"
    log = await owned_log(open_client, user)
    events = [unsequenced(e) for e in fills(3, "h")]
    first = await log.commit(user, OWNER, events, commit_id="c-1")

    again = await log.commit(user, OWNER, events, commit_id="c-1")

    assert again.replayed and not first.replayed
    assert (again.first_seq, again.last_seq, again.events) == (1, 3, first.events)
    assert (await read_all(log, user)).events == first.events


async def test_acked_commits_survive_kill_9_of_redis(deployment: Deployment, open_client: Connect) -> None:
    user = "ivan"
    log = await owned_log(open_client, user)
    acked: list[bytes] = []
    for i in range(20):
        acked += (await commit(log, user, fills(1 + i % 3, f"i{i}"))).events
    epoch = (await log.head(user)).epoch

    deployment.kill()
    pending = [unsequenced(e) for e in fills(2, "during")]
    with pytest.raises(Unavailable) as down:
        async with asyncio.timeout(20):
            await log.commit(user, OWNER, pending)
    commit_id = down.value.commit_id
    assert commit_id is not None

    deployment.restart()
    # The client reconnects by itself (and reloads its scripts); the same commit id applies it once.
    async with asyncio.timeout(20):
        while True:
            try:
                after = await log.commit(user, OWNER, pending, commit_id=commit_id)
                break
            except Unavailable:
                await asyncio.sleep(0.1)

    assert (after.epoch, after.first_seq) == (epoch, len(acked) + 1), "the seq did not continue"
    stream = await read_all(log, user)
    assert stream.events == [*acked, *after.events], "an acked event was lost or doubled"


async def test_a_first_use_makes_an_epoch_and_a_lost_meta_a_new_one(open_client: Connect) -> None:
    user = "judy"
    client = await open_client()
    log = RedisLog(client)
    head = await log.head(user)
    assert head.seq == 0 and await log.head(user) == head

    await log.claim(user, OWNER)
    await commit(log, user, fills(2, "j"))
    await client.delete(user_keys(user).meta)

    renewed = await log.claim(user, OWNER)
    assert renewed.seq == 0 and renewed.epoch != head.epoch
    assert await log.read_after(user, head.epoch, 2) == Gone("epoch", renewed.epoch, 0)
    assert (await commit(log, user, fills(1, "k"))).first_seq == 1
    assert len((await read_all(log, user)).events) == 1, "entries of the lost epoch came back"


async def test_a_full_redis_refuses_a_commit_as_unavailable_and_keeps_nothing(
    redis_server: RedisServer,
) -> None:
    user = "kim"
    client = await connect(redis_server)
    try:
        log = RedisLog(client)
        await log.claim(user, OWNER)
        await client.config_set("maxmemory", "1")

        with pytest.raises(Unavailable, match="OutOfMemoryError"):
            await commit(log, user, fills(1, "k"))

        await client.config_set("maxmemory", "0")
        assert (await log.head(user)).seq == 0
        assert (await commit(log, user, fills(1, "k"))).first_seq == 1
    finally:
        await client.aclose()
