"""What the nodes of a cluster share about themselves: connections per user, the streaming flag, stats.

Invariants, whatever dies:

- A node's share is its own and expires by itself. Per user,
  ``afl:{<user>}:conns`` is a hash with one field per node,
  ``<count>:<expiry ms>:<incarnation>:<gen>``. Expiries are Redis's clock
  (``TIME`` inside the scripts), so a node killed with SIGKILL stops
  counting ``lease_s`` after its last write, whatever its own clock says.
  Every script drops the expired fields it meets and sets the key's own
  expiry to its latest field's, so abandoned keys go too.
- The limit holds cluster-wide: ``acquire`` is one script that sums the
  live fields and writes this node's new count only if the sum leaves room.
- A node writes absolute counts, never increments, and each write carries a
  generation that grows with every local change. A write that arrives after
  a newer one of the same node (another pooled connection, a redis-py retry)
  only renews the expiry. So writes can be reordered and repeated: the
  newest local state wins, and ``refresh`` rewrites it all anyway.
- A connection in flight (its ``acquire`` unanswered) counts as held by its
  node: writes may overcount for a moment, never undercount. A count of zero
  stays as a tombstone until it expires, so a late, older write cannot bring
  back a count that was released.
- A user's count that Redis may have wrong (a release while Redis was away,
  a refusal) is marked, and the next ``refresh`` writes the truth.
- The streaming flag is ``afl:{cluster}:streaming`` (``on``/``off``; missing
  is on); every node polls it. Stats are ``afl:{cluster}:stats``, node id ->
  ``{"at": <Redis ms>, "report": {...}}``; readers keep entries younger than
  their ``lease_s`` and delete the others.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

import msgspec
import redis.exceptions
from redis.commands.core import AsyncScript

from alphaflow_live.backoff import Backoff

from .cancel import honour_cancel, pause
from .keys import PREFIX, user_keys
from .redis_log import UNAVAILABLE_ERRORS, Client, Unavailable

log = logging.getLogger("alphaflow.server.cluster")

STREAMING_KEY: Final = f"{PREFIX}:{{cluster}}:streaming"
STATS_KEY: Final = f"{PREFIX}:{{cluster}}:stats"
# How often run() reads the flag: a switch on one node closes streams on the others within a second.
FLAG_POLL_S: Final = 0.25
STATS_EVERY_S: Final = 1.0


def conns_key(user: str) -> str:
    """The user's connection counts, one field per node, in the user's slot."""
    user_keys(user)  # refuses an id that cannot name keys
    return f"{PREFIX}:{{{user}}}:conns"


_NOW = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
"""

# KEYS: the user's conns. ARGV: node, count, incarnation, gen, lease ms, limit (-1: none).
# Reply: {1 written | 0 refused, the user's count with this node's as written}.
_COUNT = (
    "#!lua\n"
    + _NOW
    + r"""
local conns, node, incarnation = KEYS[1], ARGV[1], ARGV[3]
local count, gen = tonumber(ARGV[2]), tonumber(ARGV[4])
local lease, limit = tonumber(ARGV[5]), tonumber(ARGV[6])
local others, latest = 0, now + lease
local fields = redis.call('HGETALL', conns)
for i = 1, #fields, 2 do
  local held, expiry, inc, g = string.match(fields[i + 1], '^(%d+):(%d+):(%w+):(%d+)$')
  if not held or tonumber(expiry) <= now then
    redis.call('HDEL', conns, fields[i])
  elseif fields[i] == node then
    -- A newer write of this node got here first: its count stands, only the expiry is renewed.
    if inc == incarnation and tonumber(g) > gen then count, gen = tonumber(held), tonumber(g) end
  else
    others = others + tonumber(held)
    if tonumber(expiry) > latest then latest = tonumber(expiry) end
  end
end
if limit >= 0 and others + count > limit then
  return {0, others + count}
end
redis.call('HSET', conns, node, count .. ':' .. (now + lease) .. ':' .. incarnation .. ':' .. gen)
redis.call('PEXPIRE', conns, latest - now)
return {1, others + count}
"""
)

