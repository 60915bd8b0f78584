"""The commit log in Redis: per user, one epoch, one contiguous seq and a Redis Stream of events.

Invariants, whichever node commits and whatever fails:

- Seqs are contiguous within an epoch: the commit script alone assigns them,
  stamps them into the events, appends (XADD, id ``<seq>-0``) and publishes
  (SPUBLISH, one message per commit) in one atomic step. What is acked was
  appended; what was appended was published (Redis pub/sub is at most once:
  a node that misses a message finds its gap by seq and reads the stream).
- A commit is applied at most once. Each carries a commit id; the script
  answers a repeat of the user's last commit with that commit's result. So a
  reply lost in transit, retried by redis-py or by the caller after
  ``Unavailable`` (same ``commit_id``, same events), never doubles events,
  provided a user has one commit in flight at a time (its owner's engine
  applies them in order anyway).
- Only the owner of the user's partition commits (fencing). A lease lives in
  ``afl:{p<N>}:lease``, but a script may touch one slot only, and the user's
  keys are in the user's. So the token is copied to the user: ``claim``
  writes it to ``afl:{<user>}:owner`` unless a newer token is there, and the
  commit script refuses any token but the one there (``Fenced``). A node that
  lost its lease (paused, cut off) commits nothing for a user once the new
  owner has claimed that user, and the new owner reads the user's state only
  after its claim. For no user to slip through between lease and claim, the
  wiring keeps this order: a node adds the user to ``afl:{p<N>}:users``
  before it checks its lease and claims the user; a new owner takes the
  lease, then claims every member of that set before it serves the
  partition (see ``docs/scale-out.md``).
- An epoch is made on a user's first claim (or ``head``) and kept for good;
  if the meta is ever lost, the next use makes a new epoch and drops the old
  stream, so clients resync instead of mixing two histories.
- Retention follows PROTOCOL: the last ``retain_events`` and the events of
  the last ``retain_seconds`` stay, whichever are more, and never more than
  ``max_events``; times are Redis's clock, the same for every node. A resume
  from before what is kept is ``Gone`` (the client gets a snapshot).

The client must be ``redis.asyncio.Redis`` or ``redis.asyncio.RedisCluster``
with ``decode_responses`` off (events stay bytes). Its scripts are loaded
once and again after a Redis restart empties the script cache (NOSCRIPT).
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias

import redis.asyncio
import redis.exceptions
from redis.commands.core import AsyncScript

from .keys import PRICES_KEY, TICKS_CHANNEL, UserKeys, partition_users_key, user_keys
from .scripts import CHECKPOINT, CLAIM, COMMIT, HEAD, PRIME, READ, TICK
from .stamping import check_unsequenced, stamp

Client: TypeAlias = "redis.asyncio.Redis | redis.asyncio.RedisCluster"

# The epoch travels inside a JSON string the script builds by concatenation: nothing to escape.
_EPOCH = re.compile(r"[A-Za-z0-9_-]{1,64}\Z")
# Tokens pass through Lua as doubles: exact below 2**53.
_MAX_TOKEN = 2**53 - 1

# What says Redis cannot serve right now, as opposed to a bug in a script or its arguments.
UNAVAILABLE_ERRORS: tuple[type[Exception], ...] = (
    redis.exceptions.ConnectionError,  # includes BusyLoadingError: replaying its AOF
    redis.exceptions.TimeoutError,
    redis.exceptions.ClusterError,  # CLUSTERDOWN, MASTERDOWN
    redis.exceptions.RedisClusterException,  # no reachable node, slot not covered
    redis.exceptions.TryAgainError,  # a slot in migration
    redis.exceptions.ReadOnlyError,  # a replica after a failover
    redis.exceptions.OutOfMemoryError,  # maxmemory reached: storage full
)


def new_epoch() -> str:
    return "e-" + secrets.token_hex(6)


@dataclass(frozen=True)
class Retention:
    """How much of each user's stream Redis keeps for resume (PROTOCOL: 10,000 or 5 minutes)."""

    retain_events: int = 10_000
    retain_seconds: float = 300.0
    max_events: int = 1_000_000

    def __post_init__(self) -> None:
        if not 1 <= self.retain_events <= self.max_events:
            raise ValueError(
                "retention needs 1 <= retain_events <= max_events, "
                f"got {self.retain_events} and {self.max_events}"
            )
        if self.retain_seconds < 0:
            raise ValueError(f"retain_seconds cannot be negative, got {self.retain_seconds}")


