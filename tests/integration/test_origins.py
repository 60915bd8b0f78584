"""Browsers checked by Origin, CORS and the session cookie, over real sockets (defect 7)."""

from __future__ import annotations

import pytest

from tests.support.client import auth, handshake, open_ws, recv
from tests.support.http import request
from tests.support.server import ServerProcess, Tokens

pytestmark = pytest.mark.timeout(60)

EVIL = "http://evil.example"
DASH = "https://dash.example.com"


def own_origin(server: ServerProcess) -> str:
    return f"http://127.0.0.1:{server.port}"


def cookie(token: str) -> dict[str, str]:
    return {"Cookie": f"alphaflow_session={token}"}


async def test_a_cookie_handshake_from_another_origin_is_refused_with_403(
    shared_server: ServerProcess, tokens: Tokens
) -> None:
    status, body = await handshake(
        shared_server.ws_base, "/ws/portfolio", {**cookie(tokens.alice), "Origin": EVIL}
    )

    assert (status, body["error"]) == (403, "origin_not_allowed"), f"got {status} {body}"
    assert "--allowed-origins" in body["message"]


async def test_a_cookie_handshake_from_the_servers_own_origin_is_accepted(
    shared_server: ServerProcess, tokens: Tokens
) -> None:
    ws = await open_ws(
        shared_server.ws_base,
        "/ws/portfolio",
        None,
        additional_headers={**cookie(tokens.bob), "Origin": own_origin(shared_server)},
    )
    welcome = await recv(ws)
    await ws.close()

    assert welcome.user_id == "bob"


async def test_a_handshake_from_a_listed_origin_is_accepted_and_others_still_refused(
    start_server, tokens: Tokens
) -> None:
    server = start_server("--allowed-origins", f"{DASH},http://127.0.0.1:8888")

    listed = await handshake(server.ws_base, "/ws/portfolio", {**cookie(tokens.alice), "Origin": DASH})
    other = await handshake(server.ws_base, "/ws/portfolio", {**cookie(tokens.alice), "Origin": EVIL})

    assert listed[0] == 101
    assert (other[0], other[1].get("error")) == (403, "origin_not_allowed")


async def test_a_handshake_without_origin_is_unaffected(shared_server: ServerProcess, tokens: Tokens) -> None:
    assert (await handshake(shared_server.ws_base, "/ws/ingest", auth(tokens.service)))[0] == 101


async def test_the_rest_snapshot_from_another_origin_is_refused_with_403(
    shared_server: ServerProcess, tokens: Tokens
) -> None:
    reply = await request(
        shared_server.port, "GET", "/api/portfolio/snapshot", {**cookie(tokens.alice), "Origin": EVIL}
    )

    assert (reply.status, reply.json()["error"]) == (403, "origin_not_allowed")
    assert reply.header("Access-Control-Allow-Origin") is None


async def test_the_rest_snapshot_carries_cors_headers_for_an_allowed_origin(
    start_server, tokens: Tokens
) -> None:
    server = start_server("--allowed-origins", DASH)

    reply = await request(
        server.port, "GET", "/api/portfolio/snapshot", {**cookie(tokens.alice), "Origin": DASH}
    )

    assert reply.status == 200, reply.body
    assert reply.header("Access-Control-Allow-Origin") == DASH
    assert reply.header("Access-Control-Allow-Credentials") == "true"
    assert reply.header("Vary") == "Origin"


async def test_a_preflight_from_an_allowed_origin_is_answered_204_not_401(start_server) -> None:
    server = start_server("--allowed-origins", DASH)

    reply = await request(
        server.port,
        "OPTIONS",
        "/api/portfolio/snapshot",
        {
            "Origin": DASH,
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "authorization",
        },
    )

    assert reply.status == 204, f"got {reply.status} {reply.body!r}"
    assert reply.header("Access-Control-Allow-Origin") == DASH
    assert reply.header("Access-Control-Allow-Credentials") == "true"
    assert reply.header("Access-Control-Allow-Methods") == "GET"
    assert reply.header("Access-Control-Allow-Headers") == "Authorization"
    assert reply.header("Access-Control-Max-Age") == "600"
    assert reply.body == b""


async def test_a_preflight_from_another_origin_is_refused_with_403(start_server) -> None:
    server = start_server("--allowed-origins", DASH)

    reply = await request(
        server.port,
        "OPTIONS",
        "/api/portfolio/snapshot",
        {"Origin": EVIL, "Access-Control-Request-Method": "GET"},
    )

    assert (reply.status, reply.json()["error"]) == (403, "origin_not_allowed")


async def test_a_browser_session_from_the_login_endpoint_opens_the_stream(
    shared_server: ServerProcess, tokens: Tokens
) -> None:
    page = own_origin(shared_server)

    login = await request(shared_server.port, "POST", "/api/session", {**auth(tokens.alice), "Origin": page})

    assert login.status == 204, f"got {login.status} {login.body!r}"
    (set_cookie,) = login.all("Set-Cookie")
    value, *attributes = [part.strip() for part in set_cookie.split(";")]
    assert value == f"alphaflow_session={tokens.alice}"
    assert set(attributes) == {"HttpOnly", "SameSite=Strict", "Path=/"}
    ws = await open_ws(
        shared_server.ws_base, "/ws/portfolio", None, additional_headers={"Cookie": value, "Origin": page}
    )
    welcome = await recv(ws)
    await ws.close()
    assert welcome.user_id == "alice"
    assert tokens.alice not in shared_server.log()


async def test_the_login_endpoint_refuses_another_origin_and_a_bad_token(
    shared_server: ServerProcess, tokens: Tokens
) -> None:
    evil = await request(shared_server.port, "POST", "/api/session", {**auth(tokens.alice), "Origin": EVIL})
    bad = await request(shared_server.port, "POST", "/api/session", auth("afl_not-a-real-token"))
    service = await request(shared_server.port, "POST", "/api/session", auth(tokens.service))

    assert (evil.status, evil.json()["error"]) == (403, "origin_not_allowed")
    assert (bad.status, bad.json()["error"]) == (401, "invalid_token")
    assert (service.status, service.json()["error"]) == (403, "wrong_role")
    assert [r.header("Set-Cookie") for r in (evil, bad, service)] == [None, None, None]


async def test_deleting_the_session_clears_the_cookie(shared_server: ServerProcess) -> None:
    reply = await request(shared_server.port, "DELETE", "/api/session", {"Origin": own_origin(shared_server)})

    assert reply.status == 204
    assert reply.header("Set-Cookie") == "alphaflow_session=; Max-Age=0; HttpOnly; SameSite=Strict; Path=/"


async def test_a_cross_origin_login_from_an_allowed_origin_is_readable_by_the_page(
    start_server, tokens: Tokens
) -> None:
    server = start_server("--allowed-origins", DASH)

    reply = await request(server.port, "POST", "/api/session", {**auth(tokens.alice), "Origin": DASH})

    assert reply.status == 204
    assert reply.header("Access-Control-Allow-Origin") == DASH
    assert reply.header("Access-Control-Allow-Credentials") == "true"
    assert reply.header("Set-Cookie") is not None
