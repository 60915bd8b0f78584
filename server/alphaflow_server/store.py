"""Durable state, the interface: what a state store keeps, how it fails, and one that keeps nothing.

``StateStore`` is the one small interface the ledger writes through and the
server restores from; ``sqlite_store.SqliteStore`` is the single-node
implementation (a Redis one can stand beside it for many nodes) and
``MemoryStore`` keeps nothing, for ``--no-state``.

Each ingest message is one transaction, committed before anything it caused
is sent to a client or acknowledged: a client can never hold an event that a
restarted server does not have, so the epoch can stay the same across a
restart (``kill -9`` included) and clients resume exactly.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol


class StateError(Exception):
    """The state directory cannot be used; the message says what to do."""


class StateDirInUse(StateError):
    """Another process holds the state directory's lock."""


class StorageError(Exception):
    """A write to the state store failed for the storage's sake (disk full, I/O error, locked).

    The transaction was rolled back: nothing of it is stored, and the same
    write may succeed later. A failed constraint is not one of these: that is
    a bug (or a second writer), and stays the ``sqlite3`` error it is.
    """

    def __init__(self, message: str, *, cause: str | None = None) -> None:
        super().__init__(message)
        # SQLite's words alone, for those who should not see the server's paths (publishers, /healthz).
        self.cause = message if cause is None else cause


QuarantineKind = Literal["user", "price"]


@dataclass(frozen=True)
class Quarantined:
    """Stored rows set aside because they could not be applied: a user's, or a symbol's price."""

    kind: QuarantineKind
    key: str
    reason: str
    at: float


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
    # What earlier starts set aside and no operator has cleared yet.
    quarantined: list[Quarantined] = field(default_factory=list)


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
    # (user_id, fill id, seq of the fill's event): the fills these events applied
    fills: list[tuple[str, str, int]] = field(default_factory=list)


class StateStore(Protocol):
    def load(self) -> LoadedState: ...
    def commit(self, commit: Commit) -> None: ...
    def checkpoint(
        self, user_id: str, seq: int, snapshot: bytes, prune_through: int, *, keep_fills: int = ...
    ) -> None: ...
    def fill_ids(self, user_id: str) -> list[tuple[str, int]]: ...
    def quarantine(self, kind: QuarantineKind, key: str, reason: str) -> Quarantined: ...
    def observe(self, listener: Callable[[StorageError | None], None]) -> None: ...
    def close(self) -> None: ...


class MemoryStore:
    """Keeps nothing: state lives and dies with the process."""

    def load(self) -> LoadedState:
        return LoadedState(users={}, prices={}, meta={})

    def commit(self, commit: Commit) -> None:
        pass

    def checkpoint(
        self, user_id: str, seq: int, snapshot: bytes, prune_through: int, *, keep_fills: int = 0
    ) -> None:
        pass

    def fill_ids(self, user_id: str) -> list[tuple[str, int]]:
        return []

    def quarantine(self, kind: QuarantineKind, key: str, reason: str) -> Quarantined:
        return Quarantined(kind, key, reason, time.time())

    def observe(self, listener: Callable[[StorageError | None], None]) -> None:
        pass

    def close(self) -> None:
        pass
