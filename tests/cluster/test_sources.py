"""A source (``--source sim``) on every node runs on exactly one, and moves when its node dies.

Which node runs it is read from the nodes' own logs: a node logs
``event=source_started source=sim node=<id>`` when it starts running the
source and ``event=source_stopped source=sim node=<id>`` when it stops. The
demo user's stream, read on a node that does not run it, shows the market
going on across the takeover.
"""

from __future__ import annotations

import contextlib
import re
import time

import pytest

from tests.support.client import StreamClient
from tests.support.cluster import Cluster, until

from .conftest import StartCluster

pytestmark = pytest.mark.timeout(90)

STARTED = re.compile(r"event=source_started source=sim node=(?P<node>\S+)")
STOPPED = re.compile(r"event=source_stopped source=sim node=(?P<node>\S+)")
# A source's lease is the cluster's --lease-s; this covers noticing the lapse and starting the source.
TAKEOVER_MARGIN_S = 5.0


def simulators(cluster: Cluster, nodes: list[str]) -> dict[str, int]:
    """For each node, how many simulators its log says it runs now (starts less stops)."""
    running = {}
    for node in nodes:
        log = cluster.node(node).log()
        starts, stops = STARTED.findall(log), STOPPED.findall(log)
        assert set(starts) | set(stops) <= {node}, f"node {node}'s log names another node: {starts} {stops}"
        running[node] = len(starts) - len(stops)
    return running


async def one_simulator(cluster: Cluster, nodes: list[str], timeout: float) -> str:
    """The one node of ``nodes`` that runs the simulator, once exactly one does."""

    async def sole() -> str | None:
        running = simulators(cluster, nodes)
        runners = [node for node, count in running.items() if count == 1]
        return runners[0] if len(runners) == 1 and sum(running.values()) == 1 else None

    return await until(
        sole,
        timeout=timeout,
        what=f"exactly one of {nodes} to run the simulator",
        seen=lambda: f"simulators by node {simulators(cluster, nodes)}",
    )


async def advance(client: StreamClient, batches: int, *, watch_s: float, timeout: float) -> None:
    """Read until ``batches`` more batches have arrived and the stream has been read for ``watch_s``
    (long enough for a node to start a second simulator, were it going to)."""
    target = len(client.batches) + batches
    until_at = time.monotonic() + watch_s

    async def advanced() -> bool:
        with contextlib.suppress(TimeoutError):  # a quiet second: look again
            await client.pump_one(timeout=1)
        return len(client.batches) >= target and time.monotonic() >= until_at

    await until(
        advanced,
        timeout=timeout,
        what=f"{batches} more batches for the demo user, read for {watch_s}s",
        seen=lambda: f"{len(client.batches)} batches in all, at seq {client.state.seq}",
    )


async def test_with_the_simulator_on_every_node_exactly_one_runs_and_another_takes_over_when_its_node_dies(
    start_cluster: StartCluster,
) -> None:
    cluster = start_cluster("--source", "sim")
    everyone = list(cluster.node_ids)
    runner = await one_simulator(cluster, everyone, timeout=cluster.lease_s + TAKEOVER_MARGIN_S)
    watching = cluster.others(runner)[0]
    demo = await StreamClient.connect(cluster.ws_base(watching), cluster.tokens.demo)
    await demo.subscribe()
    await advance(demo, 5, watch_s=cluster.lease_s + 1, timeout=20)
    assert simulators(cluster, everyone) == {node: int(node == runner) for node in everyone}, (
        "still exactly one simulator once the market has moved"
    )

    assert demo.state.account is not None
    equity_before = demo.state.account.equity
    cluster.kill9(runner)
    survivors = cluster.others(runner)
    successor = await one_simulator(cluster, survivors, timeout=cluster.lease_s + TAKEOVER_MARGIN_S)
    seq_at_takeover = demo.state.seq
    await advance(demo, 5, watch_s=cluster.lease_s + 1, timeout=25)
    # The successor carries on from the demo's committed book: opening the account again would add
    # a fresh account's cash (100,000) to the positions kept.
    assert demo.state.account is not None
    assert abs(demo.state.account.equity - equity_before) < 10_000, (equity_before, demo.state.account.equity)

    assert successor in survivors
    assert demo.state.seq is not None and seq_at_takeover is not None and demo.state.seq > seq_at_takeover
    assert simulators(cluster, survivors) == {node: int(node == successor) for node in survivors}
