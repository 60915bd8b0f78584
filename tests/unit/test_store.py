"""SqliteStore: runs of events, the seq a user's rows imply, and the upgrade from schema 1."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import msgspec
import pytest

from alphaflow_live.protocol import Event, encode
from alphaflow_server.store import DB_NAME, SCHEMA_VERSION, Commit, SqliteStore, StateError

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


def test_a_schema_1_state_file_is_upgraded_in_place_and_keeps_every_event(tmp_path: Path) -> None:
    events = stamp([fill("f1"), position("AAPL", "10")])
    with sqlite3.connect(tmp_path / DB_NAME) as db:
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
            INSERT INTO users VALUES ('alice', 'e-1', 2, NULL);
            """
        )
        db.executemany(
            "INSERT INTO events VALUES ('alice', ?, ?, ?)", [(e.seq, 5.0, encode(e)) for e in events]
        )

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
