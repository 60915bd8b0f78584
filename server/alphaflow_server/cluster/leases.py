"""Who owns what in a cluster: partition leases, the node registry, and sources run once per cluster.

Invariants, whatever dies or pauses:

- A partition's fencing token never decreases, across all nodes and
  restarts: ``afl:{p<N>}:lease`` keeps ``token`` (the last one given) when
  the lease is released or expires, and a node that takes the lease writes
  ``token + 1``. The commit log's CLAIM refuses a token lower than a user's
  (``redis_log``), so a newer owner always wins over an older one.
- Every lease decision is one Lua script on one key (``LEASE_SCRIPT``), timed
  by Redis's ``TIME``: the expiry is the same for every node, whatever its
  own clock says. A lease is taken only when free or expired, renewed and
  released only by its holder with its token. A holder that renews after its
  lease ran out keeps its token if nobody took the lease in between: nobody
  can have claimed a user with a newer one.
- A node trusts a lease only until ``sent + lease_s - margin`` on its own
  monotonic clock, where ``sent`` is when the renewal that succeeded was
  sent: Redis started the lease later than that, so the node stops first.
  A process paused past that point (SIGSTOP, a long GC) sees ``token()``
  turn None on resume, before it steps or commits again.
- A node id names one process: acquiring a lease its id holds, unexpired,
  hands back the same token, so two processes under one id would share it.
- Each node takes at most its fair share, ``ceil(partitions / live nodes)``,
  and gives back what is above it, so a joining node gets work and a dead
  node's partitions go to the others once its lease expires. Its registry
  entry expires one step before its leases, so it no longer counts when they
  come free, and the free partitions are dealt out by a rule every node
  computes alike (``plan_round``): survivors take them in one step each,
  without racing for the same ones.

Keys (each its own hash tag, so each script touches one slot):
``afl:{p<N>}:lease`` and ``afl:{source:<name>}:lease``, hashes of ``holder``
(node id), ``until`` (Redis ms), ``token`` and ``freed`` (Redis ms of the last
release); ``afl:{cluster}:nodes``, the registry, a sorted set of node ids
scored by expiry (Redis ms); ``afl:{cluster}:config``, the cluster's fixed
settings (``partitions``).

The asyncio shells (``PartitionLeases``, ``source_lease.run_under_lease``) only move
commands and time; the rules are in ``LeaseBook`` and ``plan_round``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import zlib
from collections import Counter
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

from .keys import PREFIX, partition_lease_key
from .redis_log import UNAVAILABLE_ERRORS, Client, Unavailable

log = logging.getLogger(__name__)

NODES_KEY: Final = f"{PREFIX}:{{cluster}}:nodes"
CONFIG_KEY: Final = f"{PREFIX}:{{cluster}}:config"

# KEYS: the lease hash (`holder`, `until` in Redis ms, `token`, `freed`: when last released).
# ARGV: op, node id, lease ms, token. Every reply: {status, holder or '', until, token, now, free
# since (when `holder` has no live lease; else its expiry)}; status 'ok', 'busy' (acquire: another
# holder's live lease), 'lost' (renew, release: not ours with that token) or 'seen' (peek).
LEASE_SCRIPT: Final = r"""#!lua
local key, op, me = KEYS[1], ARGV[1], ARGV[2]
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local state = redis.call('HMGET', key, 'holder', 'until', 'token', 'freed')
local holder, expires, token = state[1], tonumber(state[2] or '0'), tonumber(state[3] or '0')
local freed = tonumber(state[4] or '0')
local function reply(status)
  -- Since when the lease is free: its expiry, or its release (0: never held).
  local free_since = expires
  if not holder then free_since = freed end
  return {status, holder or '', expires, token, now, free_since}
end
if op == 'peek' then
  return reply('seen')
