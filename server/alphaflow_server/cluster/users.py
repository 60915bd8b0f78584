"""Users and their token hashes in Redis, so every node of a cluster authenticates against one set.

- ``afl:{users}:records`` is a hash: user name -> the ``auth.UserRecord``
  JSON, exactly what the users file holds for that user. Tokens are never
  stored, only their SHA-256 (``auth``).
- ``afl:{users}:version`` is an integer that every change bumps in the same
  script as the change, so a node polls one short GET to know whether to
  reload the hash. The first version is seeded from Redis's clock: if Redis
  ever loses the keys, the versions that follow are new ones, never a
  repeat of a version a node has cached with other users.
- The rules (names, roles, duplicates, new tokens) are ``auth.TokenStore``'s:
  a change loads the records and version (atomically, one script), applies
  itself to the store, and writes back only the record it changed, provided
  the version is still the one it loaded. Otherwise it loads again and
  retries, so two admins at once never lose a change, and an ``add`` of a
  name someone just added is refused as it would be from the file.
- Both keys carry the tag ``{users}``: one slot, so the scripts run as they
  are on a Redis Cluster.
- A node keeps the last users it loaded while Redis is away: handshakes go
  on, and a change made meanwhile arrives when Redis is back.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import Any, TypeVar

import msgspec

from ..auth import Role, TokenStore, UserRecord
from .cancel import pause
from .connect import SyncClient
from .keys import PREFIX
from .redis_log import UNAVAILABLE_ERRORS, Client, Unavailable

USERS_RECORDS_KEY = f"{PREFIX}:{{users}}:records"
USERS_VERSION_KEY = f"{PREFIX}:{{users}}:version"
_KEYS = [USERS_RECORDS_KEY, USERS_VERSION_KEY]
# Each conflict means another change went in, so the whole set progresses; these bound one writer's wait.
_WRITE_ATTEMPTS = 20
_CONFLICT_BACKOFF_S = 0.005

log = logging.getLogger("alphaflow.server.users")
T = TypeVar("T")

# KEYS: records, version. Reply: {version, {name, json, name, json, ...}} as one consistent read.
READ_USERS = """#!lua flags=no-writes
local version = redis.call('GET', KEYS[2]) or '0'
return {version, redis.call('HGETALL', KEYS[1])}
"""

# KEYS: records, version. ARGV: the version the change was computed from, the name, 'set' or 'del',
# the record's JSON. Reply: {'ok', new version} or {'conflict', current version}.
WRITE_USER = """
local current = redis.call('GET', KEYS[2]) or '0'
if current ~= ARGV[1] then
  return {'conflict', current}
end
if ARGV[3] == 'set' then
  redis.call('HSET', KEYS[1], ARGV[2], ARGV[4])
else
  redis.call('HDEL', KEYS[1], ARGV[2])
end
if current == '0' then
  local now = redis.call('TIME')
  redis.call('SET', KEYS[2], now[1] .. string.format('%06d', tonumber(now[2])))
end
return {'ok', redis.call('INCR', KEYS[2])}
"""


class InvalidUsers(Exception):
    """The users in Redis do not decode: someone wrote them by hand. Fix or delete the record."""


def decode_users(reply: Any) -> tuple[int, TokenStore]:
    """The version and the store from ``READ_USERS``'s reply."""
    raw_version, flat = reply
    version = int(raw_version)
    records: list[UserRecord] = []
    for name, raw in zip(flat[::2], flat[1::2], strict=True):
        field = name.decode(errors="replace")
        try:
            record = msgspec.json.decode(raw, type=UserRecord)
        except msgspec.DecodeError as error:
            raise InvalidUsers(
                f"user {field!r} in Redis ({USERS_RECORDS_KEY}) is not a valid user record: {error} "
                f"(remove it with 'alphaflow-live users remove {field} --redis URL')"
            ) from None
        if record.name != field:
            raise InvalidUsers(
                f"user {field!r} in Redis ({USERS_RECORDS_KEY}) holds the record of {record.name!r} "
                f"(remove it with 'alphaflow-live users remove {field} --redis URL')"
            )
        records.append(record)
    return version, TokenStore(records)


def write_args(version: int, name: str, store: TokenStore) -> list[str | bytes]:
    """``WRITE_USER``'s arguments that make Redis hold ``name`` as ``store`` now does (or not at all)."""
    record = store.get(name)
    if record is None:
        return [str(version), name, "del", b""]
    return [str(version), name, "set", msgspec.json.encode(record)]


