"""The state dir: one server at a time, starts that fail without writing, corrupt and unusable
stored rows, and a full disk."""

from __future__ import annotations

import asyncio
import hashlib
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from alphaflow_live.protocol import Ack, Error, Publish
from tests.support import events as ev
from tests.support import state_files
from tests.support.cli import run_cli
from tests.support.client import Publisher, health, rest_snapshot, same_portfolio, state_of
from tests.support.disk import fill_disk, tmpfs
from tests.support.server import ServerProcess, Tokens
from tests.support.wait import async_wait_until

pytestmark = pytest.mark.timeout(120)

DB = "alphaflow-state.sqlite3"


def serve_args(users_file: Path, state_dir: Path, *extra: str) -> list[str]:
    """``serve`` as ServerProcess runs it; flags in ``extra`` come later and win."""
    return [
        "serve", "--host", "127.0.0.1", "--port", "0", "--source", "none",
        "--users-file", str(users_file), "--state-dir", str(state_dir), *extra,
    ]  # fmt: skip


def files_of(directory: Path) -> dict[str, tuple[int, int, str]]:
    """Every file in the directory: (mtime in ns, size, SHA-256 of the content)."""
    return {
        path.name: (
            path.stat().st_mtime_ns,
            path.stat().st_size,
            hashlib.sha256(path.read_bytes()).hexdigest(),
        )
        for path in sorted(directory.iterdir())
    }


async def stopped_with_state(start_server: Callable[..., ServerProcess], tokens: Tokens) -> ServerProcess:
    """A server that kept a little state and then stopped cleanly (so every row is in the main file)."""
    server = start_server()
    feed = await Publisher.connect(server.ws_base, tokens.service)
    await feed.publish("alice", [ev.fill("s-1", symbol="AAPL", qty="10", price="100.00")])
    await feed.close()
    await asyncio.to_thread(server.stop)
    return server


# ------------------------------------------------------------- one server per state dir


@pytest.mark.parametrize("port", ["another port", "the same port"])
async def test_a_second_server_on_the_same_state_dir_is_refused_and_the_first_keeps_committing(
    start_server, users, tokens: Tokens, port: str
) -> None:
    first = start_server()
    feed = await Publisher.connect(first.ws_base, tokens.service)
    before = await feed.publish("alice", [ev.fill("d-1", symbol="AAPL", qty="1", price="100.00")])
    assert first.proc is not None
    extra = ["--port", str(first.port)] if port == "the same port" else []  # as a second `make demo` does

    second = await asyncio.to_thread(run_cli, *serve_args(users[0], first.state_dir, *extra))
    after = await feed.publish("alice", [ev.fill("d-2", symbol="AAPL", qty="1", price="101.00")])
    report = await health(first.http_base)

    assert second.returncode == 2, f"expected exit 2, got {second.returncode}: {second.stderr}"
    assert second.stderr.strip().splitlines() == [
        f"alphaflow-live serve: the state dir {first.state_dir} is in use by another server "
        f"(pid {first.proc.pid}); stop it or use another --state-dir"
    ]
    assert after[0] == before[-1] + 1, "the first server's seqs go on where they were"
    assert report["status"] == "healthy", report


def test_the_lock_dies_with_its_holder_even_by_kill_9(tmp_path: Path, users) -> None:
    holder = ServerProcess(users[0], tmp_path / "holder.log", state_dir=tmp_path / "state").start()
    holder.stop(signal.SIGKILL)

    again = ServerProcess(users[0], tmp_path / "again.log", state_dir=tmp_path / "state").start()
    try:
        assert again.proc is not None
        assert (tmp_path / "state" / "alphaflow-state.lock").read_text().strip() == str(again.proc.pid)
    finally:
        again.stop()


# -------------------------------------------------------- a failed start writes nothing


