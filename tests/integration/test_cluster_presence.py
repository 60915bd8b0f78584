"""Cluster presence on a real redis-server (and a real 3-master Redis Cluster where slots matter).

Each ``ClusterPresence`` stands for one node. The per-user limit holds
across nodes, a node that stops refreshing (as after kill -9) stops counting
within its lease, the streaming flag set on one node reaches another's loop
within a second, stats from every live node merge and a stale node's go, and
a Redis that dies makes ``acquire`` unavailable while ``run`` reports the
outage once and recovers by itself. ``merge_reports`` is checked field by
field against ``StatsReport``.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import msgspec
import pytest

from alphaflow_live.protocol import LatencySummary, StatsReport
from alphaflow_server.cluster import Unavailable
from alphaflow_server.cluster.merge import merge_reports
from alphaflow_server.cluster.presence import STATS_KEY, ClusterPresence, conns_key
from tests.support.redis import Client, Connect, RedisServer, clients_of
from tests.support.wait import async_wait_until

pytestmark = pytest.mark.timeout(60)

LEASE_S = 1.0


@pytest.fixture
async def server_client(redis_server: RedisServer) -> AsyncIterator[Connect]:
    """Clients of one redis-server, for what does not depend on slots."""
    async for opener in clients_of(redis_server):
        yield opener


async def node(open_client: Connect, node_id: str, lease_s: float = LEASE_S) -> ClusterPresence:
    return ClusterPresence(await open_client(), node_id=node_id, lease_s=lease_s)


async def stored_counts(client: Client, user: str) -> dict[str, int]:
    """Each node's count of ``user`` as Redis holds it (expired fields included until a script sweeps)."""
    fields = await client.hgetall(conns_key(user))
    return {n.decode(): int(v.split(b":")[0]) for n, v in fields.items()}


@dataclass
class Loop:
    """A node's ``run()`` in a task, and what it told its callbacks."""

    presence: ClusterPresence
    flags: list[bool] = field(default_factory=list)
    errors: list[Exception | None] = field(default_factory=list)
    reports: int = 0

    def report(self) -> dict[str, Any]:
        self.reports += 1
        return msgspec.to_builtins(sample_report(connections=self.reports))


@asynccontextmanager
async def running(presence: ClusterPresence) -> AsyncIterator[Loop]:
    loop = Loop(presence)
    task = asyncio.create_task(
        presence.run(report=loop.report, on_streaming=loop.flags.append, on_error=loop.errors.append)
    )
    try:
        yield loop
    finally:
        alive = not task.done()
        await stop(task)
    assert alive, "run() ended by itself: it must run until cancelled"


async def stop(task: asyncio.Task[None]) -> None:
    """Cancel ``run()`` and see it end (not ``await task``: that would hang if run() ignored the cancel)."""
    task.cancel()
    done, _ = await asyncio.wait([task], timeout=5)
    assert done, "run() was still running 5s after it was cancelled"
    assert task.cancelled(), f"run() ended with {task.exception()!r} instead of the cancel"


def sample_report(*, connections: int = 1, **changes: Any) -> StatsReport:
    report = StatsReport(
        health="healthy",
        health_reasons=[],
        streaming_enabled=True,
        uptime_s=10.0,
        memory_rss_bytes=1000,
        replay_events=5,
        replay_bytes=500,
        connections_total=connections,
        connections_by_stream={"portfolio": connections},
        connections_per_user={"alice": connections},
        handshakes_refused={},
        events_in=100,
        events_delivered=100,
        batches_out=20,
        snapshots_out=2,
        bytes_out=4000,
        batch_efficiency=0.8,
        slow_consumer_resyncs=0,
        latency_ms=LatencySummary(count=100, p50=1.0, p95=2.0, p99=3.0, max=4.0),
        disconnects_by_code={"1000": 1},
    )
    return msgspec.structs.replace(report, **changes)


# ------------------------------------------------------------------ connection counts


async def test_the_connection_limit_holds_across_nodes(open_client: Connect) -> None:
    a, b = await node(open_client, "a"), await node(open_client, "b")
    assert [await a.acquire("alice", 3), await a.acquire("alice", 3), await b.acquire("alice", 3)] == [
        True,
        True,
        True,
    ]
    assert not await a.acquire("alice", 3), "a fourth connection was let in on the node holding two"
    assert not await b.acquire("alice", 3), "a fourth connection was let in on the node holding one"
    assert (a.local_count("alice"), b.local_count("alice")) == (2, 1)
    assert await stored_counts(await open_client(), "alice") == {"a": 2, "b": 1}
    assert await a.acquire("bob", 3), "another user's count was mixed in"