class Fenced(Exception):
    """The token is not the user's owner's: this node lost the partition. Nothing changed.

    The server answers the publish with ``unavailable`` and stops committing for the partition.
    """

    def __init__(self, user: str, token: int, owner_token: int | None) -> None:
        held = "no owner" if owner_token is None else f"owner token {owner_token}"
        super().__init__(
            f"commit refused for user {user!r}: fencing token {token} is not the owner's ({held}); "
            "this node lost the partition's lease: answer unavailable and take the lease again"
        )
        self.user = user
        self.token = token
        self.owner_token = owner_token


class Unavailable(Exception):
    """Redis could not be reached or could not serve: answer ``unavailable`` and retry later.

    For a commit the outcome is unknown (the reply may be what was lost):
    commit again with the same events and ``commit_id`` to apply it once.
    """

    def __init__(self, message: str, *, commit_id: str | None = None) -> None:
        super().__init__(message)
        self.commit_id = commit_id


@dataclass(frozen=True, slots=True)
class Head:
    """A user's epoch and last committed seq."""

    epoch: str
    seq: int


@dataclass(frozen=True, slots=True)
class Committed:
    """A commit's result: its seqs, and its events as stored and published (seq stamped)."""

    epoch: str
    first_seq: int
    last_seq: int
    commit_id: str
    events: list[bytes] = field(repr=False)
    # The commit had been applied already; this is its result, nothing was appended.
    replayed: bool = False


@dataclass(frozen=True, slots=True)
class Replay:
    """The events after ``after``, in order: all of them up to ``head``, or the first ``limit``."""

    epoch: str
    after: int
    head: int
    events: list[bytes] = field(repr=False)

    @property
    def last_seq(self) -> int:
        return self.after + len(self.events)

    @property
    def complete(self) -> bool:
        return self.last_seq == self.head


@dataclass(frozen=True, slots=True)
class Primed:
    """What a node needs to serve a user: the snapshot at ``snap_seq`` (None: from empty), and
    every kept event, ``first_seq`` onwards, up to ``seq``."""

    epoch: str
    seq: int
    snap_seq: int
    snapshot: bytes | None = field(repr=False)
    first_seq: int
    events: list[bytes] = field(repr=False)


GoneReason = Literal["no_stream", "epoch", "ahead", "trimmed"]
_GONE: dict[bytes, GoneReason] = {b"epoch": "epoch", b"ahead": "ahead", b"gone": "trimmed"}


@dataclass(frozen=True, slots=True)
class Gone:
    """The events after the resume point cannot be replayed: the client needs a snapshot."""

    reason: GoneReason
    epoch: str | None
    head: int