@pytest.mark.parametrize("failure", ["busy port", "bad flags", "lock held"])
async def test_a_server_that_fails_to_start_changes_no_file_in_its_state_dir(
    start_server, users, tokens: Tokens, failure: str
) -> None:
    # A state dir with a re-mark owed: a start that got as far as restoring would commit it.
    server = start_server("--mark-interval-ms", "60000")
    feed = await Publisher.connect(server.ws_base, tokens.service)
    await feed.publish("alice", [ev.fill("w-1", symbol="AAPL", qty="10", price="100.00")])
    await feed.prices([ev.tick("AAPL", "101.00")])  # re-marked at once
    await feed.prices([ev.tick("AAPL", "102.50")])  # durable; its re-mark waits
    await asyncio.to_thread(server.stop, signal.SIGKILL)  # the WAL stays as a crash leaves it
    if failure == "busy port":
        extra = ["--port", str(start_server().port)]
    elif failure == "bad flags":
        extra = ["--source", "alpaca"]  # without --alpaca-user
    else:
        await asyncio.to_thread(server.start)
        extra = []
    before = files_of(server.state_dir)

    refused = await asyncio.to_thread(run_cli, *serve_args(users[0], server.state_dir, *extra))

    expected_exit = 1 if failure == "busy port" else 2
    assert refused.returncode == expected_exit, refused.stderr
    assert ("cannot listen" if failure == "busy port" else "alphaflow-live serve:") in refused.stderr
    assert files_of(server.state_dir) == before, "the failed start changed the state dir"


# ------------------------------------------------------------------- corrupt state files


CORRUPTIONS: dict[str, tuple[Callable[[Path], None], str]] = {
    "zero-length": (state_files.zero_length, "is empty (0 bytes)"),
    "truncated": (state_files.truncated, "is unreadable"),
    "garbage": (state_files.garbage, "is unreadable"),
    "wrong schema version": (state_files.wrong_schema_version, "has schema version 99"),
    "missing table": (state_files.missing_table, "has no checkpoints table"),
}


@pytest.mark.parametrize("kind", list(CORRUPTIONS))
async def test_a_corrupt_state_file_stops_the_server_with_exit_2_naming_the_file(
    start_server, users, tokens: Tokens, kind: str
) -> None:
    server = await stopped_with_state(start_server, tokens)
    path = server.state_dir / DB
    corrupt, said = CORRUPTIONS[kind]
    corrupt(path)
    before = files_of(server.state_dir)

    refused = await asyncio.to_thread(run_cli, *serve_args(users[0], server.state_dir))

    assert refused.returncode == 2, f"{kind}: exit {refused.returncode}, log:\n{refused.stderr}"
    (line,) = refused.stderr.strip().splitlines()
    assert str(path) in line and said in line and "--reset-state" in line, line
    assert files_of(server.state_dir) == before, "a refused state file is left as it was"


async def test_a_zero_length_state_file_is_refused_instead_of_silently_reset(
    start_server, users, tokens: Tokens
) -> None:
    server = await stopped_with_state(start_server, tokens)
    (server.state_dir / DB).write_bytes(b"")

    refused = await asyncio.to_thread(run_cli, *serve_args(users[0], server.state_dir))
    server.args.append("--reset-state")
    await asyncio.to_thread(server.start)

    assert refused.returncode == 2 and "is empty (0 bytes)" in refused.stderr, refused.stderr
    assert "listening on" not in refused.stderr
    assert (await rest_snapshot(server.http_base, tokens.alice)).seq == 0
    aside = [p for p in server.state_dir.iterdir() if p.name.startswith(f"{DB}.reset-")]
    assert [p.stat().st_size for p in aside] == [0], "the empty file is kept aside, not deleted"


# ------------------------------------------------------- stored rows that cannot be applied


