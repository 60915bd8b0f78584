"""Durable state: every user's epoch, seq, recent events, checkpoints and book.

One small interface, ``StateStore``; ``SqliteStore`` is the single-node
implementation (a Redis Streams one can stand beside it for many nodes) and
``MemoryStore`` keeps nothing, for ``--no-state``.

Each ingest message is one transaction, committed before anything it caused
is sent to a client or acknowledged: a client can never hold an event that a
restarted server does not have, so the epoch can stay the same across a
restart (``kill -9`` included) and clients resume exactly. SQLite runs in WAL
mode with ``synchronous=NORMAL``: a commit is one write to the log, durable
against a crash of the process (not of the machine, which needs FULL).

Events are stored a run at a time: one row per user per commit, holding the
JSON array of the events with seqs ``seq`` to ``last_seq``. A re-mark of a
thousand users is then a thousand rows, not tens of thousands.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

SCHEMA_VERSION = "2"
DB_NAME = "alphaflow-state.sqlite3"

# Runs of events: ``events`` is the JSON array of the events with seqs ``seq`` to ``last_seq``.
_EVENTS_TABLE = """
CREATE TABLE IF NOT EXISTS events (
    user_id TEXT NOT NULL, seq INTEGER NOT NULL, last_seq INTEGER NOT NULL, appended_at REAL NOT NULL,
    events BLOB NOT NULL,
    PRIMARY KEY (user_id, seq)
);
"""

# Version 1 kept one row per event; version 2 keeps runs (see the module's doc).
_MIGRATE_1_TO_2 = "\n".join(
    (
        "ALTER TABLE events RENAME TO events_v1;",
        _EVENTS_TABLE,
        "INSERT INTO events SELECT user_id, seq, seq, appended_at,"
        " CAST('[' || CAST(event AS TEXT) || ']' AS BLOB) FROM events_v1;",
        "DROP TABLE events_v1;",
        "UPDATE meta SET value = '2' WHERE key = 'schema_version';",
    )
)

_SCHEMA = (
    """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS users (
    user_id TEXT PRIMARY KEY, epoch TEXT NOT NULL, seq INTEGER NOT NULL, book BLOB
);
"""
    + _EVENTS_TABLE
    + """
