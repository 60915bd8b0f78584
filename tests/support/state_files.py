"""Ways to spoil a stopped server's state file, for the tests that check a server refuses it
(exit 2, the file named, the file left as it was) or quarantines what it cannot apply."""

from __future__ import annotations

import contextlib
import json
import random
import sqlite3
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def edit(path: Path) -> Iterator[sqlite3.Connection]:
    """The state file opened directly, committed and closed (so no WAL of ours is left behind)."""
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        yield db


def zero_length(path: Path) -> None:
    path.write_bytes(b"")


def truncated(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def garbage(path: Path) -> None:
    path.write_bytes(random.Random(14).randbytes(max(path.stat().st_size, 4096)))


def wrong_schema_version(path: Path) -> None:
    with edit(path) as db:
        db.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")


def missing_table(path: Path) -> None:
    with edit(path) as db:
        db.execute("DROP TABLE checkpoints")


def a_directory(path: Path) -> None:
    path.unlink()
    path.mkdir()


def set_book_cash(db: sqlite3.Connection, user_id: str, cash: str) -> None:
    """Store ``cash`` in the user's book as written, as an older build might have."""
    (book,) = db.execute("SELECT book FROM users WHERE user_id = ?", (user_id,)).fetchone()
    record = json.loads(book)
    record["cash"] = cash
    db.execute("UPDATE users SET book = ? WHERE user_id = ?", (json.dumps(record).encode(), user_id))