end
if op == 'acquire' then
  if holder and holder ~= me and expires > now then
    return reply('busy')
  end
  if not (holder == me and expires > now) then
    -- Free or expired: a new token, above every one this partition ever gave.
    token = token + 1
    holder = me
  end
  expires = now + tonumber(ARGV[3])
  redis.call('HSET', key, 'holder', holder, 'until', expires, 'token', token)
  return reply('ok')
end
if op ~= 'renew' and op ~= 'release' then
  return redis.error_reply('ERR afl lease: unknown op ' .. tostring(op))
end
if holder ~= me or token ~= tonumber(ARGV[4]) then
  return reply('lost')
end
if op == 'renew' then
  expires = now + tonumber(ARGV[3])
  redis.call('HSET', key, 'until', expires)
else
  -- `freed` says since when it is free, so peers can tell one that its taker forgot.
  redis.call('HDEL', key, 'holder', 'until')
  redis.call('HSET', key, 'freed', now)
  holder, expires, freed = false, 0, now
end
return reply('ok')
"""

# KEYS: the registry (member node id, score its expiry in Redis ms). ARGV: node id, ttl ms.
# Reply: the live node ids.
HEARTBEAT_SCRIPT: Final = r"""#!lua
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
return redis.call('ZRANGE', KEYS[1], 0, -1)
"""

_MIN_LEASE_S: Final = 0.5
# A command that did not get through: Redis's failures, or our own bound on the wait.
LEASE_FAILURES: Final[tuple[type[Exception], ...]] = (*UNAVAILABLE_ERRORS, TimeoutError)


def source_lease_key(name: str) -> str:
    """The lease of a source that runs on one node of the cluster at a time."""
    if not name or "{" in name or "}" in name:
        raise ValueError(
            f"source name {name!r} cannot name a Redis key: it must be non-empty, without braces"
        )
    return f"{PREFIX}:{{source:{name}}}:lease"


def partition_of(user: str, partitions: int) -> int:
    """The partition of a user: CRC-32 (zlib) of the UTF-8 id, modulo the partition count.

    Every node must map a user alike, in every process and Python version,
    or two owners would claim the user with tokens of different partitions,
    which do not compare. So never ``hash()`` (salted per process), and the
    count is fixed for the cluster's life (``join_cluster``).
    """
    if partitions < 1:
        raise ValueError(f"a cluster needs at least one partition, got {partitions}")
    return zlib.crc32(user.encode()) % partitions


class ClusterMismatch(Exception):
    """This node was started with another partition count than the cluster's: users would move."""

    def __init__(self, cluster_partitions: int, node_partitions: int) -> None:
        super().__init__(
            f"this node refuses to start: the cluster has {cluster_partitions} partitions "
            f"({CONFIG_KEY}) but the node was started with --partitions {node_partitions}; "
            f"start it with --partitions {cluster_partitions} (the count is fixed for the cluster's life)"
        )
        self.cluster_partitions = cluster_partitions
        self.node_partitions = node_partitions


async def join_cluster(client: Client, *, partitions: int) -> None:
    """Record the partition count if this is the first node; refuse to join with another one."""
    if partitions < 1:
        raise ValueError(f"a cluster needs at least one partition, got {partitions}")
    try:
        await client.hsetnx(CONFIG_KEY, "partitions", partitions)
        stored = await client.hget(CONFIG_KEY, "partitions")
    except UNAVAILABLE_ERRORS as error:
        raise Unavailable(
            f"Redis cannot serve the cluster's settings: {type(error).__name__}: {error}"
        ) from error
    if stored is None or int(stored) != partitions:
        raise ClusterMismatch(int(stored) if stored is not None else 0, partitions)


def interval_for(lease_s: float) -> float:
    """How often a holder renews: often enough to retry a few times, and to see an expiry soon."""
    return min(0.5, lease_s / 4)


def margin_for(lease_s: float) -> float:
    """How much sooner than Redis a node stops trusting its lease (clock rates, scheduling)."""
    return max(0.2, lease_s * 0.1)


def check_lease(lease_s: float) -> None:
    if not lease_s >= _MIN_LEASE_S:
        raise ValueError(f"a lease lasts at least {_MIN_LEASE_S}s (the safety margin is 0.2s), got {lease_s}")