async def test_stored_rows_that_cannot_be_applied_are_quarantined_and_everything_else_is_served(
    start_server, tokens: Tokens
) -> None:
    server = start_server()
    feed = await Publisher.connect(server.ws_base, tokens.service)
    await feed.publish("alice", [ev.fill("a-1", symbol="AAPL", qty="10", price="100.00")])
    await feed.publish("bob", [ev.fill("b-1", symbol="HX", qty="5", price="10.00")])
    for user_id in ("carol", "dave", "erin", "frank"):
        await feed.publish(user_id, [ev.fill(f"{user_id}-1", symbol="MSFT", qty="1", price="400.00")])
    alice_before = await rest_snapshot(server.http_base, tokens.alice)
    bob_before = await rest_snapshot(server.http_base, tokens.bob)
    await feed.close()
    await asyncio.to_thread(server.stop)  # a clean stop checkpoints every user
    with state_files.edit(server.state_dir / DB) as db:
        db.execute("UPDATE prices SET price = '1e30' WHERE symbol = 'HX'")
        state_files.set_book_cash(db, "carol", "NaN")  # decodes, but nothing can be computed with it
        state_files.set_book_cash(db, "frank", "1e40")  # large, but a sum the engine computes with
        db.execute("UPDATE events SET events = CAST('not json' AS BLOB) WHERE user_id = 'dave'")
        db.execute("UPDATE checkpoints SET snapshot = CAST('{\"type\": 7}' AS BLOB) WHERE user_id = 'erin'")

    await asyncio.to_thread(server.start)
    report = await health(server.http_base)
    alice_after = await rest_snapshot(server.http_base, tokens.alice)
    bob_after = await rest_snapshot(server.http_base, tokens.bob)
    feed = await Publisher.connect(server.ws_base, tokens.service)
    dave_again = await feed.publish("dave", [ev.fill("dave-2", symbol="MSFT", qty="2", price="401.00")])
    frank_again = await feed.publish("frank", [ev.fill("frank-2", symbol="MSFT", qty="2", price="401.00")])

    assert report["status"] == "degraded", report
    (reason,) = [r for r in report["reasons"] if r.startswith("state:")]
    for named in ("price HX", "user carol", "user dave", "user erin"):
        assert named in reason, f"{named!r} not in {reason!r}"
    assert (alice_after.epoch, alice_after.seq) == (alice_before.epoch, alice_before.seq)
    assert same_portfolio(state_of(alice_after), state_of(alice_before)), "the untouched user is served"
    assert (bob_after.epoch, bob_after.seq) == (bob_before.epoch, bob_before.seq)
    assert [p.current_price for p in bob_after.positions] == [ev.D("10.000000")], (
        "a holder of a quarantined mark keeps the last price of the book"
    )
    assert dave_again[0] == 1, "a quarantined user starts again under a new epoch"
    assert frank_again[0] > 1 and "frank" not in reason, "a book that can be computed with is restored"
    with state_files.edit(server.state_dir / DB) as db:
        listed = sorted(db.execute("SELECT kind, key FROM quarantine").fetchall())
        kept = db.execute("SELECT count(*) FROM quarantined_events WHERE user_id = 'dave'").fetchone()[0]
        price = db.execute("SELECT price FROM quarantined_prices WHERE symbol = 'HX'").fetchone()
    assert listed == [("price", "HX"), ("user", "carol"), ("user", "dave"), ("user", "erin")]
    assert kept >= 1 and price == ("1e30",), "quarantined rows are kept, not deleted"
    assert server.log().count("event=state_quarantined") == 4
    assert "Traceback" not in server.log()

    await feed.close()
    await asyncio.to_thread(server.restart)
    again = await health(server.http_base)
    assert again["status"] == "degraded", "quarantined rows stay reported until an operator clears them"
    assert server.log().count("event=state_quarantined") == 4, "nothing new is set aside on a restart"
    assert (await rest_snapshot(server.http_base, tokens.alice)).seq == alice_before.seq


