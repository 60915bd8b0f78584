"""Users, roles and tokens. Only a SHA-256 hash of each token is ever stored.

Tokens are 256 bits from ``secrets``; at that entropy a fast hash is as safe
as a slow one and keeps the handshake cheap. The users file is JSON, written
atomically with mode 0600, and re-read by a running server when it changes,
so ``alphaflow-live users add`` takes effect without a restart.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import msgspec

from alphaflow_live.protocol import format_timestamp

Role = Literal["user", "service", "admin"]
ROLES: tuple[Role, ...] = ("user", "service", "admin")
TOKEN_PREFIX = "afl_"  # noqa: S105 - a prefix that makes leaked tokens easy to grep for
_NAME = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")


class UserRecord(msgspec.Struct, kw_only=True):
    name: str
    role: Role
    token_sha256: str
    created_at: str


class UsersFile(msgspec.Struct, kw_only=True):
    version: int = 1
    users: list[UserRecord] = msgspec.field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Principal:
    name: str
    role: Role


class UsersFileError(Exception):
    """The users file cannot be read or does not hold what it should."""


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


class TokenStore:
    def __init__(self, records: list[UserRecord] | None = None) -> None:
        self._by_name: dict[str, UserRecord] = {}
        self._by_hash: dict[str, UserRecord] = {}
        for record in records or []:
            self._insert(record)

    def _insert(self, record: UserRecord) -> None:
        if record.name in self._by_name:
            raise ValueError(f"user {record.name!r} appears twice")
        self._by_name[record.name] = record
        self._by_hash[record.token_sha256] = record

    def __len__(self) -> int:
        return len(self._by_name)

    def records(self) -> list[UserRecord]:
        return sorted(self._by_name.values(), key=lambda r: r.name)

    def authenticate(self, token: str) -> Principal | None:
        record = self._by_hash.get(hash_token(token))
        return None if record is None else Principal(record.name, record.role)

    def add(self, name: str, role: Role, *, token: str | None = None) -> str:
        """Create a user and return its token (the only time it is ever seen)."""
        if not _NAME.match(name):
            raise ValueError(f"invalid user name {name!r}: use 1-64 letters, digits, '_', '.', '@' or '-'")
        if role not in ROLES:
            raise ValueError(f"invalid role {role!r}: one of {', '.join(ROLES)}")
        if name in self._by_name:
            raise ValueError(f"user {name!r} exists; use 'users rotate {name}' for a new token")
        token = token or new_token()
        self._insert(
            UserRecord(
                name=name,
                role=role,
                token_sha256=hash_token(token),
                created_at=format_timestamp(time.time()),
            )
        )
        return token

    def remove(self, name: str) -> None:
        record = self._by_name.pop(name, None)
        if record is None:
            raise KeyError(f"no user {name!r}")
        del self._by_hash[record.token_sha256]

    def rotate(self, name: str) -> str:
        record = self._by_name.get(name)
        if record is None:
            raise KeyError(f"no user {name!r}")
        self.remove(name)
        return self.add(name, record.role)

    def get(self, name: str) -> UserRecord | None:
        return self._by_name.get(name)


def load_users_file(path: Path) -> TokenStore:
    """The store in ``path``; an absent file is an empty store."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return TokenStore()
    except OSError as exc:
        raise UsersFileError(f"cannot read users file {path}: {exc.strerror}") from None
    try:
        return TokenStore(msgspec.json.decode(raw, type=UsersFile).users)
    except (msgspec.DecodeError, ValueError) as exc:
        raise UsersFileError(f"users file {path} is not valid: {exc} (fix it or move it away)") from None


def save_users_file(path: Path, store: TokenStore) -> None:
    """Write atomically, readable by the owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = msgspec.json.format(msgspec.json.encode(UsersFile(users=store.records())), indent=2)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data + b"\n")
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class UsersSource(Protocol):
    """What the server asks of its users: the users file's watcher, or (in a cluster) Redis's."""

    @property
    def store(self) -> TokenStore: ...

    def current(self, now: float) -> TokenStore: ...


class UsersFileWatcher:
    """Serves a TokenStore and re-reads the file when its mtime changes.

    Checks at most once per ``check_interval_s`` so that a handshake storm
    costs one ``stat`` a second, not one per handshake. A file that turns
    unreadable keeps the last good store (and is reported by ``error``).
    """

    def __init__(self, path: Path, *, check_interval_s: float = 1.0) -> None:
        self.path = path
        self._interval = check_interval_s
        self._checked_at = -float("inf")
        self._mtime = self._stat()
        self.store = load_users_file(path)
        self.error: str | None = None

    def _stat(self) -> int | None:
        try:
            return self.path.stat().st_mtime_ns
        except FileNotFoundError:
            return None

    def current(self, now: float) -> TokenStore:
        if now - self._checked_at >= self._interval:
            self._checked_at = now
            mtime = self._stat()
            if mtime != self._mtime:
                try:
                    self.store = load_users_file(self.path)
                    self.error = None
                    self._mtime = mtime
                except UsersFileError as exc:
                    self.error = str(exc)
        return self.store