@dataclass(frozen=True)
class LeaseChanges:
    """What one step changed. Apply ``lost`` before ``gained``: a partition may be in both
    (lost, then taken again with a new token), and a gain means claiming its users again."""

    gained: dict[int, int]
    lost: frozenset[int]


@dataclass(frozen=True, slots=True)
class Seen:
    """A lease as one peek saw it: its holder, and for how long it has been free (None: it is held)."""

    holder: str | None
    free_for_s: float | None


class LeaseBook:
    """The leases a node holds, their tokens and local deadlines, and the changes not yet reported.

    Changes pile up until ``take_changes``, so a step that fails half-way
    (some replies in, then ``Unavailable``) loses none of them.
    """

    def __init__(self, lease_s: float) -> None:
        check_lease(lease_s)
        self._valid_s = lease_s - margin_for(lease_s)
        self._tokens: dict[int, int] = {}
        self._deadlines: dict[int, float] = {}
        self._gained: dict[int, int] = {}
        self._lost: set[int] = set()

    @property
    def owned(self) -> dict[int, int]:
        return dict(self._tokens)

    def token(self, partition: int, now: float) -> int | None:
        if partition not in self._tokens or now >= self._deadlines[partition]:
            return None
        return self._tokens[partition]

    def deadline(self, partition: int) -> float | None:
        return self._deadlines.get(partition)

    def held(self, partition: int, token: int, sent: float) -> None:
        """Redis confirmed ``token`` for the partition, by a command sent at ``sent``."""
        previous = self._tokens.get(partition)
        if previous != token:
            if previous is not None:
                self._lost.add(partition)
            self._gained[partition] = token
        self._tokens[partition] = token
        self._deadlines[partition] = sent + self._valid_s

    def drop(self, partition: int) -> None:
        """The partition is not ours (any more): lost, released, or never reported."""
        if self._tokens.pop(partition, None) is not None:
            self._lost.add(partition)
        self._deadlines.pop(partition, None)
        self._gained.pop(partition, None)

    def take_changes(self) -> LeaseChanges:
        changes = LeaseChanges(dict(self._gained), frozenset(self._lost))
        self._gained.clear()
        self._lost.clear()
        return changes


def fair_share(partitions: int, live_nodes: int) -> int:
    return math.ceil(partitions / max(1, live_nodes))


def preference(node_id: str, partition: int) -> int:
    """How much a node wants a partition (rendezvous hashing): the same on every node."""
    return zlib.crc32(f"{node_id}/{partition}".encode())


def plan_round(
    *,
    node_id: str,
    partitions: int,
    live: Sequence[str],
    held: Collection[int],
    seen: Mapping[int, Seen],
    grace_s: float,
) -> tuple[list[int], list[int]]:
    """Which held partitions to release and which seen ones to try to acquire, toward the fair share.

    A node above the share releases what it wants least. Below it, it first
    takes back leases it holds but forgot (a lost reply, a failed release):
    that keeps their token, so their users need no new claim. Free
    partitions are dealt out to the live nodes below the share, each to
    the one that wants it most, by a rule every node computes alike from
    what it saw. So survivors split a dead node's partitions in one step
    instead of racing for the same ones. A partition left free for
    ``grace_s`` (its taker stuck, or views that differed) is anyone's.
    """
    share = fair_share(partitions, len(live))
    if len(held) > share:
        return sorted(held, key=lambda p: preference(node_id, p))[: len(held) - share], []
    counts = Counter(lease.holder for lease in seen.values() if lease.free_for_s is None)
    room = {node: share - counts[node] for node in live if node != node_id}
    room[node_id] = share - len(held)
    take = [p for p, lease in seen.items() if lease.holder == node_id and lease.free_for_s is None]
    take = sorted(p for p in take if p not in held)[: room[node_id]]
    room[node_id] -= len(take)
    free = sorted(p for p, lease in seen.items() if lease.free_for_s is not None)
    left = []
    for partition in free:
        wanting = [node for node, space in room.items() if space > 0]
        if not wanting:
            break
        taker = max(wanting, key=lambda node: (preference(node, partition), node))
        room[taker] -= 1
        if taker == node_id:
            take.append(partition)
        else:
            left.append(partition)
    stale = [p for p in left if (seen[p].free_for_s or 0.0) >= grace_s]
    stale.sort(key=lambda p: -preference(node_id, p))
    return [], take + stale[: max(0, share - len(held) - len(take))]


