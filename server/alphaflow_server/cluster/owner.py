"""The engine of the partitions this node owns: publishes, ticks and re-marks committed to Redis.

A user's P&L is computed by one node at a time: the owner of the user's
partition (``leases``). The engine here holds the books of those users only,
and is a cache of what Redis holds: each commit carries the user's book and
fill ids with its events (one script, atomic), so whichever node takes the
partition over next reads exactly what was acked. Whenever the outcome of a
commit is unknown (Redis went away mid-reply), the user's engine state is
thrown away and read again from Redis before the user's next commit; a
publish that was applied after all comes back as duplicates when retried.

Order of operations, each kept for the fencing to hold (``redis_log``):

* taking over a partition: the lease (a new token), then a claim of every
  member of the partition's user set, then its books, then serving;
* a user first seen: added to the partition's set, lease checked, claimed,
  and only then committed for;
* one commit in flight per user (its lock), so seqs follow the engine's order.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import msgspec

from alphaflow_live.protocol import (
    Event,
    FillEvent,
    PositionEvent,
    Prices,
    PriceTick,
    encode,
    format_timestamp,
)

from ..engine import BookRecord, PortfolioEngine
from ..fill_ids import FILL_IDS_KEPT, AppliedFills
from ..ledger import Published, stored_mark
from ..remarks import RemarkSchedule
from .leases import PartitionLeases, partition_of
from .mirror import STATE_FILLS, ClusterBus
from .redis_log import Fenced, RedisLog, Unavailable
from .stamping import unsequenced

log = logging.getLogger("alphaflow.server.cluster")

_book_decoder = msgspec.json.Decoder(BookRecord)
_prices_decoder = msgspec.json.Decoder(Prices)
# Events between two snapshots of a user in Redis (a node primes from the last one, plus these).
CHECKPOINT_EVENTS = 2000
# Users of a partition read at once while it is taken over.
_ADOPT_CONCURRENCY = 32


class NotOwner(Exception):
    """This node does not (or no longer) own the user's partition: the publish goes to the owner."""


@dataclass(eq=False)
class _Owned:
    partition: int
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    # The engine's state for the user may differ from Redis's (a commit's outcome was unknown).
    dirty: bool = False
    checkpointed: int = 0


@dataclass(eq=False)
class _Partition:
    token: int
    serving: bool = False
    users: set[str] = field(default_factory=set)