class RedisUserStore:
    """The users in Redis for the CLI (synchronous): each change is one checked write of one record."""

    def __init__(self, client: SyncClient) -> None:
        self._read = client.register_script(READ_USERS)
        self._write = client.register_script(WRITE_USER)

    def load(self) -> TokenStore:
        return self._snapshot()[1]

    def add(self, name: str, role: Role, *, token: str | None = None) -> str:
        """Create a user and return its token (the only time it is seen); ``ValueError`` if it exists."""
        return self._change(name, lambda store: store.add(name, role, token=token))

    def rotate(self, name: str) -> str:
        """A new token for ``name`` (the old one stops working); ``KeyError`` if there is no such user."""
        return self._change(name, lambda store: store.rotate(name))

    def remove(self, name: str) -> None:
        """``KeyError`` if there is no such user."""
        self._change(name, lambda store: store.remove(name))

    def _snapshot(self) -> tuple[int, TokenStore]:
        return decode_users(self._call(self._read, []))

    def _change(self, name: str, apply: Callable[[TokenStore], T]) -> T:
        for attempt in range(_WRITE_ATTEMPTS):
            version, store = self._snapshot()
            result = apply(store)
            status, _version = self._call(self._write, write_args(version, name, store))
            if status == b"ok":
                return result
            # Another change went in since the load: apply ours again on top of it.
            time.sleep(random.uniform(0, _CONFLICT_BACKOFF_S * (attempt + 1)))
        raise Unavailable(
            f"the users in Redis changed {_WRITE_ATTEMPTS} times while changing {name!r}; nothing was "
            "changed by this command: run it again"
        )

    def _call(self, script: Any, args: list[str | bytes]) -> Any:
        try:
            return script(keys=_KEYS, args=args)
        except UNAVAILABLE_ERRORS as error:
            raise Unavailable(f"Redis cannot serve the users: {type(error).__name__}: {error}") from error


class RedisUsersWatcher:
    """Each node's users: loaded at start, reloaded within ``refresh_s`` of any change.

    ``current`` and ``store`` answer from memory, so a handshake never waits
    for Redis, and a Redis that is away leaves the last users in place.
    """

    def __init__(self, client: Client, *, refresh_s: float = 0.5) -> None:
        if refresh_s <= 0:
            raise ValueError(f"refresh_s must be positive, got {refresh_s}")
        self._client = client
        self._read = client.register_script(READ_USERS)
        self._refresh_s = refresh_s
        self.store = TokenStore()
        # None until the first load: then any version is news.
        self.version: int | None = None
        # Why the users could not be refreshed, while they cannot (as ``UsersFileWatcher.error``).
        self.error: str | None = None

    def current(self, now: float) -> TokenStore:
        return self.store

    async def load(self) -> None:
        """Read every user now; ``Unavailable`` if Redis cannot serve, ``InvalidUsers`` if one is bad."""
        try:
            reply = await self._read(keys=_KEYS, args=[])
        except UNAVAILABLE_ERRORS as error:
            raise Unavailable(f"Redis cannot serve the users: {type(error).__name__}: {error}") from error
        self.version, self.store = decode_users(reply)

    async def refresh(self) -> bool:
        """Reload if the version moved; whether it did. Errors as ``load``."""
        try:
            raw = await self._client.get(USERS_VERSION_KEY)
        except UNAVAILABLE_ERRORS as error:
            raise Unavailable(f"Redis cannot serve the users: {type(error).__name__}: {error}") from error
        if self.version is not None and int(raw or 0) == self.version:
            return False
        await self.load()
        return True

    async def run(self, on_error: Callable[[Exception | None], None] | None = None) -> None:
        """Refresh every ``refresh_s`` until cancelled; report each outage once, and its end with None."""
        failing = False
        while True:
            await pause(self._refresh_s)
            try:
                changed = await self.refresh()
            except Exception as error:
                # Any error at all, a bug included: the node keeps its users and says so, once.
                if not failing:
                    failing = True
                    self.error = str(error)
                    self._report(on_error, error)
                continue
            if failing:
                failing = False
                self.error = None
                self._report(on_error, None)
            if changed:
                log.info("event=users_reloaded users=%d version=%d", len(self.store), self.version or 0)

    def _report(self, on_error: Callable[[Exception | None], None] | None, error: Exception | None) -> None:
        if on_error is None:
            if error is None:
                log.warning("event=users_recovered users=%d", len(self.store))
            else:
                log.warning("event=users_unavailable kept=%d error=%r", len(self.store), str(error))
            return
        try:
            on_error(error)
        except Exception:
            log.exception("event=users_on_error_failed")
