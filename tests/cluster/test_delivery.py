"""Delivery across nodes: one epoch and one seq on every node, and a client that survives its node.

Both tests run on one redis-server and on a 3-master Redis Cluster (``any_cluster``).
"""

from __future__ import annotations

import pytest

from alphaflow_live.protocol import Event
from tests.support import events as ev
from tests.support.client import rest_snapshot, without_server_time
from tests.support.cluster import Cluster

from .conftest import OpenLive
from .observing import Held, exactly_once, journal, welcome
from .publishing import INITIAL_CASH, AveragingBook, RetryingPublisher, fill_series

pytestmark = pytest.mark.timeout(60)


async def test_a_publish_on_one_node_reaches_a_client_on_another_and_the_snapshot_of_a_third_agrees(
    any_cluster: Cluster, open_live: OpenLive
) -> None:
    cluster, tokens = any_cluster, any_cluster.tokens
    a, b, c = cluster.node_ids
    live = open_live([cluster.portfolio_url(b)], tokens.alice)
    await live.until_live()
    publisher = await RetryingPublisher.connect(cluster.ws_base(a), tokens.service)
    model = AveragingBook()
    fills: list[Event] = [*fill_series("d1", 12)]
    # The opening cash, then the fills three to a publish.
    opening: list[Event] = [ev.account(INITIAL_CASH)]
    messages = [opening, *(fills[i : i + 3] for i in range(0, 12, 3))]

    for events in messages:
        await publisher.publish("alice", events)
        model.apply(events)
    seqs = publisher.acked_seqs()
    last = seqs[-1]
    await live.until_seq(last)
    snapshots = {node: await rest_snapshot(cluster.http_base(node), tokens.alice) for node in (a, b, c)}
    welcomes = {node: await welcome(cluster.ws_base(node), tokens.alice) for node in (a, b, c)}

    assert seqs == list(range(1, len(seqs) + 1)), "one contiguous seq across the cluster, from 1"
    assert publisher.refusals == 0, "every node owned its share before the test began"
    rest = snapshots[c]
    held = live.held()
    assert held == Held.of_snapshot(rest), "the client on b holds exactly what c's snapshot shows"
    assert (rest.epoch, rest.seq) == (held.epoch, last)
    assert model.mismatches(rest) == []
    for node in (a, b):
        assert without_server_time(snapshots[node]) == without_server_time(rest), f"node {node}'s snapshot"
    assert exactly_once(live.delivered, publisher.acked_fill_ids(), "the client on b") == []
    assert publisher.violations == []
    assert {node: w["epoch"] for node, w in welcomes.items()} == dict.fromkeys(welcomes, rest.epoch)
    # PROTOCOL.md, Scale-out: in a cluster, welcome also carries "node": "<node id>".
    assert {node: w.get("node") for node, w in welcomes.items()} == {node: node for node in welcomes}, (
        "every node names itself in its welcome"
    )


async def test_a_client_whose_node_is_killed_resumes_on_another_with_every_fill_exactly_once(
    any_cluster: Cluster, open_live: OpenLive
) -> None:
    cluster, tokens = any_cluster, any_cluster.tokens
    live = open_live(cluster.portfolio_urls(), tokens.alice)
    await live.until_live()
    serving = cluster.node_of_url(live.stream.url)
    through, other = cluster.others(serving)
    publisher = await RetryingPublisher.connect(cluster.ws_base(through), tokens.service)
    before, after = fill_series("d2", 10), fill_series("d2", 10, start=10)
    for fill in before:
        await publisher.publish("alice", [fill])
    await live.until_seq(publisher.last_seq())

    cluster.kill9(serving)
    # The killed node may have owned alice's partition: then these wait (unavailable) for the takeover.
    for fill in after:
        await publisher.publish("alice", [fill], within_s=cluster.lease_s + 10)
    last = publisher.last_seq()
    await live.stream.until(
        lambda s: s.status == "live" and cluster.node_of_url(s.url) != serving and s.seq == last,
        timeout=cluster.lease_s + 15,
    )

    acked = publisher.acked_fill_ids()
    assert acked == [f.data.id for f in before + after]
    assert exactly_once(live.delivered, acked, "the moved client's fill callbacks") == []
    held = live.held()
    assert held.fill_ids == acked, "the client's fills: each acked one once, in order"
    rest = await rest_snapshot(cluster.http_base(other), tokens.alice)
    assert held == Held.of_snapshot(rest)
    assert rest.epoch == held.epoch
    history = await journal(cluster.ws_base(through), tokens.alice, rest.epoch, last)
    assert exactly_once(history.fill_ids, acked, "the journal from seq 0") == []
    assert publisher.violations == []
