"""SqliteStore: runs of events, the seq a user's rows imply, and the upgrade from schema 1."""

from __future__ import annotations

import contextlib
import os
import sqlite3
from pathlib import Path

import msgspec
import pytest

from alphaflow_live.protocol import Event, FillEvent, encode
from alphaflow_server.sqlite_store import DB_NAME, SCHEMA_VERSION, SqliteStore
from alphaflow_server.statedir import StateDirLock
from alphaflow_server.store import Commit, StateDirInUse, StateError, StorageError

from .factories import fill, position, stamp

runs = msgspec.json.Decoder(list[Event])


def run(user_id: str, at: float, events: list[Event]) -> tuple[str, float, int, int, list[bytes]]:
    """A commit's run of events: first and last seq, each event encoded."""
    return (user_id, at, events[0].seq, events[-1].seq, [encode(e) for e in events])


def test_a_commit_stores_each_users_events_as_one_run_and_load_gives_them_back(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path)
    first = stamp([fill("f1"), position("AAPL", "10")])
    second = stamp([position("AAPL", "11")], start=2)
    store.commit(Commit(events=[run("alice", 1.0, first)], users={"alice": ("e-1", 2, None)}))
    store.commit(Commit(events=[run("alice", 2.0, second)]))  # no user row: the seq follows from the run

    loaded = SqliteStore(tmp_path).load()

    rows = loaded.users["alice"]
    assert rows.seq == 3 and rows.epoch == "e-1"
    assert [at for at, _ in rows.events] == [1.0, 2.0]
    assert [e for _, blob in rows.events for e in runs.decode(blob)] == first + second


def test_a_checkpoint_prunes_whole_runs_only_and_its_seq_counts_when_no_run_is_left(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path)
    events = stamp([fill("f1"), fill("f2"), fill("f3"), fill("f4")])
    store.commit(Commit(events=[run("alice", 1.0, events[:2])], users={"alice": ("e-1", 2, None)}))
    store.commit(Commit(events=[run("alice", 1.0, events[2:])]))

    store.checkpoint("alice", 3, b"{}", prune_through=3)
    kept = SqliteStore(tmp_path).load().users["alice"]
    store.checkpoint("alice", 4, b"{}", prune_through=4)
    emptied = SqliteStore(tmp_path).load().users["alice"]

    assert [e.seq for _, blob in kept.events for e in runs.decode(blob)] == [3, 4], "3..4 is one run"
    assert (emptied.events, emptied.seq, emptied.checkpoint_seq) == ([], 4, 4)


def write_schema_1(directory: Path, events: list[Event]) -> None:
    """A state file as a schema-1 server left it: alice's events, one row each."""
    with sqlite3.connect(directory / DB_NAME) as db:
        db.executescript(
            """
            CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
            CREATE TABLE users (
                user_id TEXT PRIMARY KEY, epoch TEXT NOT NULL, seq INTEGER NOT NULL, book BLOB
            );
            CREATE TABLE events (
                user_id TEXT NOT NULL, seq INTEGER NOT NULL, appended_at REAL NOT NULL,
                event BLOB NOT NULL, PRIMARY KEY (user_id, seq)
            ) WITHOUT ROWID;
            INSERT INTO meta VALUES ('schema_version', '1');
            """
        )
        db.execute("INSERT INTO users VALUES ('alice', 'e-1', ?, NULL)", (events[-1].seq,))
        db.executemany(
            "INSERT INTO events VALUES ('alice', ?, ?, ?)", [(e.seq, 5.0, encode(e)) for e in events]
        )


def test_a_schema_1_state_file_is_upgraded_in_place_and_keeps_every_event(tmp_path: Path) -> None:
    events = stamp([fill("f1"), position("AAPL", "10")])
    write_schema_1(tmp_path, events)

    loaded = SqliteStore(tmp_path).load()

    assert loaded.meta["schema_version"] == SCHEMA_VERSION
    rows = loaded.users["alice"]
    assert rows.seq == 2
    assert [e for _, blob in rows.events for e in runs.decode(blob)] == events