@dataclass(frozen=True, slots=True)
class LeaseReply:
    status: str
    holder: str | None
    until_ms: int
    token: int
    now_ms: int
    free_since_ms: int

    @classmethod
    def parse(cls, raw: Any) -> LeaseReply:
        status, holder, *numbers = raw
        return cls(status.decode(), holder.decode() or None, *(int(n) for n in numbers))

    @property
    def free_for_s(self) -> float | None:
        """For how long the lease has been free, by Redis's clock; None while someone holds it."""
        if self.until_ms > self.now_ms:
            return None
        return (self.now_ms - self.free_since_ms) / 1000


class PartitionLeases:
    """A node's partition leases; the owner calls ``step()`` every ``interval_s``, never two at once."""

    def __init__(
        self,
        client: Client,
        *,
        node_id: str,
        partitions: int,
        lease_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if partitions < 1:
            raise ValueError(f"a cluster needs at least one partition, got {partitions}")
        if not node_id:
            raise ValueError("a node needs a non-empty id")
        check_client(client)
        self._book = LeaseBook(lease_s)
        self._client = client
        self._node_id = node_id
        self._partitions = partitions
        self._lease_s = lease_s
        self._lease_ms = round(lease_s * 1000)
        self._clock = clock
        self._lease = client.register_script(LEASE_SCRIPT)
        self._heartbeat = client.register_script(HEARTBEAT_SCRIPT)
        self._live: list[str] = []
        self._lock = asyncio.Lock()

    @property
    def owned(self) -> dict[int, int]:
        """The partitions this node believes it holds, with their tokens (check ``token()`` to use one)."""
        return self._book.owned

    def token(self, partition: int) -> int | None:
        """The fencing token to commit with, or None if the lease may have gone (or never was ours)."""
        return self._book.token(partition, self._clock())

    @property
    def live_nodes(self) -> list[str]:
        return list(self._live)

    @property
    def interval_s(self) -> float:
        return interval_for(self._lease_s)

    async def step(self) -> LeaseChanges:
        """Heartbeat, renew, then give back or take partitions toward the fair share.

        Two round trips at most (one per Redis node each), the second only
        when something moves. ``Unavailable`` when the round or the registry
        failed (on Redis Cluster, redis-py fails a whole pipeline when one
        master is unreachable); what got through is kept, and its changes are
        reported by the next step that returns. A partition whose own
        command failed stays as it was: its deadline runs out by itself
        unless a later step renews it.
        """
        async with self._lock:
            book = self._book
            held = book.owned
            others = [p for p in range(self._partitions) if p not in held]
            ttl_ms = max(1, self._lease_ms - round(self.interval_s * 1000))
            commands = [self._script(self._heartbeat, NODES_KEY, self._node_id, ttl_ms)]
            commands += [self._op(p, "renew", token) for p, token in held.items()]
            commands += [self._op(p, "peek") for p in others]
            sent = self._clock()
            replies = await self._run(commands)
            for (partition, token), raw in zip(held.items(), replies[1 : 1 + len(held)], strict=True):
                if raw is not None:
                    renewed = LeaseReply.parse(raw)
                    if renewed.status == "ok":
                        book.held(partition, token, sent)
                    else:
                        book.drop(partition)
            seen: dict[int, Seen] = {}
            for partition, raw in zip(others, replies[1 + len(held) :], strict=True):
                if raw is not None:
                    lease = LeaseReply.parse(raw)
                    seen[partition] = Seen(lease.holder, lease.free_for_s)
            if replies[0] is None:
                raise Unavailable(f"Redis cannot serve the node registry {NODES_KEY}: leases not rebalanced")
            self._live = sorted(member.decode() for member in replies[0])

            release, acquire = plan_round(
                node_id=self._node_id,
                partitions=self._partitions,
                live=self._live,
                held=book.owned,
                seen=seen,
                grace_s=2 * self.interval_s,
            )
            if release or acquire:
                tokens = book.owned
                for partition in release:
                    book.drop(partition)  # before Redis hears of it: no commit under it from now on
                commands = [self._op(p, "release", tokens[p]) for p in release]
                commands += [self._op(p, "acquire") for p in acquire]
                sent = self._clock()
                replies = await self._run(commands)
                for partition, raw in zip(acquire, replies[len(release) :], strict=True):
                    if raw is not None:
                        taken = LeaseReply.parse(raw)
                        if taken.status == "ok":
                            book.held(partition, taken.token, sent)
            return book.take_changes()

    async def release_all(self) -> None:
        """Give back every lease and leave the registry, so the others take over at their next step."""
        async with self._lock:
            tokens = self._book.owned
            for partition in tokens:
                self._book.drop(partition)
            commands = [self._op(p, "release", token) for p, token in tokens.items()]
            commands.append(("ZREM", NODES_KEY, self._node_id))
            self._live = []
            replies = await self._run(commands)
            if None in replies:
                failed = [p for p, reply in zip(tokens, replies, strict=False) if reply is None]
                raise Unavailable(
                    f"Redis could not take back partitions {failed} or {self._node_id}'s registry entry: "
                    "they expire by themselves within the lease"
                )

    def _op(self, partition: int, op: str, token: int = 0) -> tuple[Any, ...]:
        return self._script(
            self._lease, partition_lease_key(partition), op, self._node_id, self._lease_ms, token
        )

    @staticmethod
    def _script(script: AsyncScript, key: str, *args: str | int) -> tuple[Any, ...]:
        return ("EVALSHA", script.sha, 1, key, *args)

    async def _run(self, commands: Sequence[tuple[Any, ...]]) -> list[Any | None]:
        """One round trip (per Redis node); a command's reply, or None where Redis could not serve it.

        Pipelines run EVALSHA, not script objects: redis-py's cluster
        pipeline refuses ``evalsha()`` (it cannot load scripts), so a script
        Redis lost (a restart) is loaded here and its commands sent again.
        """
        replies: list[Any | None] = [None] * len(commands)
        todo = list(range(len(commands)))
        for attempt in range(2):
            pipe = self._client.pipeline(transaction=False)
            for i in todo:
                pipe.execute_command(*commands[i])
            try:
                async with asyncio.timeout(self._lease_s):
                    results = await pipe.execute(raise_on_error=False)
            except LEASE_FAILURES as error:
                raise _unavailable(error) from error
            unloaded: list[int] = []
            for i, result in zip(todo, results, strict=True):
                if isinstance(result, NoScriptError):
                    unloaded.append(i)
                elif isinstance(result, UNAVAILABLE_ERRORS):
                    log.debug("lease command failed: %s: %s", type(result).__name__, result)
                elif isinstance(result, Exception):
                    raise result  # a bug in a script or its arguments, not an outage
                else:
                    replies[i] = result
            if not unloaded or attempt:
                break
            try:
                for script in (self._lease, self._heartbeat):
                    await self._client.script_load(script.script)
            except UNAVAILABLE_ERRORS as error:
                raise _unavailable(error) from error
            todo = unloaded
        return replies


def _unavailable(error: BaseException) -> Unavailable:
    return Unavailable(f"Redis cannot serve the leases: {type(error).__name__}: {error}")


def check_client(client: Client) -> None:
    if client.get_encoder().decode_responses:
        raise ValueError("the Redis client must be made with decode_responses=False")
