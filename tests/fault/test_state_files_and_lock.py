"""The state dir: every unusable state file stops the server (exit 2, the file named, the file
untouched), and one server at a time on a dir."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from alphaflow_server.sqlite_store import DB_NAME
from tests.support import events as ev
from tests.support.book_model import channels
from tests.support.cli import attempt_serve
from tests.support.client import Publisher, health, rest_snapshot, without_server_time
from tests.support.server import StartServer, Tokens
from tests.support.state_files import a_directory, garbage, truncated, wrong_schema_version, zero_length

pytestmark = pytest.mark.timeout(60)

STATE_FILE = DB_NAME


def fingerprint(path: Path) -> tuple[str, bytes | list[str]]:
    """What must not change: a file's bytes, or a directory's listing."""
    if path.is_dir():
        return ("directory", sorted(p.name for p in path.iterdir()))
    return ("file", path.read_bytes())


def sqlite_leftovers(state_dir: Path) -> set[str]:
    """Files beside the state file that SQLite (or a reset) makes: a refused start makes none."""
    return {p.name for p in state_dir.iterdir() if p.name.startswith(STATE_FILE) and p.name != STATE_FILE}


async def a_state_dir_with_a_book(start_server: StartServer, tokens: Tokens) -> Path:
    """The state dir of a server that took a fill and an order and stopped cleanly."""
    server = start_server()
    feed = await Publisher.connect(server.ws_base, tokens.service)
    await feed.publish("alice", [ev.fill("f-1", qty="3", price="100.00"), ev.order("o-1", "accepted")])
    await feed.close()
    assert await asyncio.to_thread(server.stop) == 0
    for leftover in sqlite_leftovers(server.state_dir):  # the case must be the state file alone
        (server.state_dir / leftover).unlink()
    return server.state_dir


@pytest.mark.parametrize(
    "corrupt", [zero_length, truncated, garbage, wrong_schema_version, a_directory], ids=lambda f: f.__name__
)
async def test_an_unusable_state_file_stops_the_server_with_exit_2_naming_it_and_leaves_it_as_it_was(
    corrupt: Callable[[Path], None], start_server: StartServer, users: tuple[Path, Tokens]
) -> None:
    state_dir = await a_state_dir_with_a_book(start_server, users[1])
    state_file = state_dir / STATE_FILE
    corrupt(state_file)
    before = fingerprint(state_file)
    assert sqlite_leftovers(state_dir) == set(), "the case is the state file alone"

    attempt = await asyncio.to_thread(attempt_serve, users[0], state_dir)

    case = corrupt.__name__
    assert attempt.returncode == 2, f"expected exit 2 for a {case} state file; {attempt.describe()}"
    assert str(state_file) in attempt.stderr, f"expected stderr to name {state_file}; {attempt.describe()}"
    assert fingerprint(state_file) == before, f"the {case} state file was modified"
    assert sqlite_leftovers(state_dir) == set(), "a refused start wrote beside the state file"


async def test_a_second_server_on_a_state_dir_is_refused_and_the_first_serves_on_untouched(
    start_server: StartServer, users: tuple[Path, Tokens]
) -> None:
    tokens = users[1]
    first = start_server()
    feed = await Publisher.connect(first.ws_base, tokens.service)
    await feed.publish("alice", [ev.fill("f-1", qty="3", price="100.00"), ev.account("100000.00")])
    before = await rest_snapshot(first.http_base, tokens.alice)
    assert first.proc is not None

    second = await asyncio.to_thread(attempt_serve, users[0], first.state_dir)

    assert second.returncode == 2, f"expected the second server to exit 2; {second.describe()}"
    naming = [
        line
        for line in second.stderr.splitlines()
        if str(first.state_dir) in line and str(first.proc.pid) in line
    ]
    assert naming, (
        f"expected a line naming the state dir {first.state_dir} and the first's pid {first.proc.pid}; "
        f"{second.describe()}"
    )
    after_refusal = await rest_snapshot(first.http_base, tokens.alice)
    seqs = await feed.publish("alice", [ev.fill("f-2", qty="2", price="101.00")])
    status = await health(first.http_base)
    latest = await rest_snapshot(first.http_base, tokens.alice)
    await feed.close()
    await asyncio.to_thread(first.restart)  # what the first server stored is what it serves
    restarted = await rest_snapshot(first.http_base, tokens.alice)

    assert without_server_time(after_refusal) == without_server_time(before), (
        "the refused server changed what the first one serves"
    )
    assert seqs[0] == before.seq + 1, f"the first server's sequence went on from {before.seq}: {seqs}"
    assert status["status"] == "healthy", f"the first server after the refusal: {status}"
    assert [f.id for f in channels(latest).fills] == ["f-1", "f-2"]
    assert without_server_time(restarted) == without_server_time(latest), (
        "the state on disk differs from what the first server served"
    )