def test_a_state_file_of_an_unknown_schema_is_refused_with_what_to_do(tmp_path: Path) -> None:
    SqliteStore(tmp_path).close()
    with sqlite3.connect(tmp_path / DB_NAME) as db:
        db.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")

    with pytest.raises(StateError, match="--reset-state"):
        SqliteStore(tmp_path)


# ------------------------------------------------------------------ fill ids

_SCHEMA_2 = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE users (user_id TEXT PRIMARY KEY, epoch TEXT NOT NULL, seq INTEGER NOT NULL, book BLOB);
CREATE TABLE events (
    user_id TEXT NOT NULL, seq INTEGER NOT NULL, last_seq INTEGER NOT NULL, appended_at REAL NOT NULL,
    events BLOB NOT NULL, PRIMARY KEY (user_id, seq)
);
CREATE TABLE checkpoints (user_id TEXT PRIMARY KEY, seq INTEGER NOT NULL, snapshot BLOB NOT NULL);
CREATE TABLE prices (symbol TEXT PRIMARY KEY, price TEXT NOT NULL, reference TEXT NOT NULL);
INSERT INTO meta VALUES ('schema_version', '2');
"""


def test_a_commit_stores_its_fill_ids_with_its_events_and_a_failed_one_neither(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path)
    events = stamp([fill("f-1"), position(), fill("f-2")])
    store.commit(
        Commit(
            events=[run("alice", 1.0, events)],
            users={"alice": ("e-1", 3, None)},
            fills=[("alice", "f-1", 1), ("alice", "f-2", 3)],
        )
    )
    clash = stamp([fill("f-3")])  # seq 1 again: the events insert fails, so the whole commit does
    with pytest.raises(sqlite3.IntegrityError):
        store.commit(Commit(events=[run("alice", 2.0, clash)], fills=[("alice", "f-3", 1)]))

    reopened = SqliteStore(tmp_path)

    assert reopened.fill_ids("alice") == [("f-1", 1), ("f-2", 3)]
    assert reopened.fill_ids("bob") == []


def test_a_schema_2_state_file_is_upgraded_to_3_in_place_with_the_stored_fills_as_applied(
    tmp_path: Path,
) -> None:
    first = stamp([fill("f-1"), position()])
    # A build before idempotency applied a re-sent f-1 again: its id is kept once, at its last seq.
    second = stamp([fill("f-1"), fill("f-2")], start=2)
    with sqlite3.connect(tmp_path / DB_NAME) as db:
        db.executescript(_SCHEMA_2)
        db.execute("INSERT INTO users VALUES ('alice', 'e-1', 4, NULL)")
        db.executemany(
            "INSERT INTO events VALUES ('alice', ?, ?, 5.0, ?)",
            [(r[0].seq, r[-1].seq, b"[" + b",".join(encode(e) for e in r) + b"]") for r in (first, second)],
        )

    store = SqliteStore(tmp_path)
    loaded = store.load()

    assert loaded.meta["schema_version"] == SCHEMA_VERSION == "3"
    assert store.fill_ids("alice") == [("f-1", 3), ("f-2", 4)]
    assert [e for _, blob in loaded.users["alice"].events for e in runs.decode(blob)] == first + second


def test_a_schema_1_state_file_is_upgraded_through_2_to_3_with_its_fills_as_applied(tmp_path: Path) -> None:
    events = stamp([fill("f-1"), position("AAPL", "10"), fill("f-2")])
    write_schema_1(tmp_path, events)

    store = SqliteStore(tmp_path)

    assert store.load().meta["schema_version"] == "3"
    assert store.fill_ids("alice") == [("f-1", 1), ("f-2", 3)]


def test_a_checkpoint_prunes_fill_ids_past_the_newest_kept_but_none_after_the_prune_point(
    tmp_path: Path,
) -> None:
    store = SqliteStore(tmp_path)
    events = stamp([fill(f"f-{n}") for n in range(1, 11)])
    store.commit(
        Commit(
            events=[run("alice", 1.0, events)],
            users={"alice": ("e-1", 10, None)},
            fills=[("alice", e.data.id, e.seq) for e in events if isinstance(e, FillEvent)],
        )
    )
    store.commit(Commit(users={"bob": ("e-2", 1, None)}, fills=[("bob", "f-1", 1)]))

    store.checkpoint("alice", 10, b"{}", prune_through=4, keep_fills=3)
    inside_the_window = store.fill_ids("alice")
    store.checkpoint("alice", 10, b"{}", prune_through=10, keep_fills=3)

    assert [seq for _, seq in inside_the_window] == [5, 6, 7, 8, 9, 10], "seqs after 4 are all kept"
    assert store.fill_ids("alice") == [("f-8", 8), ("f-9", 9), ("f-10", 10)]
    assert store.fill_ids("bob") == [("f-1", 1)], "another user's ids are untouched"


def test_a_schema_3_state_file_without_its_fills_table_is_refused(tmp_path: Path) -> None:
    SqliteStore(tmp_path).close()
    with sqlite3.connect(tmp_path / DB_NAME) as db:
        db.execute("DROP TABLE fills")

    with pytest.raises(StateError, match="fills"):
        SqliteStore(tmp_path)


# ------------------------------------- the lock, refused files, storage failures, quarantine


def test_a_second_lock_on_a_state_dir_is_refused_naming_the_holder_and_freed_with_it(
    tmp_path: Path,
) -> None:
    with StateDirLock(tmp_path) as held:
        held.record_holder()
        with pytest.raises(StateDirInUse) as refused:
            StateDirLock(tmp_path)
    StateDirLock(tmp_path).release()

    assert str(refused.value) == (
        f"the state dir {tmp_path} is in use by another server (pid {os.getpid()}); "
        "stop it or use another --state-dir"
    )


def test_a_lock_file_naming_a_dead_holder_does_not_name_it(tmp_path: Path) -> None:
    (tmp_path / "alphaflow-state.lock").write_text("999999999\n")  # no such process
    with StateDirLock(tmp_path), pytest.raises(StateDirInUse, match="pid not yet recorded"):
        StateDirLock(tmp_path)


def test_a_zero_length_state_file_is_refused_naming_it_and_left_as_it_was(tmp_path: Path) -> None:
    (tmp_path / DB_NAME).write_bytes(b"")

    with pytest.raises(StateError) as refused:
        SqliteStore(tmp_path)

    assert f"the state file {tmp_path / DB_NAME} is empty (0 bytes)" in str(refused.value)
    assert "--reset-state" in str(refused.value)
    assert [(p.name, p.stat().st_size) for p in tmp_path.iterdir()] == [(DB_NAME, 0)]


def _edit(path: Path, *statements: str) -> None:
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        for statement in statements:
            db.execute(statement)


@pytest.mark.parametrize(
    ("statement", "said"),
    [
        ("DROP TABLE prices", "has no prices table"),
        ("UPDATE meta SET value = '4' WHERE key = 'schema_version'", "has schema version 4"),
        ("DELETE FROM meta", "holds users but no schema version"),
    ],
)
def test_a_damaged_state_file_is_refused_before_anything_in_it_is_written(
    tmp_path: Path, statement: str, said: str
) -> None:
    store = SqliteStore(tmp_path)
    store.commit(Commit(users={"alice": ("e-1", 0, None)}))
    store.close()
    _edit(tmp_path / DB_NAME, "PRAGMA journal_mode=DELETE", statement)  # a write would now show
    before = (tmp_path / DB_NAME).read_bytes()

    with pytest.raises(StateError, match=said):
        SqliteStore(tmp_path)

    assert (tmp_path / DB_NAME).read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [DB_NAME]


def test_a_first_start_cut_short_before_any_user_is_taken_for_a_new_state_file(tmp_path: Path) -> None:
    SqliteStore(tmp_path).close()
    _edit(tmp_path / DB_NAME, "DELETE FROM meta")

    assert SqliteStore(tmp_path).load().meta["schema_version"] == SCHEMA_VERSION


def test_a_write_that_fails_on_storage_raises_storage_error_keeps_nothing_and_is_reported(
    tmp_path: Path,
) -> None:
    store = SqliteStore(tmp_path)
    outcomes: list[StorageError | None] = []
    store.observe(outcomes.append)
    store.commit(Commit(users={"alice": ("e-1", 0, None)}))
    # A file that may not grow is a full disk to SQLite ("database or disk is full").
    pages = store._db.execute("PRAGMA page_count").fetchone()[0]
    store._db.execute(f"PRAGMA max_page_count = {pages}")
    big = stamp([fill(f"f-{n}") for n in range(200)], start=0)

    with pytest.raises(StorageError, match="disk is full") as failed:
        store.commit(Commit(events=[run("alice", 1.0, big)], users={"alice": ("e-1", 200, None)}))
    with pytest.raises(StorageError):
        store.checkpoint("alice", 0, b"{}" * 10_000, prune_through=0)
    with pytest.raises(sqlite3.IntegrityError):  # a failed constraint is a bug, not the storage
        store.commit(Commit(events=[run("alice", 1.0, big[:1]), run("alice", 1.0, big[:1])]))
    failures = len(outcomes)
    store._db.execute("PRAGMA max_page_count = 1073741823")
    store.commit(Commit(events=[run("alice", 2.0, big)], users={"alice": ("e-1", 200, None)}))

    assert str(tmp_path / DB_NAME) in str(failed.value)
    assert failures == 2 and all(isinstance(o, StorageError) for o in outcomes[:2])
    assert outcomes[2:] == [None], "the first write that succeeds again is reported once"
    rows = SqliteStore(tmp_path).load().users["alice"]
    assert [at for at, _ in rows.events] == [2.0], "nothing of a failed commit was kept"


def test_quarantine_moves_every_row_of_a_user_aside_keeps_them_and_lists_why(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path)
    for user_id, epoch in (("alice", "e-1"), ("bob", "e-2")):
        events = stamp([fill(f"{user_id}-f1"), position("HX", "5")])
        store.commit(
            Commit(
                events=[run(user_id, 1.0, events)],
                users={user_id: (epoch, 2, b'{"cash": "NaN"}')},
                prices={"HX": ("1e30", "10")},
                fills=[(user_id, f"{user_id}-f1", 1)],
            )
        )
        store.checkpoint(user_id, 2, b"{}", prune_through=0)

    store.quarantine("user", "alice", "the book's positions and account: not a number")
    store.quarantine("price", "HX", "out of range")
    loaded = SqliteStore(tmp_path).load()

    assert set(loaded.users) == {"bob"} and loaded.prices == {}
    assert [(q.kind, q.key, q.reason) for q in loaded.quarantined] == [
        ("user", "alice", "the book's positions and account: not a number"),
        ("price", "HX", "out of range"),
    ]
    assert store.fill_ids("alice") == [] and store.fill_ids("bob") == [("bob-f1", 1)]
    with contextlib.closing(sqlite3.connect(tmp_path / DB_NAME)) as db:
        for table in ("users", "events", "checkpoints", "fills"):
            kept = db.execute(f"SELECT user_id, quarantined_at FROM quarantined_{table}").fetchall()  # noqa: S608
            assert [user for user, _ in kept] == ["alice"], table
        assert db.execute("SELECT symbol, price FROM quarantined_prices").fetchall() == [("HX", "1e30")]
