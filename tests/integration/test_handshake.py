"""Handshake authentication and every refusal of PROTOCOL.md, over real sockets."""

from __future__ import annotations

import asyncio
import contextlib
import re
import resource
import socket
import time
from collections.abc import Iterator

import pytest
from websockets.exceptions import WebSocketException

from tests.support import admin
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


# ---------------------------------------------------- half-open sockets (defect 9)

SERVER_FILE_LIMIT = 256
HALF_OPEN = 400


@contextlib.contextmanager
def open_file_limit(soft: int) -> Iterator[None]:
    """This process's soft limit on descriptors (and so its children's) set to ``soft`` for a while."""
    old_soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, hard), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (old_soft, hard))


def start_with_few_descriptors(start_server, *args: str) -> ServerProcess:
    # The server inherits the limit at its start; this process gets its own back at once.
    with open_file_limit(SERVER_FILE_LIMIT):
        server: ServerProcess = start_server(*args)
    return server


@contextlib.contextmanager
def half_open_sockets(port: int, count: int) -> Iterator[list[socket.socket]]:
    """``count`` sockets that start a request and never finish it; all closed on the way out."""
    needed = count + 256
    old_soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if old_soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(needed, hard), hard))
    sockets: list[socket.socket] = []
    try:
        failures = 0
        while len(sockets) < count and failures < 3:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.settimeout(0.2)
            try:
                sock.connect(("127.0.0.1", port))
                sock.sendall(b"GET /ws/portfolio HTTP/1.1\r\nHost: 127.0.0.1\r\n")
                failures = 0
            except OSError:
                # A full accept queue (or a socket the server closed at once): go on.
                failures += 1
        yield sockets
    finally:
        for sock in sockets:
            sock.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (old_soft, hard))


async def admitted(server: ServerProcess, token: str) -> bool:
    """One handshake attempt, bounded to a second; True when it was accepted."""
    try:
        async with asyncio.timeout(1.0):
            status, _ = await handshake(server.ws_base, "/ws/portfolio", auth(token))
    except (OSError, TimeoutError, WebSocketException):
        return False
    return status == 101


async def test_half_open_sockets_past_the_file_limit_do_not_lock_a_good_client_out(
    start_server, tokens: Tokens
) -> None:
    server = start_with_few_descriptors(start_server)

    with half_open_sockets(server.port, HALF_OPEN) as sockets:
        assert len(sockets) > SERVER_FILE_LIMIT, f"only {len(sockets)} sockets reached the server"
        started = time.monotonic()
        await async_wait_until(
            lambda: admitted(server, tokens.alice),
            timeout=4,
            what=f"a good client to get in past {len(sockets)} half-open sockets",
        )
        waited = time.monotonic() - started
        report = await admin.stats(server.http_base, tokens.admin)

    assert waited < 3.0, f"the good client waited {waited:.2f}s"
    assert report["handshakes_refused"].get("too_many_pending", 0) >= len(sockets) - 64
    emfile = [line for line in server.log().splitlines() if "EMFILE" in line or "Too many open files" in line]
    assert len(emfile) <= 3, "\n".join(emfile[:10])


async def test_accept_errors_are_logged_at_most_once_a_second_with_a_count(
    start_server, tokens: Tokens
) -> None:
    # A bound above what the descriptors allow, so that accept(2) does run out.
    server = start_with_few_descriptors(start_server, "--max-pending-handshakes", "1000")
    accept_failed = re.compile(r"event=accept_failed errno=EMFILE .*count=(\d+)")

    async def two_lines() -> bool:
        return len(accept_failed.findall(server.log())) >= 2

    with half_open_sockets(server.port, HALF_OPEN):
        started = time.monotonic()
        await async_wait_until(
            two_lines,
            timeout=10,
            what="a second accept_failed line, with the count held back since the first",
        )
        elapsed = time.monotonic() - started
        log = server.log()

    lines = [line for line in log.splitlines() if "EMFILE" in line or "Too many open files" in line]
    counts = [int(m.group(1)) for m in map(accept_failed.search, lines) if m]
    assert len(lines) == len(counts), "every EMFILE line is a counted accept_failed line:\n" + "\n".join(
        lines
    )
    assert len(lines) <= elapsed + 2, f"{len(lines)} lines in {elapsed:.1f}s"
    assert sum(counts) > len(counts), "the lines stand for more failures than themselves"
    assert "Traceback" not in log
