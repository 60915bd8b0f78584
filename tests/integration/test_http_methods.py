"""Methods on every HTTP path and what /metrics exposes, over real sockets (defect 13)."""

from __future__ import annotations

import platform

import pytest

import alphaflow_live
from tests.support.client import auth
from tests.support.http import request
from tests.support.server import ServerProcess, Tokens

pytestmark = pytest.mark.timeout(60)

GET_ONLY = ["/healthz", "/metrics", "/api/portfolio/snapshot", "/api/admin/websocket-stats"]
STREAMS = ["/ws/portfolio", "/ws/ingest", "/ws/admin"]


async def test_post_healthz_is_refused_with_405_and_allow(shared_server: ServerProcess) -> None:
    reply = await request(shared_server.port, "POST", "/healthz")

    assert reply.status == 405, f"got {reply.status} {reply.body!r}"
    assert reply.header("Allow") == "GET"
    assert reply.json() == {
        "error": "method_not_allowed",
        "message": "POST is not allowed on /healthz; use GET",
    }


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
@pytest.mark.parametrize("path", [*GET_ONLY, *STREAMS])
async def test_a_method_other_than_get_is_refused_with_405_on_every_path(
    shared_server: ServerProcess, tokens: Tokens, path: str, method: str
) -> None:
    reply = await request(shared_server.port, method, path, auth(tokens.admin))

    assert reply.status == 405, f"{method} {path}: got {reply.status} {reply.body!r}"
    assert reply.json()["error"] == "method_not_allowed"
    assert reply.header("Allow") in ("GET", "GET, OPTIONS")


@pytest.mark.parametrize("path", ["/healthz", "/metrics", *STREAMS])
async def test_options_on_a_stream_or_public_path_is_refused_with_405(
    shared_server: ServerProcess, path: str
) -> None:
    reply = await request(shared_server.port, "OPTIONS", path)

    assert (reply.status, reply.header("Allow")) == (405, "GET")


async def test_options_without_an_origin_lists_a_rest_endpoints_methods(shared_server: ServerProcess) -> None:
    reply = await request(shared_server.port, "OPTIONS", "/api/session")

    assert (reply.status, reply.header("Allow")) == (204, "POST, DELETE, OPTIONS")


async def test_get_on_the_session_endpoint_is_refused_with_405(
    shared_server: ServerProcess, tokens: Tokens
) -> None:
    reply = await request(shared_server.port, "GET", "/api/session", auth(tokens.alice))

    assert (reply.status, reply.header("Allow")) == (405, "POST, DELETE, OPTIONS")


async def test_get_still_answers_on_the_plain_endpoints(shared_server: ServerProcess, tokens: Tokens) -> None:
    health = await request(shared_server.port, "GET", "/healthz")
    snapshot = await request(shared_server.port, "GET", "/api/portfolio/snapshot", auth(tokens.alice))

    assert (health.status, snapshot.status) == (200, 200)


async def test_metrics_carry_process_metrics_and_build_info(shared_server: ServerProcess) -> None:
    reply = await request(shared_server.port, "GET", "/metrics")
    lines = reply.body.decode().splitlines()
    names = {line.split("{")[0].split(" ")[0] for line in lines if line and not line.startswith("#")}

    assert reply.status == 200
    for name in (
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_max_fds",
    ):
        assert name in names, f"{name} missing from /metrics"
    assert (
        f'alphaflow_build_info{{protocol="1",python="{platform.python_version()}",'
        f'version="{alphaflow_live.__version__}"}} 1.0'
    ) in lines