async def test_release_frees_a_slot_for_another_node(open_client: Connect) -> None:
    a, b = await node(open_client, "a"), await node(open_client, "b")
    for _ in range(2):
        assert await a.acquire("carol", 2)
    assert not await b.acquire("carol", 2)
    await a.release("carol")
    assert a.local_count("carol") == 1
    assert await b.acquire("carol", 2), "a released slot stayed taken"
    assert not await a.acquire("carol", 2)


async def test_a_connection_without_a_limit_counts_but_is_never_refused(server_client: Connect) -> None:
    a, b = await node(server_client, "a"), await node(server_client, "b")
    for _ in range(4):
        assert await a.acquire("svc", None)
    assert not await b.acquire("svc", 4), "unlimited connections were not counted"
    assert await b.acquire("svc", None)
    assert a.local_count("svc") == 4


async def test_concurrent_acquires_on_two_nodes_let_in_exactly_the_limit(open_client: Connect) -> None:
    a, b = await node(open_client, "a"), await node(open_client, "b")
    answers = await asyncio.gather(*(n.acquire("dave", 5) for n in (a, b) for _ in range(10)))
    assert answers.count(True) == 5, f"expected exactly 5 of 20 concurrent acquires, got {answers}"
    assert a.local_count("dave") + b.local_count("dave") == 5
    stored = await stored_counts(await open_client(), "dave")
    assert stored == {n.node_id: n.local_count("dave") for n in (a, b) if n.local_count("dave")}, stored


async def test_a_node_that_stops_refreshing_stops_counting_within_its_lease(open_client: Connect) -> None:
    dying, other = await node(open_client, "dying"), await node(open_client, "other")
    users = [f"user{i}" for i in range(6)]  # in several slots of a Redis Cluster
    for user in users:
        assert await dying.acquire(user, 1)
    async with running(dying):
        # Past twice the lease, refreshes keep every user's count.
        until = time.monotonic() + 2.5 * LEASE_S
        while time.monotonic() < until:
            for user in users:
                assert not await other.acquire(user, 1), f"{user}'s count expired while its node refreshed"
            await asyncio.sleep(0.05)
    # Cancelled without leave(): as if killed with SIGKILL. The last refresh was at most lease/3 ago.
    stopped = time.monotonic()
    assert not await other.acquire(users[0], 1)

    async def all_free() -> bool:
        return all([await other.acquire(user, 1) for user in users if not other.local_count(user)])

    await async_wait_until(all_free, timeout=5 * LEASE_S, what="the dead node's counts to expire")
    elapsed = time.monotonic() - stopped
    assert elapsed <= LEASE_S + 0.3, f"the dead node still counted {elapsed:.2f}s after it stopped"


async def test_a_node_restarted_under_the_same_id_counts_only_its_new_connections(
    server_client: Connect,
) -> None:
    old = await node(server_client, "n1", lease_s=30)
    for _ in range(3):
        assert await old.acquire("erin", 5)
    await old.release("erin")  # a later generation than the new node's first
    new = await node(server_client, "n1", lease_s=30)
    assert await new.acquire("erin", 5)
    assert await stored_counts(await server_client(), "erin") == {"n1": 1}


async def test_a_release_while_redis_is_away_is_written_by_the_next_refresh(
    redis_server: RedisServer, server_client: Connect
) -> None:
    a = await node(server_client, "a", lease_s=30)
    for _ in range(2):
        assert await a.acquire("frank", 5)
    redis_server.kill()
    await a.release("frank")  # does not raise
    assert a.local_count("frank") == 1
    redis_server.restart()

    async def refreshed() -> bool:
        try:
            await a.refresh()  # Redis restarted: its scripts are loaded again on the way
        except Unavailable:
            return False
        return True

    await async_wait_until(refreshed, timeout=10, what="a refresh once Redis is back")
    assert await stored_counts(await server_client(), "frank") == {"a": 1}
    await a.release("frank")
    # Zero stays as a tombstone (until it expires), so a late older write cannot count it again.
    assert await stored_counts(await server_client(), "frank") == {"a": 0}


async def test_leave_takes_the_nodes_share_away_at_once(server_client: Connect) -> None:
    a, b = await node(server_client, "a", lease_s=30), await node(server_client, "b", lease_s=30)
    assert await a.acquire("gina", 1)
    await a.publish_stats(msgspec.to_builtins(sample_report()))
    await a.leave()
    assert a.local_count("gina") == 0
    assert await b.acquire("gina", 1), "the node's count outlived leave()"
    assert "a" not in await b.node_reports()
    assert not await (await server_client()).hexists(STATS_KEY, "a")