class RedisLog:
    """Per-user commit log over one Redis or Redis Cluster (see the module's invariants)."""

    def __init__(
        self,
        client: Client,
        *,
        retention: Retention | None = None,
        make_epoch: Callable[[], str] = new_epoch,
    ) -> None:
        if client.get_encoder().decode_responses:
            raise ValueError("the Redis client must be made with decode_responses=False: events stay bytes")
        self._client = client
        self.retention = retention or Retention()
        self._make_epoch = make_epoch
        self._commit = client.register_script(COMMIT)
        self._claim = client.register_script(CLAIM)
        self._head = client.register_script(HEAD)
        self._read = client.register_script(READ)
        self._checkpoint = client.register_script(CHECKPOINT)
        self._prime = client.register_script(PRIME)
        self._tick = client.register_script(TICK)

    async def claim(self, user: str, token: int) -> Head:
        """Make ``token`` the user's owner token, unless a newer one is there (``Fenced``)."""
        keys = user_keys(user)
        reply = await self._run(self._claim, keys, [_check_token(token), self._epoch()])
        if reply[0] == b"fenced":
            raise Fenced(user, token, int(reply[1]))
        return Head(_text(reply[1]), int(reply[2]))

    async def head(self, user: str) -> Head:
        """The user's epoch and last seq; the epoch is made if the user has none yet."""
        reply = await self._run(self._head, user_keys(user), [self._epoch()])
        return Head(_text(reply[0]), int(reply[1]))

    async def commit(
        self,
        user: str,
        token: int,
        events: Sequence[bytes],
        *,
        commit_id: str | None = None,
        book: bytes | None = None,
        fills: Sequence[tuple[int, str]] = (),
        keep_fills: int = 100_000,
    ) -> Committed:
        """Append ``events`` (from ``stamping.unsequenced``) under the next seqs and publish them.

        With the same atomicity: ``book`` replaces the stored book, and each of
        ``fills`` (the fill's index among ``events``, its id) is recorded at its
        seq, keeping the newest ``keep_fills``.
        ``Fenced`` if ``token`` is not the user's owner's (nothing changed);
        ``Unavailable`` if Redis could not answer (the outcome is unknown: see there).
        """
        if not events:
            raise ValueError("a commit needs at least one event")
        for raw in events:
            check_unsequenced(raw)
        keys = user_keys(user)
        commit_id = commit_id or secrets.token_hex(8)
        retention = self.retention
        args: list[bytes | str | int] = [
            _check_token(token),
            commit_id,
            self._epoch(),
            retention.retain_events,
            round(retention.retain_seconds * 1000),
            retention.max_events,
            keep_fills,
            book or b"",
            len(fills),
        ]
        for index, fill_id in fills:
            if not 0 <= index < len(events):
                raise ValueError(f"fill {fill_id!r} is at index {index}, outside the {len(events)} events")
            args += [index + 1, fill_id]
        args += events
        reply = await self._run(self._commit, keys, args, commit_id=commit_id)
        if reply[0] == b"fenced":
            raise Fenced(user, token, int(reply[1]) if reply[1] else None)
        first, last = int(reply[2]), int(reply[3])
        if last - first + 1 != len(events):
            # Only a repeated commit id with other events gets here: a caller's bug.
            raise ValueError(
                f"commit {commit_id} for user {user!r} was applied before with {last - first + 1} events, "
                f"not {len(events)}: a commit id names one commit"
            )
        stamped = [stamp(raw, first + i) for i, raw in enumerate(events)]
        return Committed(_text(reply[1]), first, last, commit_id, stamped, replayed=bool(reply[4]))

    async def read_after(self, user: str, epoch: str, seq: int, *, limit: int = 0) -> Replay | Gone:
        """The events after ``(epoch, seq)``, or why they cannot be replayed.

        With ``limit``, at most that many: page on from ``Replay.last_seq`` until ``complete``.
        """
        if seq < 0 or limit < 0:
            raise ValueError(f"seq and limit cannot be negative, got {seq} and {limit}")
        keys = user_keys(user)
        reply = await self._run(self._read, keys, [epoch, seq, limit], key_count=2)
        status = reply[0]
        if status == b"none":
            return Gone("no_stream", None, 0)
        current, head = _text(reply[1]), int(reply[2])
        if status == b"ok":
            return Replay(current, seq, head, list(reply[3:]))
        return Gone(_GONE[status], current, head)

    async def checkpoint(self, user: str, token: int, epoch: str, seq: int, snapshot: bytes) -> bool:
        """Store the user's snapshot at ``seq``, so nodes prime from it and the stream may be trimmed
        up to it; False if a newer one is there or the epoch moved. ``Fenced`` as for ``commit``."""
        reply = await self._run(
            self._checkpoint, user_keys(user), [_check_token(token), epoch, seq, snapshot]
        )
        if reply[0] == b"fenced":
            raise Fenced(user, token, int(reply[1]) if reply[1] else None)
        return bool(reply[0] == b"ok")

    async def prime(self, user: str) -> Primed | None:
        """The user's snapshot and kept events, read at once; None if the user has no stream yet."""
        reply = await self._run(self._prime, user_keys(user), [])
        if reply[0] == b"none":
            return None
        return Primed(
            epoch=_text(reply[1]),
            seq=int(reply[2]),
            snap_seq=int(reply[3]),
            snapshot=bytes(reply[4]) or None,
            first_seq=int(reply[5]),
            events=list(reply[6:]),
        )

    async def book(self, user: str) -> bytes | None:
        """The book stored by the user's last publish (the owner reads it after its claim)."""
        book: bytes | None = await self._call(user, self._client.get(user_keys(user).book))
        return book

    async def fill_ids(self, user: str) -> list[tuple[str, int]]:
        """The recorded fill ids of the user and their seqs, oldest first."""
        pairs = await self._call(user, self._client.zrange(user_keys(user).fills, 0, -1, withscores=True))
        return [(_text(fill_id), int(seq)) for fill_id, seq in pairs]

    async def add_member(self, partition: int, user: str) -> None:
        """Record the user as one of the partition's, so that every later owner claims it."""
        await self._call(user, self._client.sadd(partition_users_key(partition), user))

    async def members(self, partition: int) -> list[str]:
        return sorted(
            _text(u)
            for u in await self._call(f"p{partition}", self._client.smembers(partition_users_key(partition)))
        )

    async def tick(self, message: bytes, marks: dict[str, str]) -> int:
        """Store the marks and publish ``message`` to every node; how many nodes it reached."""
        args: list[bytes | str | int] = [message]
        for symbol, mark in marks.items():
            args += [symbol, mark]
        try:
            reply = await self._tick(keys=[PRICES_KEY, TICKS_CHANNEL], args=args)
        except UNAVAILABLE_ERRORS as error:
            raise Unavailable(f"Redis cannot store price marks: {type(error).__name__}: {error}") from error
        return int(reply)

    async def marks(self) -> dict[str, str]:
        """Every symbol's last stored mark."""
        stored = await self._call("marks", self._client.hgetall(PRICES_KEY))
        return {_text(k): _text(v) for k, v in stored.items()}

    async def _call(self, what: str, command: Awaitable[Any]) -> Any:
        try:
            return await command
        except UNAVAILABLE_ERRORS as error:
            raise Unavailable(f"Redis cannot serve {what!r}: {type(error).__name__}: {error}") from error

    def _epoch(self) -> str:
        epoch = self._make_epoch()
        if not _EPOCH.match(epoch):
            raise ValueError(f"epoch {epoch!r} must be 1 to 64 letters, digits, '-' or '_'")
        return epoch

    async def _run(
        self,
        script: AsyncScript,
        keys: UserKeys,
        args: Sequence[bytes | str | int],
        *,
        key_count: int = 7,
        commit_id: str | None = None,
    ) -> list[Any]:
        try:
            reply = await script(keys=keys.script_keys[:key_count], args=args)
        except UNAVAILABLE_ERRORS as error:
            outcome = " (the commit's outcome is unknown: commit again with the same id)" if commit_id else ""
            raise Unavailable(
                f"Redis cannot serve user {keys.user!r}: {type(error).__name__}: {error}{outcome}",
                commit_id=commit_id,
            ) from error
        assert isinstance(reply, list), reply
        return reply


def _check_token(token: int) -> int:
    if not 1 <= token <= _MAX_TOKEN:
        raise ValueError(f"a fencing token is a positive integer below 2**53, got {token}")
    return token


def _text(value: bytes) -> str:
    return value.decode()