# KEYS: stats. ARGV: node, its report (a JSON object), lease ms. Reply: the entry's time.
_PUBLISH = (
    "#!lua\n"
    + _NOW
    + r"""
redis.call('HSET', KEYS[1], ARGV[1], '{"at":' .. now .. ',"report":' .. ARGV[2] .. '}')
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[3]) then redis.call('PEXPIRE', KEYS[1], ARGV[3]) end
return now
"""
)

# KEYS: stats. ARGV: lease ms. Reply: node, entry, node, entry, ... of the entries younger than lease.
_REPORTS = (
    "#!lua\n"
    + _NOW
    + r"""
local oldest, live = now - tonumber(ARGV[1]), {}
local entries = redis.call('HGETALL', KEYS[1])
for i = 1, #entries, 2 do
  local at = tonumber(string.match(entries[i + 1], '^{"at":(%d+),'))
  if at and at > oldest then
    live[#live + 1] = entries[i]
    live[#live + 1] = entries[i + 1]
  else
    redis.call('HDEL', KEYS[1], entries[i])
  end
end
return live
"""
)

_entry_decoder = msgspec.json.Decoder(dict[str, Any])


@dataclass
class _Every:
    """A job due every ``period`` seconds of the loop's clock, at once the first time (no I/O)."""

    period: float
    next_at: float = float("-inf")

    def due(self, now: float) -> bool:
        return now >= self.next_at

    def done(self, now: float) -> None:
        self.next_at = now + self.period


