"""SqliteStore: every user's epoch, seq, recent events, checkpoints, book and applied fill ids,
in one SQLite file in the state dir (the single-node ``StateStore``).

Each ingest message is one transaction (see ``store``). SQLite runs in WAL
mode with ``synchronous=NORMAL``: a commit is one write to the log, durable
against a crash of the process (not of the machine, which needs FULL).

Events are stored a run at a time: one row per user per commit, holding the
JSON array of the events with seqs ``seq`` to ``last_seq``. A re-mark of a
thousand users is then a thousand rows, not tens of thousands.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from .store import (
    Commit,
    LoadedState,
    MemoryStore,
    Quarantined,
    QuarantineKind,
    StateError,
    StateStore,
    StorageError,
    UserRows,
)

SCHEMA_VERSION = "3"
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

# The fill ids applied per user (fill_ids.py: a fill's id is its idempotency key), with the seq
# of the fill's event, which ``checkpoint`` prunes by.
_FILLS_TABLE = """
CREATE TABLE IF NOT EXISTS fills (
    user_id TEXT NOT NULL, fill_id TEXT NOT NULL, seq INTEGER NOT NULL,
    PRIMARY KEY (user_id, fill_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS fills_by_seq ON fills (user_id, seq);
"""

# Version 3 adds ``fills``, seeded with the fills the stored events hold (the replay window, at
# least), so a publisher that re-sends one of them across the upgrade does not apply it twice.
# Builds before version 3 applied a re-sent fill again: its id is kept once, at its last seq.
_MIGRATE_2_TO_3 = "\n".join(
    (
        _FILLS_TABLE,
        "INSERT OR REPLACE INTO fills"
        " SELECT e.user_id, json_extract(j.value, '$.data.id'), max(json_extract(j.value, '$.seq'))"
        " FROM events AS e, json_each(CAST(e.events AS TEXT)) AS j"
        " WHERE json_extract(j.value, '$.type') = 'fill'"
        " GROUP BY e.user_id, json_extract(j.value, '$.data.id');",
        "UPDATE meta SET value = '3' WHERE key = 'schema_version';",
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
    + _FILLS_TABLE
)


# What ``quarantine`` set aside, and why; an operator clears a row once it is dealt with.
_QUARANTINE_TABLE = """
CREATE TABLE IF NOT EXISTS quarantine (
    quarantined_at REAL NOT NULL, kind TEXT NOT NULL, key TEXT NOT NULL, reason TEXT NOT NULL
)"""


# Schema version → the script that brings it to SCHEMA_VERSION.
_UPGRADES = {"1": f"{_MIGRATE_1_TO_2} {_MIGRATE_2_TO_3}", "2": _MIGRATE_2_TO_3}


_WHAT_TO_DO = "Restore it from a backup, or start with --reset-state to move it aside and begin empty."


def _required_tables(version: str) -> set[str] | None:
    """The tables a state file of this schema version must have; None for a version not read here."""
    if version == "1":
        return {"meta", "users", "events"}
    if version.isdigit() and 2 <= int(version) <= int(SCHEMA_VERSION):
        since_3 = {"fills"} if int(version) >= 3 else set()
        return {"meta", "users", "events", "checkpoints", "prices"} | since_3
    return None


# The sqlite3 errors that say the storage failed rather than the statement: retrying may succeed.
def _is_storage_failure(exc: BaseException) -> bool:
    return isinstance(exc, sqlite3.DatabaseError) and not isinstance(
        exc, sqlite3.IntegrityError | sqlite3.ProgrammingError
    )


class SqliteStore:
    def __init__(self, directory: Path, *, reset: bool = False) -> None:
        self.path = directory / DB_NAME
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StateError(f"cannot create the state directory {directory}: {exc.strerror}") from None
        if reset:
            self._move_aside()
        self._refuse_empty()
        self._listener: Callable[[StorageError | None], None] | None = None
        self._failing = False
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise self._unreadable(exc) from None
        try:
            # Every check reads only: a file that is refused is left as it was (but for a WAL that
            # a crash left, which SQLite folds into the file when this connection closes).
            version = self._check()
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
        except (sqlite3.Error, StateError) as exc:
            self._db.close()
            if isinstance(exc, StateError):
                raise
            raise self._unreadable(exc) from None
        if version is None:
            self._db.execute("INSERT INTO meta VALUES ('schema_version', ?)", (SCHEMA_VERSION,))
        elif version[0] in _UPGRADES:
            self._upgrade(version[0])
        elif version[0] != SCHEMA_VERSION:
            raise StateError(
                f"the state file {self.path} has schema version {version[0]}, "
                f"this server reads {SCHEMA_VERSION}; use a matching server or --reset-state"
            )

    def _upgrade(self, version: str) -> None:
        """Bring a state file of an older schema to this one, in place and in one transaction."""
        try:
            self._db.executescript(f"BEGIN; {_UPGRADES[version]} COMMIT;")
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
            self._db.close()
            raise StateError(
                f"the state file {self.path} (schema version {version}) could not be upgraded to "
                f"version {SCHEMA_VERSION} ({exc}); it is unchanged. Run the server it was written "
                "by, or restore it from a backup, or start with --reset-state to begin empty."
            ) from None

    def _unreadable(self, exc: sqlite3.Error) -> StateError:
        return StateError(
            f"the state file {self.path} is unreadable ({exc}); the server will not start on it. "
            f"{_WHAT_TO_DO}"
        )

    def _refuse_empty(self) -> None:
        # SQLite takes an empty file for a new database: starting on one would be a silent reset.
        with contextlib.suppress(FileNotFoundError):
            if self.path.stat().st_size == 0:
                raise StateError(
                    f"the state file {self.path} is empty (0 bytes): it was truncated or never "
                    "written, and starting on it would lose every user's epoch and events. "
                    f"{_WHAT_TO_DO}"
                )

    def _check(self) -> tuple[str] | None:
        """The file's schema version row (None for a new file), once the file is known to be usable."""
        db = self._db
        check = db.execute("PRAGMA quick_check").fetchone()[0]
        if check != "ok":
            raise sqlite3.DatabaseError(" ".join(check.split())[:200])  # on one line, as errors are
        tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        row = None
        if "meta" in tables:
            row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        if row is None:
            # No tables, or a first start cut short before its first user: a new state file.
            if "users" not in tables or db.execute("SELECT 1 FROM users LIMIT 1").fetchone() is None:
                return None
            raise StateError(
                f"the state file {self.path} holds users but no schema version: it is not an "
                f"AlphaFlow Live state file, or its meta table was damaged. {_WHAT_TO_DO}"
            )
        version = str(row[0])
        required = _required_tables(version)
        if required is None:
            raise StateError(
                f"the state file {self.path} has schema version {version}, "
                f"this server reads {SCHEMA_VERSION}; use a matching server or --reset-state"
            )
        missing = sorted(required - tables)
        if missing:
            raise StateError(
                f"the state file {self.path} (schema version {version}) has no "
                f"{', '.join(missing)} table: it was damaged or edited. {_WHAT_TO_DO}"
            )
        return (version,)

    def _move_aside(self) -> None:
        stamp = time.strftime("%Y%m%dT%H%M%S")
        for suffix in ("", "-wal", "-shm"):
            source = Path(str(self.path) + suffix)
            if source.exists():
                source.rename(Path(f"{self.path}.reset-{stamp}{suffix}"))

    def load(self) -> LoadedState:
        try:
            loaded = self._load()
            loaded.quarantined = self._quarantined()
        except sqlite3.Error as exc:
            raise self._unreadable(exc) from None
        return loaded

    def _load(self) -> LoadedState:
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
        with self._transaction() as db:
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
            if commit.fills:
                # A conflict is an id whose retention ended, applied again: it counts from its new seq.
                db.executemany(
                    "INSERT INTO fills VALUES (?, ?, ?)"
                    " ON CONFLICT (user_id, fill_id) DO UPDATE SET seq = excluded.seq",
                    commit.fills,
                )

    def checkpoint(
        self, user_id: str, seq: int, snapshot: bytes, prune_through: int, *, keep_fills: int = 100_000
    ) -> None:
        """Store the user's state as of ``seq`` and drop events no longer needed, and the fill ids
        of fills at or before ``prune_through`` that are not among the user's ``keep_fills`` newest."""
        with self._transaction() as db:
            db.execute("INSERT OR REPLACE INTO checkpoints VALUES (?, ?, ?)", (user_id, seq, snapshot))
            db.execute("DELETE FROM events WHERE user_id = ? AND last_seq <= ?", (user_id, prune_through))
            db.execute(
                "DELETE FROM fills WHERE user_id = ?1 AND seq <= ?2 AND seq <= coalesce("
                "(SELECT seq FROM fills WHERE user_id = ?1 ORDER BY seq DESC LIMIT 1 OFFSET ?3), -1)",
                (user_id, prune_through, keep_fills),
            )

    def fill_ids(self, user_id: str) -> list[tuple[str, int]]:
        """The user's applied fills still kept: (fill id, seq), oldest first."""
        try:
            return list(
                self._db.execute("SELECT fill_id, seq FROM fills WHERE user_id = ? ORDER BY seq", (user_id,))
            )
        except sqlite3.Error as exc:
            if not _is_storage_failure(exc):
                raise
            raise StorageError(f"the state file {self.path} could not be read: {exc}") from exc

    # ------------------------------------------------------- storage health

    def observe(self, listener: Callable[[StorageError | None], None]) -> None:
        """Call ``listener`` with each write that fails on storage, and with None at the first one
        that succeeds after them."""
        self._listener = listener

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: committed, or rolled back, a storage failure raised as a
        ``StorageError`` (and told to the observer, as the first success after it is)."""
        db = self._db
        try:
            db.execute("BEGIN")
            yield db
            db.execute("COMMIT")
        except BaseException as exc:
            if (failure := self._failed(exc)) is None:
                raise
            raise failure from exc
        self._succeeded()

    def _failed(self, exc: BaseException) -> StorageError | None:
        """Roll back; the ``StorageError`` to raise instead of ``exc`` when the storage failed."""
        db = self._db
        # A rollback that fails too leaves SQLite to roll back itself (it does, on a failed write).
        with contextlib.suppress(sqlite3.Error):
            if db.in_transaction:
                db.execute("ROLLBACK")
        if not _is_storage_failure(exc):
            return None
        failure = StorageError(f"the state file {self.path} could not be written: {exc}", cause=str(exc))
        self._failing = True
        if self._listener is not None:
            self._listener(failure)
        return failure

    def _succeeded(self) -> None:
        if self._failing:
            self._failing = False
            if self._listener is not None:
                self._listener(None)

    # ----------------------------------------------------------- quarantine

    def quarantine(self, kind: QuarantineKind, key: str, reason: str) -> Quarantined:
        """Move a user's rows (in every table with a ``user_id``), or a symbol's price, aside.

        Nothing is deleted: each row goes to ``quarantined_<table>``, a copy of
        its table with a ``quarantined_at`` column, and ``quarantine`` says what
        was set aside and why; one transaction.
        """
        entry = Quarantined(kind, key, reason, time.time())
        with self._transaction() as db:
            if kind == "price":
                tables, column = ["prices"], "symbol"
            else:
                tables, column = [t for t in self._tables() if "user_id" in self._columns(t)], "user_id"
            # Every name below is one of the file's own tables and columns, never an input.
            for table in tables:
                columns = self._columns(table)
                shadow = f"quarantined_{table}"
                db.execute(f'CREATE TABLE IF NOT EXISTS "{shadow}" AS SELECT * FROM "{table}" WHERE 0')  # noqa: S608
                kept = self._columns(shadow)
                # A table that gained columns since its rows were first set aside: the copy gains them too.
                for name in [c for c in (*columns, "quarantined_at") if c not in kept]:
                    db.execute(f'ALTER TABLE "{shadow}" ADD COLUMN "{name}"')
                names = ", ".join(f'"{c}"' for c in columns)
                copy = f'INSERT INTO "{shadow}" ({names}, quarantined_at) SELECT {names}, ? FROM "{table}"'  # noqa: S608
                db.execute(f'{copy} WHERE "{column}" = ?', (entry.at, key))
                db.execute(f'DELETE FROM "{table}" WHERE "{column}" = ?', (key,))  # noqa: S608
            db.execute(_QUARANTINE_TABLE)
            db.execute("INSERT INTO quarantine VALUES (?, ?, ?, ?)", (entry.at, kind, key, reason))
        return entry

    def _tables(self) -> list[str]:
        return [
            name
            for (name,) in self._db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            if not name.startswith("quarantine")
        ]

    def _columns(self, table: str) -> list[str]:
        return [row[1] for row in self._db.execute(f'PRAGMA table_info("{table}")')]

    def _quarantined(self) -> list[Quarantined]:
        if not self._columns("quarantine"):
            return []
        return [
            Quarantined(kind, key, reason, at)
            for at, kind, key, reason in self._db.execute(
                "SELECT quarantined_at, kind, key, reason FROM quarantine ORDER BY quarantined_at"
            )
        ]

    def close(self) -> None:
        self._db.close()


def open_store(directory: Path | None, *, reset: bool = False) -> StateStore:
    return MemoryStore() if directory is None else SqliteStore(directory, reset=reset)