class ClusterLedger:
    def __init__(
        self,
        log: RedisLog,
        bus: ClusterBus,
        leases: PartitionLeases,
        *,
        partitions: int,
        remark_interval_s: float,
        engine: PortfolioEngine | None = None,
        keep_fill_ids: int = FILL_IDS_KEPT,
        checkpoint_every: int = CHECKPOINT_EVENTS,
    ) -> None:
        self._log = log
        self.bus = bus
        self._leases = leases
        self._partitions_count = partitions
        self.engine = engine or PortfolioEngine()
        self.schedule = RemarkSchedule(remark_interval_s)
        self.fills = AppliedFills(keep_fill_ids)
        self._checkpoint_every = checkpoint_every
        self._users: dict[str, _Owned] = {}
        self._partitions: dict[int, _Partition] = {}
        self._joining: dict[str, asyncio.Task[_Owned]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------ ownership

    def serving(self) -> list[int]:
        """The partitions this node computes now (taken over and not lost)."""
        return sorted(p for p, part in self._partitions.items() if part.serving)

    def partitions(self) -> dict[int, int]:
        """Every partition taken or being taken over here, and its token."""
        return {p: part.token for p, part in self._partitions.items()}

    def token_for(self, user_id: str) -> int | None:
        """The fencing token to commit for the user with, if this node serves its partition now."""
        partition = partition_of(user_id, self._partitions_count)
        part = self._partitions.get(partition)
        if part is None or not part.serving or self._leases.token(partition) != part.token:
            return None
        return part.token

    async def adopt(self, partition: int, token: int) -> None:
        """Take a partition over: claim each of its users, read their books, then serve it."""
        part = self._partitions[partition] = _Partition(token)
        members = await self._log.members(partition)
        gate = asyncio.Semaphore(_ADOPT_CONCURRENCY)

        async def load(user_id: str) -> None:
            async with gate:
                await self._load(user_id, part, partition)

        try:
            await asyncio.gather(*(load(user_id) for user_id in members))
        except BaseException:
            self.drop(partition)
            raise
        if self._partitions.get(partition) is part:
            part.serving = True
            log.debug(
                "event=partition_adopted partition=%d token=%d users=%d", partition, token, len(members)
            )

    def drop(self, partition: int) -> None:
        """The partition is another node's now (or will be): forget its users' books."""
        part = self._partitions.pop(partition, None)
        if part is None:
            return
        for user_id in part.users:
            self._unload(user_id)
        log.debug("event=partition_dropped partition=%d users=%d", partition, len(part.users))

    def drop_all(self) -> None:
        for partition in list(self._partitions):
            self.drop(partition)

    def _unload(self, user_id: str) -> None:
        if self._users.pop(user_id, None) is None:
            return
        self.engine.unload(user_id)
        self.fills.forget(user_id)
        self.schedule.forget(user_id)
        self.bus.release(user_id)

    async def _load(self, user_id: str, part: _Partition, partition: int) -> _Owned:
        """Claim the user with the partition's token and read its book and fills from Redis."""
        head = await self._log.claim(user_id, part.token)
        book = await self._log.book(user_id)
        fills = await self._log.fill_ids(user_id)
        previous = self._users.get(user_id)
        if previous is None:
            await self.bus.ensure(user_id)
        if self._partitions.get(partition) is not part:
            if previous is None:
                self.bus.release(user_id)
            raise NotOwner(f"partition {partition} was lost while user {user_id!r} was read")
        owned = previous or _Owned(partition, checkpointed=head.seq)
        owned.dirty = False
        self.engine.unload(user_id)
        if book is not None:
            self.engine.load_book(user_id, _book_decoder.decode(book))
            self._restale(user_id)
        self.fills.load(user_id, fills)
        part.users.add(user_id)
        self._users[user_id] = owned
        return owned

    async def stored_book(self, user_id: str) -> BookRecord | None:
        """The book the user's owner committed last (any node may read it; a source starting on
        a node that does not own the user carries on from it)."""
        book = await self._log.book(user_id)
        return None if book is None else _book_decoder.decode(book)

    def _restale(self, user_id: str) -> None:
        """Price a loaded book at the newest marks and send its positions on the next turn: the
        book is stored by publishes, the marks moved on since."""
        engine = self.engine
        ts = format_timestamp(time.time())
        for symbol, holding in engine.books[user_id].holdings.items():
            holding.current_price = engine.prices.get(symbol, holding.current_price)
            engine.mark_stale(user_id, symbol, ts)
        self.schedule.stale([user_id], asyncio.get_running_loop().time())

    async def _owned(self, user_id: str) -> tuple[_Owned, int]:
        """The user's state on this node, joined or reloaded first if need be, and the token."""
        token = self.token_for(user_id)
        if token is None:
            raise NotOwner(f"this node does not own the partition of user {user_id!r}")
        owned = self._users.get(user_id)
        if owned is not None and not owned.dirty:
            return owned, token
        task = self._joining.get(user_id)
        if task is None:
            task = self._joining[user_id] = asyncio.create_task(self._join(user_id, token))
            task.add_done_callback(lambda _: self._joining.pop(user_id, None))
        return await asyncio.shield(task), token

    async def _join(self, user_id: str, token: int) -> _Owned:
        partition = partition_of(user_id, self._partitions_count)
        part = self._partitions[partition]
        if user_id not in part.users:
            await self._log.add_member(partition, user_id)
        if self.token_for(user_id) != token:
            raise NotOwner(f"the lease of partition {partition} ended while user {user_id!r} joined it")
        return await self._load(user_id, part, partition)

    # --------------------------------------------------------------- ingest

    async def publish(self, user_id: str, events: Sequence[Event], now: float) -> Published:
        owned, token = await self._owned(user_id)
        async with owned.lock:
            if owned.dirty:
                raise Unavailable(f"user {user_id!r} is being read again from Redis: retry")
            fresh, duplicates = self.fills.split(user_id, events)
            if not fresh:
                return Published([], duplicates)
            engine = self.engine
            save_point = engine.save_point(user_id, fresh)
            try:
                expanded = engine.process(user_id, fresh)
                fill_ids = [(i, e.data.id) for i, e in enumerate(expanded) if isinstance(e, FillEvent)]
                committed = await self._log.commit(
                    user_id,
                    token,
                    [unsequenced(e) for e in expanded],
                    commit_id=secrets.token_hex(8),
                    book=encode(engine.dump_book(user_id)),
                    fills=fill_ids,
                    keep_fills=self.fills.keep,
                )
            except Fenced:
                engine.restore(save_point)
                self.drop(owned.partition)
                raise NotOwner(f"partition {owned.partition} has a newer owner") from None
            except Unavailable:
                # Applied or not, Redis knows: read the user again before its next commit.
                engine.restore(save_point)
                owned.dirty = True
                raise
            except BaseException:
                engine.restore(save_point)
                raise
            self.fills.add(user_id, ((fill_id, committed.first_seq + i) for i, fill_id in fill_ids))
            self.bus.deliver_committed(user_id, committed)
        if save_point.stale:
            self.schedule.sent(user_id, now)
        moved = {e.data.symbol: e.ts for e in fresh if isinstance(e, PositionEvent)}
        for symbol, ts in moved.items():
            if symbol in engine.prices:
                self.schedule.stale(engine.spread_mark(symbol, ts, source=user_id), now)
        self._maybe_checkpoint(user_id, owned, token)
        return Published(list(range(committed.first_seq, committed.last_seq + 1)), duplicates)

    async def prices(self, message: Prices) -> None:
        """Store the marks and publish the ticks to every node; each owner re-marks its own holders
        when the message reaches it (``on_ticks``, this node's included)."""
        references = self.engine.day_reference
        marks = {t.symbol: f"{t.price} {references.get(t.symbol, t.price)}" for t in message.prices}
        await self._log.tick(encode(message), marks)

    def on_ticks(self, raw: bytes) -> None:
        try:
            message = _prices_decoder.decode(raw)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            log.error("event=ticks_invalid reason=%r", str(exc))
            return
        self.mark(message.prices)

    def mark(self, ticks: Iterable[PriceTick]) -> None:
        self.schedule.stale(self.engine.mark(ticks), asyncio.get_running_loop().time())

    async def load_marks(self) -> None:
        """Every symbol's last mark, at start: the books of partitions taken over are priced at them."""
        engine = self.engine
        for symbol, mark in (await self._log.marks()).items():
            try:
                price, reference = mark.split()
                engine.prices[symbol] = stored_mark("price", price)
                engine.day_reference[symbol] = stored_mark("reference", reference)
            except ValueError as exc:
                log.error("event=mark_invalid symbol=%s mark=%r reason=%r", symbol, mark, str(exc))

    # -------------------------------------------------------------- re-marks

    def next_remark(self) -> float | None:
        return self.schedule.next_due()

    async def remark(self, now: float, *, everyone: bool = False, limit: int | None = None) -> int:
        """Commit the positions and accounts of the owned holders whose turn has come; how many events."""
        users = self.schedule.take_all(now) if everyone else self.schedule.take_due(now, limit)
        stale = self.engine.take_stale(u for u in users if u in self._users)
        results = await asyncio.gather(
            *(self._remark_user(user_id, symbols, now) for user_id, symbols in stale.items()),
            return_exceptions=True,
        )
        failures = [r for r in results if isinstance(r, BaseException)]
        for failure in failures:
            if not isinstance(failure, Unavailable | NotOwner):
                raise failure
        if failures and len(failures) == len(results):
            raise failures[0]
        return sum(r for r in results if isinstance(r, int))

    async def _remark_user(self, user_id: str, symbols: dict[str, str], now: float) -> int:
        owned = self._users.get(user_id)
        token = self.token_for(user_id)
        if owned is None or token is None:
            return 0
        if owned.lock.locked() or owned.dirty:
            self._put_back(user_id, symbols, now)  # a publish is in flight: it goes at the next turn
            return 0
        async with owned.lock:
            try:
                events = self.engine.derive_user(user_id, symbols)
            except Exception:
                log.exception("event=remark_failed user=%s symbols=%d", user_id, len(symbols))
                return 0
            try:
                committed = await self._log.commit(
                    user_id, token, [unsequenced(e) for e in events], commit_id=secrets.token_hex(8)
                )
            except Fenced:
                self.drop(owned.partition)
                raise NotOwner(f"partition {owned.partition} has a newer owner") from None
            except Unavailable:
                owned.dirty = True  # the re-mark may have been applied: read the user again
                self._put_back(user_id, symbols, now)
                raise
            self.bus.deliver_committed(user_id, committed)
        self._maybe_checkpoint(user_id, owned, token)
        return len(events)

    def _put_back(self, user_id: str, symbols: dict[str, str], now: float) -> None:
        if user_id in self.engine.books:
            self.engine.return_stale({user_id: symbols})
            self.schedule.stale([user_id], now)

    # ----------------------------------------------------------- checkpoints

    def _maybe_checkpoint(self, user_id: str, owned: _Owned, token: int) -> None:
        stream = self.bus.user(user_id)
        if stream.seq - owned.checkpointed < self._checkpoint_every:
            return
        owned.checkpointed = stream.seq
        snapshot = stream.state.to_snapshot(format_timestamp(time.time()), max_fills=STATE_FILLS)
        task = asyncio.get_running_loop().create_task(
            self._checkpoint(user_id, token, stream.epoch, stream.seq, encode(snapshot))
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _checkpoint(self, user_id: str, token: int, epoch: str, seq: int, snapshot: bytes) -> None:
        try:
            await self._log.checkpoint(user_id, token, epoch, seq, snapshot)
        except (Unavailable, Fenced) as exc:
            # The next commits try again; the stream keeps every event after the last snapshot.
            owned = self._users.get(user_id)
            if owned is not None:
                owned.checkpointed = 0
            log.warning("event=checkpoint_failed user=%s reason=%r", user_id, str(exc))

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