class ClusterPresence:
    """This node's share of the cluster state in Redis (see the module's invariants)."""

    def __init__(self, client: Client, *, node_id: str, lease_s: float) -> None:
        if client.get_encoder().decode_responses:
            raise ValueError("the Redis client must be made with decode_responses=False")
        if not node_id:
            raise ValueError("a node id cannot be empty")
        if not lease_s > 0:
            raise ValueError(f"lease_s must be positive, got {lease_s}")
        self._client = client
        self.node_id = node_id
        self.lease_s = lease_s
        self._lease_ms = max(1, round(lease_s * 1000))
        # Stats must be rewritten well within the lease, or a live node would look dead between writes.
        self.stats_every_s = min(STATS_EVERY_S, lease_s / 3)
        # A restarted process with the same node id must not lose to its predecessor's generations.
        self._incarnation = secrets.token_hex(4)
        self._gen = 0
        self._confirmed: Counter[str] = Counter()
        self._pending: Counter[str] = Counter()
        # User -> the generation of a local change Redis may not hold yet.
        self._unsynced: dict[str, int] = {}
        self._count = client.register_script(_COUNT)
        self._publish = client.register_script(_PUBLISH)
        self._reports = client.register_script(_REPORTS)

    async def acquire(self, user: str, limit: int | None) -> bool:
        """Count one more connection of ``user`` here, unless the cluster has ``limit`` already.

        ``None`` counts without a limit (admins, services). ``Unavailable``
        when Redis cannot serve: then nothing is counted.
        """
        if limit is not None and limit < 0:
            raise ValueError(f"a connection limit cannot be negative, got {limit}")
        key = conns_key(user)
        claim = self._held(user) + 1
        self._pending[user] += 1
        gen = self._mark(user)
        args = [self.node_id, claim, self._incarnation, gen, self._lease_ms, -1 if limit is None else limit]
        try:
            reply = await self._script(self._count, key, args, what=f"user {user!r}'s connections")
            if reply[0] == 1:
                self._confirmed[user] += 1
                self._synced(user, gen)
                return True
            return False
        finally:
            self._pending[user] -= 1
            if not self._pending[user]:
                del self._pending[user]

    async def release(self, user: str) -> None:
        """Count one connection of ``user`` less; with Redis away, only here until the next refresh."""
        if self._confirmed[user] <= 0:
            self._confirmed.pop(user, None)
            log.warning("event=presence_release_unheld user=%s node=%s", user, self.node_id)
            return
        self._confirmed[user] -= 1
        if not self._confirmed[user]:
            del self._confirmed[user]
        gen = self._mark(user)
        args = [self.node_id, self._held(user), self._incarnation, gen, self._lease_ms, -1]
        try:
            await self._script(self._count, conns_key(user), args, what=f"user {user!r}'s connections")
        except Unavailable as error:
            log.info("event=presence_release_deferred user=%s node=%s error=%s", user, self.node_id, error)
            return
        self._synced(user, gen)

    def local_count(self, user: str) -> int:
        """Connections of ``user`` this node has counted (and not released)."""
        return self._confirmed[user]

    async def refresh(self) -> None:
        """Rewrite this node's count of every user it holds or may have wrong, with fresh expiries."""
        users = sorted({*self._confirmed, *self._pending, *self._unsynced})
        if not users:
            return
        writes = [(user, self._held(user), self._next_gen()) for user in users]
        commands = [
            (conns_key(user), [self.node_id, held, self._incarnation, gen, self._lease_ms, -1])
            for user, held, gen in writes
        ]
        results = await self._pipelined(self._count.sha, _COUNT, commands, what="connection counts")
        for (user, _held, gen), result in zip(writes, results, strict=True):
            if not isinstance(result, Exception):
                self._synced(user, gen)
        failed = [result for result in results if isinstance(result, Exception)]
        if failed:
            raise _unavailable("connection counts", failed[0])

    async def set_streaming(self, enabled: bool) -> None:
        """Switch streaming for the whole cluster; every node's ``run`` sees it within ``FLAG_POLL_S``."""
        await self._call(self._client.set(STREAMING_KEY, b"on" if enabled else b"off"), "the streaming flag")

    async def streaming(self) -> bool:
        """The cluster's flag: on unless it says ``off`` (a Redis that lost it streams)."""
        value = await self._call(self._client.get(STREAMING_KEY), "the streaming flag")
        return bool(value != b"off")

    async def publish_stats(self, report: dict[str, Any]) -> None:
        """Write this node's stats report, stamped with Redis's time."""
        args = [self.node_id, msgspec.json.encode(report), self._lease_ms]
        await self._script(self._publish, STATS_KEY, args, what="node stats")

    async def node_reports(self) -> dict[str, dict[str, Any]]:
        """The latest report of every node that wrote one within ``lease_s``; older entries are deleted."""
        reply = await self._script(self._reports, STATS_KEY, [self._lease_ms], what="node stats")
        reports: dict[str, dict[str, Any]] = {}
        for node, entry in zip(reply[::2], reply[1::2], strict=True):
            try:
                report = _entry_decoder.decode(entry)["report"]
            except (msgspec.DecodeError, KeyError) as error:
                log.warning("event=stats_entry_unreadable node=%s error=%s", node.decode(), error)
                continue
            reports[node.decode()] = report
        return reports

    async def leave(self) -> None:
        """Delete this node's fields and stats entry; after it, this object counts nothing.

        Redis being away is only logged: the fields expire within ``lease_s`` anyway.
        """
        users = sorted({*self._confirmed, *self._pending, *self._unsynced})
        self._confirmed.clear()
        self._unsynced.clear()
        pipe = self._client.pipeline(transaction=False)
        for user in users:
            pipe.hdel(conns_key(user), self.node_id)
        pipe.hdel(STATS_KEY, self.node_id)
        try:
            await pipe.execute()
        except UNAVAILABLE_ERRORS as error:
            log.warning("event=presence_leave_failed node=%s error=%s", self.node_id, _describe(error))

    async def run(
        self,
        *,
        report: Callable[[], dict[str, Any]],
        on_streaming: Callable[[bool], None],
        on_error: Callable[[Exception | None], None],
    ) -> None:
        """The node's background loop; ends only when cancelled.

        Reads the flag every ``FLAG_POLL_S`` (``on_streaming`` once at start,
        then on each change), refreshes every ``lease_s / 3`` and publishes
        ``report()`` every ``stats_every_s``. A failure starts an outage:
        ``on_error(exc)`` once, retries with capped backoff, then
        ``on_error(None)`` and an immediate refresh and publish when a round
        succeeds. A callback that raises is logged and changes nothing.
        """
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None, "run() is awaited in a task"
        flag, counts, stats = _Every(FLAG_POLL_S), _Every(self.lease_s / 3), _Every(self.stats_every_s)
        # Capped at a third of the lease: once Redis is back, counts are rewritten before they expire.
        backoff = Backoff(base_s=min(0.05, self.lease_s / 3), cap_s=min(1.0, self.lease_s / 3))
        known: bool | None = None
        failing = False
        while True:
            honour_cancel()
            now = loop.time()
            try:
                if flag.due(now):
                    enabled = await self.streaming()
                    flag.done(now)
                    if enabled != known:
                        known = enabled
                        _callback(on_streaming, enabled)
                if counts.due(now):
                    await self.refresh()
                    counts.done(now)
                if stats.due(now):
                    produced = _callback(report)
                    if produced is not None:
                        await self.publish_stats(produced)
                    stats.done(now)
            except Exception as error:
                if not failing:
                    failing = True
                    if isinstance(error, Unavailable):
                        log.warning("event=presence_outage node=%s error=%s", self.node_id, error)
                    else:  # a bug, not Redis: its traceback, once per outage
                        log.exception("event=presence_round_failed node=%s", self.node_id)
                    _callback(on_error, error)
                await pause(backoff.next_delay())
                continue
            if failing:
                failing = False
                backoff.reset()
                log.info("event=presence_recovered node=%s", self.node_id)
                _callback(on_error, None)
                # Redis may have expired or lost this node's share while away: write it now.
                counts.next_at = stats.next_at = float("-inf")
                continue
            await pause(max(0.0, min(flag.next_at, counts.next_at, stats.next_at) - loop.time()))

    def _held(self, user: str) -> int:
        return self._confirmed[user] + self._pending[user]

    def _next_gen(self) -> int:
        self._gen += 1
        return self._gen

    def _mark(self, user: str) -> int:
        """A local change of ``user``'s count: its generation, remembered until Redis holds it."""
        gen = self._next_gen()
        self._unsynced[user] = gen
        return gen

    def _synced(self, user: str, gen: int) -> None:
        """Redis holds ``user``'s state as of ``gen`` (or newer): changes up to it need no refresh."""
        if self._unsynced.get(user, gen + 1) <= gen:
            del self._unsynced[user]

    async def _script(self, script: AsyncScript, key: str, args: list[Any], *, what: str) -> Any:
        return await self._call(script(keys=[key], args=args), what)

    async def _call(self, command: Awaitable[Any], what: str) -> Any:
        try:
            return await command
        except UNAVAILABLE_ERRORS as error:
            raise _unavailable(what, error) from error

    async def _pipelined(
        self, sha: str, script: str, commands: list[tuple[str, list[Any]]], *, what: str
    ) -> list[Any]:
        """Run ``script`` once per (key, args), in one round trip per Redis node.

        Not a MULTI: the keys are in many slots. A Redis that has lost its
        scripts (restarted) gets the script and the commands that missed it
        once more; the writes are idempotent.
        """
        results: list[Any] = [None] * len(commands)
        todo = list(range(len(commands)))
        for attempt in range(2):
            pipe = self._client.pipeline(transaction=False)
            for index in todo:
                key, args = commands[index]
                # Not pipe.evalsha: redis-py's cluster pipeline blocks that method, not the command,
                # which it routes by its key like any other.
                pipe.execute_command("EVALSHA", sha, 1, key, *args)
            try:
                replies = await pipe.execute(raise_on_error=False)
            except UNAVAILABLE_ERRORS as error:
                raise _unavailable(what, error) from error
            for index, reply in zip(todo, replies, strict=True):
                results[index] = reply
            todo = [i for i in todo if isinstance(results[i], redis.exceptions.NoScriptError)]
            if not todo or attempt:
                break
            await self._call(self._client.script_load(script), what)
        for result in results:
            if isinstance(result, Exception) and not isinstance(result, UNAVAILABLE_ERRORS):
                raise result
        return results


def _unavailable(what: str, error: BaseException) -> Unavailable:
    return Unavailable(f"Redis cannot serve {what}: {_describe(error)} (retry when Redis is back)")


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


def _callback(function: Callable[..., Any], *args: Any) -> Any:
    """Call one of ``run``'s callbacks; its failure is the caller's bug, logged, never the loop's end."""
    try:
        return function(*args)
    except Exception:
        log.exception("event=presence_callback_failed callback=%s", getattr(function, "__name__", function))
        return None