# ------------------------------------------------------------------------ a full disk


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MB tmpfs, to fill for real (the test is skipped where mount is not permitted)."""
    with tmpfs(tmp_path / "disk") as mount:
        yield mount


async def test_a_full_disk_answers_unavailable_and_degrades_health_until_a_write_succeeds(
    small_disk: Path, start_server, tokens: Tokens
) -> None:
    server = start_server("--state-dir", str(small_disk / "state"))
    try:
        feed = await Publisher.connect(server.ws_base, tokens.service)
        acked = []
        for i in range(5):
            await feed.publish("alice", [ev.fill(f"full-{i}", symbol="AAPL", qty="1", price="100.00")])
            acked.append(f"full-{i}")
        filler = small_disk / "filler"
        fill_disk(filler)

        refused = [
            await feed.request(
                Publish(id=100 + i, user_id="alice", events=[ev.fill(f"lost-{i}", symbol="AAPL", qty="1")])
            )
            for i in range(5)
        ]
        degraded = await health(server.http_base)
        filler.unlink()
        await feed.publish("alice", [ev.fill("after", symbol="AAPL", qty="1", price="100.00")])
        acked.append("after")
        recovered = await health(server.http_base)

        for i, reply in enumerate(refused):
            assert isinstance(reply, Error), f"publish {i} on a full disk: {reply}"
            assert (reply.code, reply.ref) == ("unavailable", 100 + i)
            assert "retry with backoff" in reply.message and "full" in reply.message, reply.message
        assert degraded["status"] == "degraded"
        assert any(r.startswith("storage:") and "full" in r for r in degraded["reasons"]), degraded
        assert recovered["status"] == "healthy", recovered
        log = server.log()
        assert log.count("event=storage_failed") == 1, "each cause is logged once, not per write"
        assert "event=storage_recovered failed_writes=5" in log
        assert "Traceback" not in log

        await feed.close()
        await asyncio.to_thread(server.restart)
        after = await rest_snapshot(server.http_base, tokens.alice)
        assert [f.id for f in after.fills] == acked, "every acked fill, and none that was refused"
        assert after.positions[0].qty == len(acked)
    finally:
        await asyncio.to_thread(server.stop)


async def test_a_full_disk_at_a_price_tick_answers_unavailable_and_keeps_the_old_mark(
    small_disk: Path, start_server, tokens: Tokens
) -> None:
    server = start_server("--state-dir", str(small_disk / "state"), "--mark-interval-ms", "0")
    try:
        feed = await Publisher.connect(server.ws_base, tokens.service)
        await feed.publish("alice", [ev.fill("p-1", symbol="AAPL", qty="10", price="100.00")])
        fill_disk(small_disk / "filler")

        refused = await feed.prices([ev.tick("AAPL", "150.00")])
        while_full = await rest_snapshot(server.http_base, tokens.alice)
        (small_disk / "filler").unlink()
        accepted = await feed.prices([ev.tick("AAPL", "151.00")])
        after = await rest_snapshot(server.http_base, tokens.alice)

        assert isinstance(refused, Error) and refused.code == "unavailable", refused
        assert while_full.positions[0].current_price == ev.D("100.000000"), "a refused tick moves no mark"
        assert isinstance(accepted, Ack), accepted
        assert after.positions[0].current_price == ev.D("151.000000")
        assert (await health(server.http_base))["status"] == "healthy"
    finally:
        await asyncio.to_thread(server.stop)


async def test_re_marks_that_fail_on_a_full_disk_keep_their_marks_and_log_once(
    small_disk: Path, start_server, tokens: Tokens
) -> None:
    server = start_server("--state-dir", str(small_disk / "state"), "--mark-interval-ms", "200")
    try:
        feed = await Publisher.connect(server.ws_base, tokens.service)
        await feed.publish("alice", [ev.fill("r-1", symbol="AAPL", qty="10", price="100.00")])
        await feed.prices([ev.tick("AAPL", "101.00")])  # re-marked at once
        await feed.prices([ev.tick("AAPL", "102.00")])  # committed; its re-mark waits its turn
        fill_disk(small_disk / "filler")

        async def failed_writes() -> int:
            reasons = (await health(server.http_base))["reasons"]
            counts = [int(r.split("; ")[-1].split()[0]) for r in reasons if r.startswith("storage:")]
            return counts[0] if counts and counts[0] >= 3 else 0

        failures = await async_wait_until(failed_writes, timeout=15, what="the re-mark to fail three times")
        (small_disk / "filler").unlink()

        async def re_marked() -> bool:
            snapshot = await rest_snapshot(server.http_base, tokens.alice)
            return snapshot.positions[0].current_price == ev.D("102.000000")

        await async_wait_until(re_marked, timeout=15, what="the kept mark to go out once writes work")
        assert (await health(server.http_base))["status"] == "healthy"
        log = server.log()
        assert log.count("event=storage_failed") == 1, "one line per cause, not one per turn"
        assert failures >= 3 and "event=storage_recovered" in log
        assert "Traceback" not in log and "remark_failed" not in log
    finally:
        await asyncio.to_thread(server.stop)
