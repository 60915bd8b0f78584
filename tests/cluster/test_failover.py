"""Failures under a publishing load: the owner killed, the owner paused past its lease, Redis killed.

In each, a service publishes fills through a node that stays up and retries
each one (same id) on ``unavailable``; a kernel client watches from another
node. Afterwards the acks are held against everything that can show a fill:
the client's fill callbacks (each acked fill exactly once), the journal read
back from seq 0 (contiguous, each fill once), and the REST snapshot (the
books equal to ``AveragingBook``, computed from the acked publishes alone).
Killing the owner runs on one redis-server and on a Redis Cluster.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

import pytest

from tests.support import events as ev
from tests.support.client import rest_snapshot
from tests.support.cluster import Cluster, until
from tests.support.pipeline import Refused
from tests.support.wait import async_wait_until

from .conftest import OpenLive
from .observing import Held, LiveClient, exactly_once, journal
from .publishing import INITIAL_CASH, UNAVAILABLE, AveragingBook, RetryingPublisher, fill_ids, fill_series

pytestmark = pytest.mark.timeout(90)

# How long acks may stop when an owner dies: its lease, and 2 s to notice, take over and restore.
TAKEOVER_MARGIN_S = 2.0
# Between two fills of a loop: about 20 fills a second keeps every fill of a test in the REST
# snapshot's last 100.
PACE_S = 0.05


async def opened(cluster: Cluster, through: str) -> tuple[RetryingPublisher, AveragingBook]:
    """A publisher on node ``through`` that has given alice her opening cash, and the model of her book."""
    publisher = await RetryingPublisher.connect(cluster.ws_base(through), cluster.tokens.service)
    model = AveragingBook()
    opening = [ev.account(INITIAL_CASH)]
    await publisher.publish("alice", opening)
    model.apply(opening)
    return publisher, model


async def settled_books(
    cluster: Cluster, publisher: RetryingPublisher, model: AveragingBook, live: LiveClient, *, read_on: str
) -> None:
    """Once the client has caught up with the last ack: every acked fill exactly once for the client,
    in the journal and in the snapshot of node ``read_on``, and the books equal the model."""
    tokens = cluster.tokens
    last = publisher.last_seq()
    await live.until_seq(last, timeout=cluster.lease_s + 15)
    acked = publisher.acked_fill_ids()
    rest = await rest_snapshot(cluster.http_base(read_on), tokens.alice)
    assert rest.seq == last, f"the snapshot is at seq {rest.seq}, the last ack at {last}"
    assert model.mismatches(rest) == []
    assert live.held() == Held.of_snapshot(rest), "the client holds what the snapshot shows"
    assert exactly_once(live.delivered, acked, "the client's fill callbacks") == []
    history = await journal(cluster.ws_base(read_on), tokens.alice, rest.epoch, last)
    assert exactly_once(history.fill_ids, acked, "the journal from seq 0") == []
    assert publisher.violations == []


def longest_wait_for_an_ack(publisher: RetryingPublisher, since: float) -> float:
    """The longest stretch after ``since`` with no ack: from ``since`` to the first, or between two."""
    times = [since] + [p.at for p in publisher.acked if p.at > since]
    assert len(times) > 1, "no ack at all after the failure"
    return max(later - earlier for earlier, later in itertools.pairwise(times))


async def test_killing_the_owner_of_a_partition_loses_no_acked_fill_and_acks_resume_within_the_lease(
    any_cluster: Cluster, open_live: OpenLive
) -> None:
    cluster = any_cluster
    owner = await cluster.owner_of("alice")
    through, watching = cluster.others(owner)
    live = open_live([cluster.portfolio_url(watching)], cluster.tokens.alice)
    await live.until_live()
    publisher, model = await opened(cluster, through)
    fills = fill_series("f3", 60)

    async def publish_all() -> None:
        for fill in fills:
            await publisher.publish("alice", [fill], within_s=cluster.lease_s + 10)
            model.apply([fill])
            await asyncio.sleep(PACE_S)  # the loop's pace, not waiting on a condition

    loop = asyncio.create_task(publish_all())

    async def some_acked() -> bool:
        if loop.done():
            loop.result()  # its failure, if it failed
        return len(publisher.acked) > 10

    await async_wait_until(some_acked, timeout=20, what="the first 10 fills to be acked")
    killed_at = time.monotonic()
    cluster.kill9(owner)
    await asyncio.wait_for(loop, timeout=60)

    outage = longest_wait_for_an_ack(publisher, killed_at)
    print(f"acks stopped for {outage:.2f}s; {publisher.refusals} answers were unavailable")
    assert outage <= cluster.lease_s + TAKEOVER_MARGIN_S, (
        f"acks stopped for {outage:.2f}s after the owner was killed (lease {cluster.lease_s}s)"
    )
    assert await cluster.owner_of("alice") in (through, watching)
    assert publisher.acked_fill_ids() == [f.data.id for f in fills]
    await settled_books(cluster, publisher, model, live, read_on=through)


async def test_an_owner_paused_past_its_lease_is_fenced_gives_its_partitions_up_and_doubles_nothing(
    cluster: Cluster, open_live: OpenLive
) -> None:
    owner = await cluster.owner_of("alice")
    through, watching = cluster.others(owner)
    health = await cluster.health(owner)
    assert health is not None
    held_before = set(health["partitions"])
    live = open_live([cluster.portfolio_url(watching)], cluster.tokens.alice)
    await live.until_live()
    publisher, model = await opened(cluster, through)
    fills = iter(fill_series("f4", 200))

    async def publish_next() -> None:
        fill = next(fills)
        await publisher.publish("alice", [fill], within_s=cluster.lease_s + 10)
        model.apply([fill])
        await asyncio.sleep(PACE_S)  # the loop's pace, not waiting on a condition

    for _ in range(5):
        await publish_next()
    stopped_at = time.monotonic()
    cluster.sigstop(owner)
    # Publish on until the pause has outlasted the lease by a second and a few fills were acked meanwhile.
    while time.monotonic() - stopped_at < cluster.lease_s + 1 or len(acked_since(publisher, stopped_at)) < 5:
        await publish_next()
    taken_by = await cluster.owner_of("alice")
    claims = await cluster.claims()
    assert claims is not None
    taken_over = held_before & {p for node, owned in claims.items() if node != owner for p in owned}
    acked_while_paused = len(acked_since(publisher, stopped_at))

    cluster.sigcont(owner)

    async def gave_up() -> dict[str, Any] | None:
        answer = await cluster.health(owner)
        return answer if answer is not None and not set(answer["partitions"]) & taken_over else None

    # At once, before a rebalance may hand it partitions again under new leases.
    woken = await until(
        gave_up,
        timeout=cluster.lease_s,
        what=f"node {owner}, woken, to give up the partitions {sorted(taken_over)} taken over meanwhile",
        seen=lambda: f"its /healthz {cluster.last_health.get(owner)}",
        interval=0.02,
    )
    print(
        f"node {owner} held {sorted(held_before)}; paused, {sorted(taken_over)} were taken over "
        f"({claims}); woken, it reports {woken['partitions']}; {acked_while_paused} fills acked meanwhile"
    )
    continued_at = time.monotonic()
    for _ in range(5):
        await publish_next()
    assert taken_by in (through, watching)
    assert cluster.partition_of("alice") in taken_over
    assert acked_while_paused >= 5, "fills are acked while the old owner is paused"
    assert len(acked_since(publisher, continued_at)) == 5
    await settled_books(cluster, publisher, model, live, read_on=watching)
    await cluster.wait_owned()  # and after all that, each partition has one owner


def acked_since(publisher: RetryingPublisher, moment: float) -> list[str]:
    """The fills acked after ``moment``."""
    return [i for acked in publisher.acked if acked.at > moment for i in fill_ids(acked.events)]


async def test_redis_killed_and_restarted_on_its_aof_loses_nothing_acked_and_nodes_say_degraded_meanwhile(
    cluster: Cluster, open_live: OpenLive
) -> None:
    a, b, _ = cluster.node_ids
    live = open_live([cluster.portfolio_url(b)], cluster.tokens.alice)
    await live.until_live()
    publisher, model = await opened(cluster, a)
    before, during = fill_series("f5", 10), fill_series("f5", 1, start=10)
    after = fill_series("f5", 5, start=11)
    for fill in before:
        await publisher.publish("alice", [fill])
        model.apply([fill])
    await live.until_seq(publisher.last_seq())

    cluster.kill_redis()

    async def every_node(check: str) -> dict[str, dict[str, Any]] | None:
        answers = await asyncio.gather(*(cluster.health(node) for node in cluster.node_ids))
        healths = {node: answer for node, answer in zip(cluster.node_ids, answers, strict=True) if answer}
        if len(healths) < len(cluster.node_ids):
            return None
        if check == "degraded":
            ok = all(h["status"] == "degraded" and h["redis_reachable"] is False and h["reasons"]
                     for h in healths.values())  # fmt: skip
        else:
            ok = all(h["status"] == "healthy" and h["redis_reachable"] is True for h in healths.values())
        return healths if ok else None

    await until(
        lambda: every_node("degraded"),
        timeout=10,
        what="every node to say degraded, with a reason, and redis_reachable false",
        seen=lambda: f"/healthz {cluster.last_health}",
    )
    refused = await publisher.once("alice", during)
    assert isinstance(refused, Refused) and refused.code == UNAVAILABLE, (
        f"a publish while Redis is down: {refused}"
    )

    await asyncio.to_thread(cluster.restart_redis)
    await publisher.publish("alice", during, within_s=20)
    model.apply(during)
    for fill in after:
        await publisher.publish("alice", [fill])
        model.apply([fill])
    await until(
        lambda: every_node("healthy"),
        timeout=15,
        what="every node to be healthy again with redis_reachable true",
        seen=lambda: f"/healthz {cluster.last_health}",
    )

    assert publisher.acked_fill_ids() == [f.data.id for f in before + during + after]
    await settled_books(cluster, publisher, model, live, read_on=cluster.node_ids[2])