# ------------------------------------------------------------------ the streaming flag


async def test_the_flag_set_on_one_node_reaches_anothers_loop_within_a_second(open_client: Connect) -> None:
    switch, watcher = await node(open_client, "switch"), await node(open_client, "watcher")
    assert await watcher.streaming(), "a missing flag must mean streaming is on"
    async with running(watcher) as loop:
        await async_wait_until(
            lambda: _true(loop.flags == [True]), timeout=5, what="on_streaming(True) at start"
        )
        started = time.monotonic()
        await switch.set_streaming(False)
        await async_wait_until(
            lambda: _true(loop.flags == [True, False]), timeout=5, what="on_streaming(False)"
        )
        assert time.monotonic() - started < 1.0
        await switch.set_streaming(False)  # no change: no call
        await switch.set_streaming(True)
        await async_wait_until(lambda: _true(len(loop.flags) >= 3), timeout=5, what="on_streaming(True)")
        assert loop.flags == [True, False, True], "on_streaming must fire once per change"
    assert await switch.streaming()


async def _true(value: bool) -> bool:
    return value


async def test_run_ends_when_cancelled_at_any_moment(server_client: Connect) -> None:
    # On Python 3.11, redis-py's writes go through asyncio.wait_for, which can swallow a cancel.
    a = await node(server_client, "a")
    for user in ("ivy", "jack"):
        assert await a.acquire(user, None)
    rng = random.Random(11)
    for _ in range(40):
        task = asyncio.create_task(
            a.run(report=lambda: {"events_in": 1}, on_streaming=lambda _: None, on_error=lambda _: None)
        )
        # Past the first rounds (flag, refresh, stats) at a different point each time.
        await asyncio.sleep(rng.uniform(0, 0.01))
        await stop(task)


async def test_a_callback_that_raises_does_not_stop_the_loop(server_client: Connect) -> None:
    a = await node(server_client, "a")
    calls: list[bool] = []
    errors: list[Exception | None] = []

    def broken(enabled: bool) -> None:
        calls.append(enabled)
        raise RuntimeError("a bug in the server's handler")

    task = asyncio.create_task(
        a.run(
            report=lambda: msgspec.to_builtins(sample_report()), on_streaming=broken, on_error=errors.append
        )
    )
    try:
        await async_wait_until(lambda: _true(calls == [True]), timeout=5, what="on_streaming at start")

        async def published() -> bool:
            return "a" in await a.node_reports()

        await async_wait_until(published, timeout=5, what="stats published after the callback failed")
        assert not task.done(), "run() ended after a callback raised"
        assert errors == [], "a callback's failure was reported as a Redis outage"
    finally:
        await stop(task)


# ------------------------------------------------------------------ node stats


async def test_stats_from_two_nodes_merge(open_client: Connect) -> None:
    a, b = await node(open_client, "a"), await node(open_client, "b")
    await a.publish_stats(msgspec.to_builtins(sample_report(connections=2)))
    await b.publish_stats(
        msgspec.to_builtins(sample_report(connections=3, health="degraded", health_reasons=["redis: slow"]))
    )
    reports = await a.node_reports()
    assert sorted(reports) == ["a", "b"]
    merged = msgspec.convert(merge_reports(reports), StatsReport)
    assert merged.connections_total == 5
    assert merged.connections_per_user == {"alice": 5}
    assert merged.events_in == 200
    assert merged.health == "degraded" and merged.health_reasons == ["b: redis: slow"]


async def test_a_stale_nodes_report_disappears_after_the_lease(server_client: Connect) -> None:
    live, stale = await node(server_client, "live"), await node(server_client, "stale")
    await stale.publish_stats(msgspec.to_builtins(sample_report()))
    published = time.monotonic()
    async with running(live):

        async def stale_gone() -> bool:
            return "stale" not in await live.node_reports()

        assert "stale" in await live.node_reports()
        await async_wait_until(stale_gone, timeout=5 * LEASE_S, what="the stale node's report to go")
        assert time.monotonic() - published <= LEASE_S + 0.3
        assert "live" in await live.node_reports(), "a node publishing every second looked stale"
    assert not await (await server_client()).hexists(STATS_KEY, "stale"), "the stale entry was kept"


# ------------------------------------------------------------------ Redis going away


