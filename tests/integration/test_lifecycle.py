"""Start-up, shutdown, logs and the users command."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal

import pytest
from websockets.exceptions import ConnectionClosed

from alphaflow_server.cli import build_parser
from tests.support.cli import run_cli
from tests.support.client import StreamClient, auth, handshake, refusal
from tests.support.server import ServerProcess, Tokens
from tests.support.wait import async_wait_until

pytestmark = pytest.mark.timeout(60)


async def test_sigterm_closes_every_client_with_1001_and_exits_cleanly(start_server, tokens: Tokens) -> None:
    server = start_server()
    clients = [await StreamClient.connect(server.ws_base, t) for t in (tokens.alice, tokens.bob)]
    for client in clients:
        await client.subscribe()

    exit_code = await asyncio.to_thread(server.stop, signal.SIGTERM)

    for client in clients:
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(client.ws.recv(), 5)
        assert client.ws.close_code == 1001
    assert exit_code == 0
    assert "event=stopped" in server.log()


async def test_logs_are_one_structured_line_per_connection_event_without_tokens(start_server, tokens) -> None:
    server = start_server()
    client = await StreamClient.connect(server.ws_base, tokens.alice)
    await client.ws.close()
    await refusal(server.ws_base, f"/ws/portfolio?token={tokens.bob}")
    await asyncio.to_thread(server.stop)

    log = server.log()
    assert re.search(r"event=connect stream=portfolio user=alice conn=c-\w+", log)
    assert re.search(
        r"event=disconnect stream=portfolio user=alice conn=c-\w+ code=1000 duration_s=[\d.]+", log
    )
    for token in (tokens.alice, tokens.bob, tokens.service, tokens.admin):
        assert token not in log


def test_users_add_prints_the_token_last_and_stores_only_its_hash(tmp_path) -> None:
    users_file = tmp_path / "users.json"

    added = run_cli("users", "add", "dana", "--role", "service", "--users-file", str(users_file))
    token = added.stdout.strip().splitlines()[-1].split()[-1]
    listed = run_cli("users", "list", "--users-file", str(users_file))
    duplicate = run_cli("users", "add", "dana", "--users-file", str(users_file))

    assert added.returncode == 0 and token.startswith("afl_")
    stored = users_file.read_text()
    assert token not in stored and json.loads(stored)["users"][0]["role"] == "service"
    assert oct(users_file.stat().st_mode & 0o777) == "0o600"
    assert "dana\tservice" in listed.stdout
    assert duplicate.returncode == 1 and "exists" in duplicate.stderr


async def test_users_rotate_and_remove_take_effect_on_a_running_server(start_server, tmp_path) -> None:
    users_file = tmp_path / "users.json"
    old = run_cli("users", "add", "erin", "--users-file", str(users_file)).stdout.split()[-1]
    server = start_server(users_file=users_file)
    assert (await StreamClient.connect(server.ws_base, old)).welcome.user_id == "erin"

    new = run_cli("users", "rotate", "erin", "--users-file", str(users_file)).stdout.split()[-1]

    async def old_refused() -> bool:
        status, _ = await handshake(server.ws_base, "/ws/portfolio", auth(old))
        return status == 401

    await async_wait_until(old_refused, timeout=5, what="the rotated token to be refused")
    assert (await StreamClient.connect(server.ws_base, new)).welcome.user_id == "erin"
    removed = run_cli("users", "remove", "erin", "--users-file", str(users_file))
    assert removed.returncode == 0


def test_serve_reports_a_corrupt_users_file_clearly(tmp_path) -> None:
    users_file = tmp_path / "users.json"
    users_file.write_text("{not json")

    result = run_cli("serve", "--port", "0", "--users-file", str(users_file))

    assert result.returncode == 2
    assert "users file" in result.stderr and str(users_file) in result.stderr


def test_serve_reads_its_flags_from_alphaflow_environment_variables(tmp_path, tokens: Tokens, users) -> None:
    server = ServerProcess(
        users[0], tmp_path / "log", env={"ALPHAFLOW_BATCH_WINDOW_MS": "42", "ALPHAFLOW_PORT": "0"}
    )
    server.start()
    try:

        async def welcome() -> int:
            client = await StreamClient.connect(server.ws_base, tokens.alice)
            await client.close()
            return int(client.welcome.batch_window_ms)

        assert asyncio.run(welcome()) == 42
    finally:
        server.stop()


def test_serve_with_no_arguments_runs_the_simulator_on_the_default_address(monkeypatch) -> None:
    for name in [n for n in os.environ if n.startswith("ALPHAFLOW_")]:
        monkeypatch.delenv(name)

    args = build_parser().parse_args(["serve"])

    assert (args.host, args.port, args.source) == ("127.0.0.1", 8765, "sim")
    assert (args.batch_window_ms, args.max_connections, args.max_per_user, args.heartbeat_s) == (
        250,
        100,
        5,
        15.0,
    )