CREATE TABLE IF NOT EXISTS checkpoints (
    user_id TEXT PRIMARY KEY, seq INTEGER NOT NULL, snapshot BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS prices (
    symbol TEXT PRIMARY KEY, price TEXT NOT NULL, reference TEXT NOT NULL
);
"""
)


class StateError(Exception):
    """The state directory cannot be used; the message says what to do."""


@dataclass
class UserRows:
    epoch: str
    seq: int
    book: bytes | None
    checkpoint_seq: int | None = None
    checkpoint: bytes | None = None
    # (wall-clock time appended, JSON array of consecutive events), oldest first
    events: list[tuple[float, bytes]] = field(default_factory=list)


@dataclass
class LoadedState:
    users: dict[str, UserRows]
    prices: dict[str, tuple[str, str]]
    meta: dict[str, str]


@dataclass
class Commit:
    """What one transaction writes."""

    # (user_id, wall-clock time, first seq, last seq, each of the events first..last encoded)
    events: list[tuple[str, float, int, int, Sequence[bytes]]] = field(default_factory=list)
    # user_id → (epoch, seq, encoded book or None); a user's seq also follows from its events,
    # so a commit of events alone need not write the user's row
    users: dict[str, tuple[str, int, bytes | None]] = field(default_factory=dict)
    # symbol → (price, day reference)
    prices: dict[str, tuple[str, str]] = field(default_factory=dict)
    meta: dict[str, str] = field(default_factory=dict)


class StateStore(Protocol):
    def load(self) -> LoadedState: ...
    def commit(self, commit: Commit) -> None: ...
    def checkpoint(self, user_id: str, seq: int, snapshot: bytes, prune_through: int) -> None: ...
    def close(self) -> None: ...


class MemoryStore:
    """Keeps nothing: state lives and dies with the process."""

    def load(self) -> LoadedState:
        return LoadedState(users={}, prices={}, meta={})

    def commit(self, commit: Commit) -> None:
        pass

    def checkpoint(self, user_id: str, seq: int, snapshot: bytes, prune_through: int) -> None:
        pass

    def close(self) -> None:
        pass


class SqliteStore:
    def __init__(self, directory: Path, *, reset: bool = False) -> None:
        self.path = directory / DB_NAME
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StateError(f"cannot create the state directory {directory}: {exc.strerror}") from None
        if reset:
            self._move_aside()
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            check = self._db.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise sqlite3.DatabaseError(check)
            self._db.executescript(_SCHEMA)
            version = self._db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        except sqlite3.Error as exc:
            raise StateError(
                f"the state file {self.path} is unreadable ({exc}); the server will not start on it. "
                "Restore it from a backup, or start with --reset-state to move it aside and begin empty."
            ) from None
        if version is None:
            self._db.execute("INSERT INTO meta VALUES ('schema_version', ?)", (SCHEMA_VERSION,))
        elif version[0] == "1":
            self._db.executescript(f"BEGIN; {_MIGRATE_1_TO_2} COMMIT;")
        elif version[0] != SCHEMA_VERSION:
            raise StateError(
                f"the state file {self.path} has schema version {version[0]}, "
                f"this server reads {SCHEMA_VERSION}; use a matching server or --reset-state"
            )

    def _move_aside(self) -> None:
        stamp = time.strftime("%Y%m%dT%H%M%S")
        for suffix in ("", "-wal", "-shm"):
            source = Path(str(self.path) + suffix)
            if source.exists():
                source.rename(Path(f"{self.path}.reset-{stamp}{suffix}"))

    def load(self) -> LoadedState:
        db = self._db
        users = {
            user_id: UserRows(epoch, seq, book)
            for user_id, epoch, seq, book in db.execute("SELECT user_id, epoch, seq, book FROM users")
        }
        for user_id, seq, snapshot in db.execute("SELECT user_id, seq, snapshot FROM checkpoints"):
            if user_id in users:
                rows = users[user_id]
                rows.checkpoint_seq, rows.checkpoint = seq, snapshot
                rows.seq = max(rows.seq, seq)
        for user_id, last_seq, appended_at, events in db.execute(
            "SELECT user_id, last_seq, appended_at, events FROM events ORDER BY user_id, seq"
        ):
            if user_id in users:
                rows = users[user_id]
                rows.events.append((appended_at, events))
                rows.seq = max(rows.seq, last_seq)
        prices = {s: (p, r) for s, p, r in db.execute("SELECT symbol, price, reference FROM prices")}
        meta = dict(db.execute("SELECT key, value FROM meta"))
        return LoadedState(users=users, prices=prices, meta=meta)

    def commit(self, commit: Commit) -> None:
        db = self._db
        try:
            db.execute("BEGIN")
            if commit.events:
                db.executemany(
                    "INSERT INTO events VALUES (?, ?, ?, ?, ?)",
                    [
                        (user, first, last, at, b"[" + b",".join(encoded) + b"]")
                        for user, at, first, last, encoded in commit.events
                    ],
                )
            for user_id, (epoch, seq, book) in commit.users.items():
                db.execute(
                    "INSERT INTO users VALUES (?, ?, ?, ?) ON CONFLICT(user_id) DO UPDATE SET "
                    "epoch = excluded.epoch, seq = excluded.seq, book = coalesce(excluded.book, users.book)",
                    (user_id, epoch, seq, book),
                )
            if commit.prices:
                db.executemany(
                    "INSERT OR REPLACE INTO prices VALUES (?, ?, ?)",
                    [(s, p, r) for s, (p, r) in commit.prices.items()],
                )
            if commit.meta:
                db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", list(commit.meta.items()))
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    def checkpoint(self, user_id: str, seq: int, snapshot: bytes, prune_through: int) -> None:
        """Store the user's state as of ``seq`` and drop events no longer needed."""
        db = self._db
        try:
            db.execute("BEGIN")
            db.execute("INSERT OR REPLACE INTO checkpoints VALUES (?, ?, ?)", (user_id, seq, snapshot))
            db.execute("DELETE FROM events WHERE user_id = ? AND last_seq <= ?", (user_id, prune_through))
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    def close(self) -> None:
        self._db.close()


def open_store(directory: Path | None, *, reset: bool = False) -> StateStore:
    return MemoryStore() if directory is None else SqliteStore(directory, reset=reset)