async def test_redis_down_makes_acquire_unavailable_and_run_recovers(
    redis_server: RedisServer, server_client: Connect
) -> None:
    a = await node(server_client, "a")
    assert await a.acquire("hank", 5)
    rounds = 0
    read_flag = a.streaming

    async def counted_flag_read() -> bool:
        nonlocal rounds
        rounds += 1
        return await read_flag()

    a.streaming = counted_flag_read  # type: ignore[method-assign]
    async with running(a) as loop:
        await async_wait_until(lambda: _true(loop.reports > 0), timeout=5, what="the first report")
        redis_server.kill()
        killed = time.monotonic()
        with pytest.raises(Unavailable):
            async with asyncio.timeout(10):
                await a.acquire("hank", 5)
        assert a.local_count("hank") == 1, "a refused acquire was counted"
        await async_wait_until(lambda: _true(bool(loop.errors)), timeout=10, what="on_error(exc)")
        failed_at = rounds
        # Retries go on, and the node's lease lapses, while Redis stays away.
        await async_wait_until(
            lambda: _true(rounds >= failed_at + 3 and time.monotonic() - killed > 1.2 * LEASE_S),
            timeout=10,
            what="three more failed rounds and the lease to lapse",
        )
        assert loop.errors == loop.errors[:1], f"on_error was called more than once: {loop.errors}"
        redis_server.restart()
        await async_wait_until(
            lambda: _true(loop.errors[-1:] == [None]), timeout=10, what="on_error(None) after the restart"
        )
        assert len(loop.errors) == 2 and isinstance(loop.errors[0], Unavailable), loop.errors
        client = await server_client()

        async def rewritten() -> bool:
            return await stored_counts(client, "hank") == {"a": 1}

        await async_wait_until(rewritten, timeout=5, what="the node's count written again after recovery")
        assert await a.acquire("hank", 2)
        assert not await a.acquire("hank", 2)


# ------------------------------------------------------------------ merge_reports


def test_merge_sums_counters_and_keeps_every_field_of_the_report() -> None:
    reports = {
        "n1": msgspec.to_builtins(
            sample_report(connections=1, uptime_s=5.0, disconnects_by_code={"1000": 2})
        ),
        "n2": msgspec.to_builtins(
            sample_report(
                connections=2,
                connections_per_user={"alice": 1, "bob": 1},
                disconnects_by_code={"1001": 1},
                events_delivered=300,
                batches_out=20,
                latency_ms=LatencySummary(count=50, p50=0.5, p95=9.0, p99=9.5, max=10.0),
            )
        ),
    }
    merged = merge_reports(reports)
    # Every field but who answered and the per-node reports, which the answering node adds.
    expected = {f.encode_name for f in msgspec.structs.fields(StatsReport)} - {"node_id", "nodes"}
    assert set(merged) == expected, f"fields missing: {expected - set(merged)}"
    report = msgspec.convert(merged, StatsReport)
    assert report.connections_total == 3
    assert report.connections_per_user == {"alice": 2, "bob": 1}
    assert report.disconnects_by_code == {"1000": 2, "1001": 1}
    assert report.memory_rss_bytes == 2000 and report.replay_bytes == 1000
    assert report.uptime_s == 10.0
    assert report.batch_efficiency == pytest.approx(1 - 40 / 400), "efficiency not from the summed parts"
    assert report.latency_ms == LatencySummary(count=150, p50=1.0, p95=9.0, p99=9.5, max=10.0)


def test_merge_reports_the_worst_health_and_every_reason_by_node() -> None:
    merged = merge_reports(
        {
            "n1": msgspec.to_builtins(sample_report(health="degraded", health_reasons=["engine: slow"])),
            "n2": msgspec.to_builtins(sample_report(health="offline", health_reasons=["redis: down"])),
            "n3": msgspec.to_builtins(sample_report(streaming_enabled=False)),
        }
    )
    assert merged["health"] == "offline"
    assert merged["health_reasons"] == ["n1: engine: slow", "n2: redis: down"]
    assert merged["streaming_enabled"] is False


def test_merge_weighs_efficiency_when_its_parts_are_missing_and_keeps_unknown_keys() -> None:
    old = msgspec.to_builtins(sample_report(batch_efficiency=0.5, events_delivered=300))
    new = msgspec.to_builtins(sample_report(batch_efficiency=0.9, events_delivered=100))
    del old["batches_out"]
    new["queued_frames"] = 7  # a newer node's field
    merged = merge_reports({"old": old, "new": new})
    assert merged["batch_efficiency"] == pytest.approx((0.5 * 300 + 0.9 * 100) / 400)
    assert merged["batches_out"] == 20, "a field was not merged over the nodes that have it"
    assert merged["queued_frames"] == 7


def test_merge_with_no_reports_says_so() -> None:
    with pytest.raises(ValueError, match="no reports"):
        merge_reports({})
