"""Handshake authentication and every refusal of PROTOCOL.md, over real sockets."""

from __future__ import annotations

import pytest

from tests.support.client import StreamClient, auth, handshake, open_ws, recv, refusal
from tests.support.server import ServerProcess, Tokens
from tests.support.wait import async_wait_until

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize("param", ["token", "access_token", "api_key", "session", "TOKEN"])
async def test_credentials_in_the_url_are_refused_with_400_and_never_logged(
    shared_server: ServerProcess, tokens: Tokens, param: str
) -> None:
    status, body = await refusal(shared_server.ws_base, f"/ws/portfolio?{param}={tokens.alice}")

    assert status == 400
    assert body["error"] == "token_in_url"
    assert body["message"]
    assert tokens.alice not in shared_server.log()


async def test_missing_token_is_refused_with_401(shared_server: ServerProcess) -> None:
    status, body = await refusal(shared_server.ws_base, "/ws/portfolio")

    assert (status, body["error"]) == (401, "missing_token")
    assert "Authorization: Bearer" in body["message"]


async def test_unknown_token_is_refused_with_401(shared_server: ServerProcess) -> None:
    status, body = await refusal(shared_server.ws_base, "/ws/portfolio", auth("afl_not-a-real-token"))

    assert (status, body["error"]) == (401, "invalid_token")


async def test_other_authorization_schemes_are_refused_with_401(
    shared_server: ServerProcess, tokens: Tokens
) -> None:
    status, _ = await refusal(
        shared_server.ws_base, "/ws/portfolio", {"Authorization": f"Basic {tokens.alice}"}
    )

    assert status == 401


@pytest.mark.parametrize(
    ("path", "role"),
    [
        ("/ws/ingest", "alice"),
        ("/ws/admin", "alice"),
        ("/ws/portfolio", "service"),
        ("/ws/portfolio", "admin"),
        ("/ws/ingest", "admin"),
        ("/ws/admin", "service"),
    ],
)
async def test_a_token_of_the_wrong_role_is_refused_with_403(
    shared_server: ServerProcess, tokens: Tokens, path: str, role: str
) -> None:
    status, body = await refusal(shared_server.ws_base, path, auth(getattr(tokens, role)))

    assert (status, body["error"]) == (403, "wrong_role")
    assert "role" in body["message"]


async def test_the_session_cookie_is_accepted_as_credentials(
    shared_server: ServerProcess, tokens: Tokens
) -> None:
    ws = await open_ws(
        shared_server.ws_base,
        "/ws/portfolio",
        None,
        additional_headers={"Cookie": f"alphaflow_session={tokens.bob}"},
    )
    welcome = await recv(ws)
    await ws.close()

    assert welcome.user_id == "bob"


async def test_an_unknown_path_is_refused_with_404(shared_server: ServerProcess, tokens: Tokens) -> None:
    status, body = await refusal(shared_server.ws_base, "/ws/elsewhere", auth(tokens.alice))

    assert (status, body["error"]) == (404, "not_found")


async def test_the_per_user_limit_refuses_the_next_connection_with_429(start_server, tokens: Tokens) -> None:
    server = start_server("--max-per-user", "2")
    first = await StreamClient.connect(server.ws_base, tokens.alice)
    second = await StreamClient.connect(server.ws_base, tokens.alice)

    status, body = await refusal(server.ws_base, "/ws/portfolio", auth(tokens.alice))
    other_user = await StreamClient.connect(server.ws_base, tokens.bob)

    assert (status, body["error"]) == (429, "too_many_connections")
    assert other_user.welcome.user_id == "bob"
    for client in (first, second, other_user):
        await client.close()


async def test_a_closed_connection_frees_its_place_under_the_per_user_limit(
    start_server, tokens: Tokens
) -> None:
    server = start_server("--max-per-user", "1")
    first = await StreamClient.connect(server.ws_base, tokens.alice)
    await first.close()

    async def accepted() -> bool:
        return (await handshake(server.ws_base, "/ws/portfolio", auth(tokens.alice)))[0] == 101

    await async_wait_until(accepted, timeout=5, what="the place to be released")


async def test_the_total_limit_refuses_with_503(start_server, tokens: Tokens) -> None:
    server = start_server("--max-connections", "2")
    clients = [
        await StreamClient.connect(server.ws_base, tokens.alice),
        await StreamClient.connect(server.ws_base, tokens.bob),
    ]

    status, body = await refusal(server.ws_base, "/ws/portfolio", auth(tokens.alice))

    assert (status, body["error"]) == (503, "server_full")
    for client in clients:
        await client.close()


async def test_a_new_user_works_without_a_restart(start_server, tmp_path) -> None:
    from alphaflow_server.auth import load_users_file, save_users_file
    from tests.support.server import write_users

    users_file = tmp_path / "users.json"
    write_users(users_file)
    server = start_server(users_file=users_file)
    store = load_users_file(users_file)
    token = store.add("carol", "user")
    save_users_file(users_file, store)

    async def accepted() -> bool:
        return (await handshake(server.ws_base, "/ws/portfolio", auth(token)))[0] == 101

    await async_wait_until(accepted, timeout=5, what="the server to read the new users file")
