"""What holds for the whole cluster, whichever node is asked: the per-user limit, streaming flag, stats."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from alphaflow_live.codes import PORTFOLIO_PATH
from alphaflow_live.protocol import Ack
from tests.support import admin
from tests.support.admin import admin_request
from tests.support.cli import run_cli
from tests.support.client import StreamClient, auth, handshake, refusal
from tests.support.cluster import Cluster, until
from tests.support.wait import async_wait_until

from .conftest import StartCluster
from .observing import admitted, closed_with

pytestmark = pytest.mark.timeout(60)

# A dead node's connections stop counting within its lease and this (PROTOCOL: "within a few seconds").
EXPIRY_MARGIN_S = 2.0


async def test_the_per_user_limit_counts_every_node_and_a_dead_nodes_connections_stop_counting(
    start_cluster: StartCluster,
) -> None:
    cluster = start_cluster("--max-per-user", "2")
    tokens = cluster.tokens
    a, b, c = cluster.node_ids
    await StreamClient.connect(cluster.ws_base(a), tokens.alice)
    await StreamClient.connect(cluster.ws_base(b), tokens.alice)

    status, body = await refusal(cluster.ws_base(c), PORTFOLIO_PATH, auth(tokens.alice))
    other_user = await StreamClient.connect(cluster.ws_base(c), tokens.bob)

    assert (status, body["error"]) == (429, "too_many_connections"), "the third of alice's, on a third node"
    assert other_user.welcome.user_id == "bob"

    killed_at = time.monotonic()
    cluster.kill9(b)
    third = await async_wait_until(
        lambda: admitted(cluster.ws_base(c), tokens.alice),
        timeout=cluster.lease_s + EXPIRY_MARGIN_S,
        what=f"node {b}'s connection of alice's to stop counting after its kill -9",
        interval=0.1,
    )
    admitted_after = time.monotonic() - killed_at
    status, body = await refusal(cluster.ws_base(a), PORTFOLIO_PATH, auth(tokens.alice))

    assert third.welcome.user_id == "alice"
    assert (status, body["error"]) == (429, "too_many_connections"), "a's and c's still count"
    print(f"a new connection was admitted {admitted_after:.2f}s after the kill (lease {cluster.lease_s}s)")


async def test_streaming_switched_off_on_one_node_closes_streams_and_refuses_handshakes_on_every_node(
    cluster: Cluster,
) -> None:
    tokens = cluster.tokens
    a, b, _ = cluster.node_ids
    clients = {
        node: await StreamClient.connect(cluster.ws_base(node), tokens.alice) for node in cluster.node_ids
    }
    for client in clients.values():
        await client.subscribe()

    ack = await admin_request(cluster.node(a), tokens, {"type": "set_streaming", "id": 1, "enabled": False})
    closes = await asyncio.gather(
        *(closed_with(client.ws, timeout=cluster.lease_s + 3) for client in clients.values())
    )
    refusals = [await refusal(cluster.ws_base(node), PORTFOLIO_PATH, auth(tokens.alice)) for node in clients]

    assert isinstance(ack, Ack) and ack.id == 1
    assert dict(zip(clients, closes, strict=True)) == dict.fromkeys(clients, (4003, "streaming disabled"))
    for node, (status, body) in zip(clients, refusals, strict=True):
        assert (status, body["error"], body.get("fallback")) == (
            503,
            "streaming_disabled",
            "/api/portfolio/snapshot",
        ), f"node {node}"

    on = await asyncio.to_thread(
        run_cli,
        "admin",
        "streaming",
        "on",
        "--url",
        cluster.ws_base(b),
        env={"ALPHAFLOW_ADMIN_TOKEN": tokens.admin},
    )
    assert (on.returncode, on.stdout.strip()) == (0, "streaming on"), on.stderr
    for node in cluster.node_ids:

        async def accepted(node: str = node) -> bool:
            return (await handshake(cluster.ws_base(node), PORTFOLIO_PATH, auth(tokens.alice)))[0] == 101

        await async_wait_until(accepted, timeout=5, what=f"node {node} to accept streams again", interval=0.1)


async def test_admin_stats_on_any_node_total_the_live_nodes_and_report_each(cluster: Cluster) -> None:
    tokens = cluster.tokens
    a, b, c = cluster.node_ids
    for node, user in ((a, tokens.alice), (b, tokens.alice), (c, tokens.bob)):
        await StreamClient.connect(cluster.ws_base(node), user)
    seen: dict[str, Any] = {}

    async def reporting(asked: str, nodes: set[str], per_user: dict[str, int]) -> dict[str, Any] | None:
        seen[asked] = report = await admin.stats(cluster.http_base(asked), tokens.admin)
        fits = set(report.get("nodes", {})) == nodes and report["connections_per_user"] == per_user
        return report if fits else None

    stats = await until(
        lambda: reporting(a, {a, b, c}, {"alice": 2, "bob": 1}),
        timeout=cluster.lease_s + 3,
        what=f"node {a}'s stats to count every node's connections",
        seen=lambda: seen,
    )
    nodes = stats["nodes"]
    assert stats["connections_by_stream"]["portfolio"] == 3
    assert {node: nodes[node]["connections_per_user"] for node in nodes} == {
        a: {"alice": 1},
        b: {"alice": 1},
        c: {"bob": 1},
    }
    assert stats["connections_total"] == sum(report["connections_total"] for report in nodes.values())

    cluster.kill9(c)
    await until(
        lambda: reporting(b, {a, b}, {"alice": 2}),
        timeout=cluster.lease_s + EXPIRY_MARGIN_S,
        what=f"node {c} to leave node {b}'s stats after its kill -9",
        seen=lambda: seen,
    )
