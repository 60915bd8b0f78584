"""The admin stream, the streaming feature flag, stats, health and metrics."""

from __future__ import annotations

import asyncio
import json

import pytest

from alphaflow_live.protocol import Ack, Stats
from tests.support import admin
from tests.support import events as ev
from tests.support.admin import admin_request
from tests.support.cli import run_cli
from tests.support.client import (
    Publisher,
    StreamClient,
    auth,
    http_get,
    refusal,
    rest_snapshot,
)
from tests.support.server import Tokens
from tests.support.wait import async_wait_until

pytestmark = pytest.mark.timeout(60)


async def test_switching_streaming_off_closes_streams_with_4003_and_refuses_new_ones(
    start_server, tokens
) -> None:
    server = start_server()
    client = await StreamClient.connect(server.ws_base, tokens.alice)
    await client.subscribe()
    publisher = await Publisher.connect(server.ws_base, tokens.service)
    await publisher.publish("alice", [ev.position("AAPL")])

    ack = await admin_request(server, tokens, {"type": "set_streaming", "id": 1, "enabled": False})
    await client.ws.wait_closed()
    status, body = await refusal(server.ws_base, "/ws/portfolio", auth(tokens.alice))
    snapshot = await rest_snapshot(server.http_base, tokens.alice)
    health_status, health_body, _ = await asyncio.to_thread(http_get, f"{server.http_base}/healthz")

    assert isinstance(ack, Ack) and ack.id == 1
    assert (client.ws.close_code, client.ws.close_reason) == (4003, "streaming disabled")
    assert status == 503
    assert body["error"] == "streaming_disabled" and body["fallback"] == "/api/portfolio/snapshot"
    assert [p.symbol for p in snapshot.positions] == ["AAPL"], "the REST snapshot keeps serving"
    assert health_status == 200 and json.loads(health_body)["status"] == "degraded"

    await admin_request(server, tokens, {"type": "set_streaming", "id": 2, "enabled": True})
    again = await StreamClient.connect(server.ws_base, tokens.alice)
    assert again.welcome.user_id == "alice"


async def test_a_server_started_with_streaming_disabled_refuses_streams(start_server, tokens: Tokens) -> None:
    server = start_server("--disable-streaming")

    status, body = await refusal(server.ws_base, "/ws/portfolio", auth(tokens.alice))

    assert (status, body["error"]) == (503, "streaming_disabled")


async def test_get_stats_reports_the_same_as_the_rest_endpoint(start_server, tokens: Tokens) -> None:
    server = start_server("--batch-window-ms", "5")
    client = await StreamClient.connect(server.ws_base, tokens.alice)
    await client.subscribe()
    publisher = await Publisher.connect(server.ws_base, tokens.service)
    await publisher.publish("alice", [ev.fill(), ev.fill()])
    await client.pump_until_seq(2)

    reply = await admin_request(server, tokens, {"type": "get_stats", "id": 2})
    rest = await admin.stats(server.http_base, tokens.admin)

    assert isinstance(reply, Stats) and reply.id == 2
    assert reply.events_in == rest["events_in"] == 2
    assert rest["connections_per_user"] == {"alice": 1}
    assert rest["connections_by_stream"]["portfolio"] == 1
    assert rest["batches_out"] >= 1 and rest["bytes_out"] > 0
    assert rest["latency_ms"]["count"] >= 1 and rest["latency_ms"]["p99"] is not None
    assert rest["memory_rss_bytes"] > 0 and rest["uptime_s"] > 0
    assert rest["health"] == "healthy"


async def test_stats_and_snapshot_endpoints_need_the_right_role(shared_server, tokens: Tokens) -> None:
    base = shared_server.http_base
    cases = [
        ("/api/admin/websocket-stats", None, 401),
        ("/api/admin/websocket-stats", tokens.alice, 403),
        ("/api/admin/websocket-stats", tokens.admin, 200),
        ("/api/portfolio/snapshot", None, 401),
        ("/api/portfolio/snapshot", tokens.service, 403),
        ("/api/portfolio/snapshot", tokens.bob, 200),
    ]
    for path, token, expected in cases:
        status, body, headers = await asyncio.to_thread(http_get, base + path, token)
        assert status == expected, (
            f"{path} with {token and token[:6]}: expected {expected}, got {status} {body!r}"
        )
        assert headers["Content-Type"] == "application/json"


async def test_disconnects_are_counted_by_close_code(start_server, tokens: Tokens) -> None:
    server = start_server()
    client = await StreamClient.connect(server.ws_base, tokens.alice)
    await client.ws.close(code=1000)

    async def counted() -> bool:
        return (await admin.stats(server.http_base, tokens.admin))["disconnects_by_code"].get("1000") == 1

    await async_wait_until(counted, timeout=5, what="the disconnect to be counted")


async def test_healthz_answers_anyone(shared_server) -> None:
    status, body, _ = await asyncio.to_thread(http_get, f"{shared_server.http_base}/healthz")

    assert status == 200 and json.loads(body)["status"] == "healthy"


async def test_metrics_are_prometheus_text(shared_server) -> None:
    status, body, headers = await asyncio.to_thread(http_get, f"{shared_server.http_base}/metrics")

    text = body.decode()
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    for name in ("alphaflow_up", "alphaflow_connections", "alphaflow_events_in_total",
                 "alphaflow_delivery_latency_seconds_bucket", "alphaflow_memory_rss_bytes"):  # fmt: skip
        assert name in text, f"{name} missing from /metrics"


async def test_the_admin_commands_switch_streaming_and_print_stats(start_server, tokens: Tokens) -> None:
    server = start_server()
    env = {"ALPHAFLOW_URL": f"{server.ws_base}/ws/portfolio", "ALPHAFLOW_ADMIN_TOKEN": tokens.admin}

    off = await asyncio.to_thread(run_cli, "admin", "streaming", "off", env=env)
    refused_status, _ = await refusal(server.ws_base, "/ws/portfolio", auth(tokens.alice))
    on = await asyncio.to_thread(run_cli, "admin", "streaming", "on", env=env)
    stats = await asyncio.to_thread(
        run_cli, "admin", "stats", "--url", server.ws_base, env={"ALPHAFLOW_ADMIN_TOKEN": tokens.admin}
    )

    assert (off.returncode, off.stdout.strip()) == (0, "streaming off"), off.stderr
    assert refused_status == 503
    assert (on.returncode, on.stdout.strip()) == (0, "streaming on"), on.stderr
    assert stats.returncode == 0 and json.loads(stats.stdout)["streaming_enabled"] is True


async def test_the_admin_command_explains_a_refused_token(start_server, tokens: Tokens) -> None:
    server = start_server()

    result = await asyncio.to_thread(
        run_cli, "admin", "stats", "--url", server.ws_base, env={"ALPHAFLOW_ADMIN_TOKEN": tokens.alice}
    )

    assert result.returncode == 1
    assert "HTTP 403" in result.stderr and "wrong_role" in result.stderr
    assert tokens.alice not in result.stderr
