"""The node's streams in a cluster: each user's journal and state, primed from Redis and kept
current by the user's shard channel.

Sessions and the REST snapshot see an ``EventBus`` as on a single node: a
``UserStream`` per user, with listeners called in seq order. Here a stream
exists while someone needs it (a connection, a snapshot request, the user's
partition owner) and is made by ``ensure``:

1. SSUBSCRIBE the user's channel first, so nothing committed after the read
   below is missed (messages arriving meanwhile wait in ``_early``);
2. PRIME: the stored snapshot, and every event Redis keeps, read at once;
   the state is the snapshot plus the events after it, the replay buffer
   every kept event (so a resume is served as on a single node);
3. apply what arrived meanwhile, beyond the primed seq.

After that each live message is applied by seq: a repeat (the owner's own
commit, delivered at once and then echoed by Redis) is dropped, a gap (a
message lost while the connection was down) is read from the stream
(``read_after``). A stream whose history Redis no longer has (another
epoch, a range trimmed away) cannot be continued: the stream is dropped and
``on_reset`` closes its connections, whose clients resume or take a
snapshot on any node.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Callable, Sequence

import msgspec

from alphaflow_live.protocol import Event, snapshot_decoder
from alphaflow_live.state import PortfolioState

from ..bus import EventBus, JournalOptions, Stamped, UserStream
from ..journal import Journal
from .cancel import pause
from .keys import user_keys
from .pubsub import ShardSubscriber
from .redis_log import Committed, Gone, RedisLog, Unavailable
from .stamping import LiveCommit, decode_live

log = logging.getLogger("alphaflow.server.cluster")

_decode_event = msgspec.json.Decoder(Event).decode
# Fills a stream's state keeps, as on a single node (checkpoints hold this many).
STATE_FILLS = 1000


class NotServed(Exception):
    """The user's stream is not on this node (``ensure`` was not awaited): a bug in the caller."""


class ClusterBus(EventBus):
    def __init__(
        self,
        log: RedisLog,
        subscriber: ShardSubscriber,
        *,
        journal: JournalOptions | None = None,
        on_reset: Callable[[str], None] = lambda user_id: None,
    ) -> None:
        super().__init__(new_epoch=_no_local_epochs, journal=journal)
        self._log = log
        self._subscriber = subscriber
        self._on_reset = on_reset
        self._refs: Counter[str] = Counter()
        self._priming: dict[str, asyncio.Task[UserStream]] = {}
        self._early: dict[str, list[LiveCommit]] = {}
        self._catching_up: dict[str, asyncio.Task[None]] = {}
        self._loop_time = asyncio.get_running_loop().time
        subscriber.on_reconnect(self.catch_up_all)

    def user(self, user_id: str) -> UserStream:
        stream = self._users.get(user_id)
        if stream is None:
            raise NotServed(f"user {user_id!r} has no stream on this node: await ensure() first")
        return stream

    # ------------------------------------------------------------ lifetime

    async def ensure(self, user_id: str) -> UserStream:
        """The user's stream, primed and live, held until ``release``. ``Unavailable`` if Redis
        cannot serve it (nothing is held then)."""
        self._refs[user_id] += 1
        try:
            stream = self._users.get(user_id)
            if stream is not None:
                return stream
            task = self._priming.get(user_id)
            if task is None:
                task = self._priming[user_id] = asyncio.create_task(
                    self._prime(user_id), name=f"prime-{user_id}"
                )
                task.add_done_callback(lambda _: self._priming.pop(user_id, None))
            return await asyncio.shield(task)
        except BaseException:
            self.release(user_id)
            raise

    def release(self, user_id: str) -> None:
        self._refs[user_id] -= 1
        if self._refs[user_id] > 0:
            return
        del self._refs[user_id]
        if user_id in self._priming:
            return  # the priming task finds nobody holding the stream and lets it go
        self._drop(user_id)

    def held(self, user_id: str) -> bool:
        return self._refs[user_id] > 0

    def _drop(self, user_id: str) -> None:
        self._users.pop(user_id, None)
        self._early.pop(user_id, None)
        task = self._catching_up.pop(user_id, None)
        if task is not None:
            task.cancel()
        self._subscriber.remove(user_keys(user_id).live)

    async def _prime(self, user_id: str) -> UserStream:
        channel = user_keys(user_id).live
        self._early[user_id] = []
        try:
            if channel not in self._subscriber:
                await self._subscriber.add(channel, lambda message: self._on_live(user_id, message))
            primed = await self._log.prime(user_id)
            if primed is None:
                head = await self._log.head(user_id)  # makes the user's epoch
                epoch, seq, snap_seq, snapshot, first_seq, events = head.epoch, head.seq, 0, None, 1, []
                if head.seq:  # committed between the two reads: prime again
                    primed = await self._log.prime(user_id)
            if primed is not None:
                epoch, seq, snap_seq, snapshot = primed.epoch, primed.seq, primed.snap_seq, primed.snapshot
                first_seq, events = primed.first_seq, primed.events
            stream = self._build(user_id, epoch, seq, snap_seq, snapshot, first_seq, events)
        except BaseException:
            self._early.pop(user_id, None)
            if not self.held(user_id):
                self._drop(user_id)
            raise
        if not self.held(user_id):
            self._drop(user_id)
            return stream
        self._users[user_id] = stream
        for live in self._early.pop(user_id, []):
            self._apply(user_id, live.epoch, live.first_seq, [bytes(raw) for raw in live.events])
        return stream

    def _build(
        self,
        user_id: str,
        epoch: str,
        seq: int,
        snap_seq: int,
        snapshot: bytes | None,
        first_seq: int,
        events: Sequence[bytes],
    ) -> UserStream:
        options = self._journal_options
        journal = Journal(
            epoch,
            retain_events=options.retain_events,
            retain_seconds=options.retain_seconds,
            max_events=options.max_events,
        )
        now = self._loop_time()
        if events:
            journal.append_stamped(first_seq, events, now)
        journal.seq = seq
        state = PortfolioState(max_fills=STATE_FILLS)
        if snapshot is not None:
            state.apply_snapshot(snapshot_decoder.decode(snapshot))
        skip = max(0, snap_seq + 1 - first_seq)
        state.apply_events(_decode_event(raw) for raw in events[skip:])
        state.epoch, state.seq = epoch, seq
        return UserStream(user_id, journal, state)

    # ------------------------------------------------------------ delivery

    def deliver_committed(self, user_id: str, committed: Committed) -> None:
        """The owner's own commit, delivered without waiting for Redis to echo it."""
        if user_id in self._users:
            self._apply(user_id, committed.epoch, committed.first_seq, committed.events)

    def _on_live(self, user_id: str, message: bytes) -> None:
        try:
            live = decode_live(message)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            log.error("event=live_message_invalid user=%s reason=%r", user_id, str(exc))
            return
        early = self._early.get(user_id)
        if early is not None:
            early.append(live)
            return
        if user_id in self._users:
            self._apply(user_id, live.epoch, live.first_seq, [bytes(raw) for raw in live.events])

    def _apply(self, user_id: str, epoch: str, first_seq: int, encoded: Sequence[bytes]) -> None:
        stream = self._users[user_id]
        if epoch != stream.epoch:
            self._reset(user_id, f"the user's epoch moved from {stream.epoch} to {epoch}")
            return
        seq = stream.seq
        last_seq = first_seq + len(encoded) - 1
        if last_seq <= seq:
            return  # delivered already (the owner's commit, echoed)
        if first_seq > seq + 1:
            self.catch_up(user_id)  # a message was lost: read the gap from the stream
            return
        fresh = list(encoded[seq + 1 - first_seq :])
        events = [_decode_event(raw) for raw in fresh]
        now = self._loop_time()
        stream.journal.append_stamped(seq + 1, fresh, now)
        self.deliver(user_id, Stamped(events, fresh), now)

    # ------------------------------------------------------------- catch-up

    def catch_up(self, user_id: str) -> None:
        """Read what the user's stream missed from Redis (once at a time per user)."""
        if user_id in self._catching_up or user_id not in self._users:
            return
        task = asyncio.get_running_loop().create_task(self._catch_up(user_id), name=f"catch-up-{user_id}")
        self._catching_up[user_id] = task
        task.add_done_callback(lambda _: self._catching_up.pop(user_id, None))

    def catch_up_all(self) -> None:
        """After a reconnection, when any stream may have missed messages."""
        for user_id in list(self._users):
            self.catch_up(user_id)

    async def _catch_up(self, user_id: str) -> None:
        for attempt in range(50):
            stream = self._users.get(user_id)
            if stream is None:
                return
            try:
                replay = await self._log.read_after(user_id, stream.epoch, stream.seq, limit=1000)
            except Unavailable:
                await pause(min(2.0, 0.05 * 2**attempt))
                continue
            if self._users.get(user_id) is not stream:
                return
            if isinstance(replay, Gone):
                self._reset(
                    user_id, f"the events after seq {stream.seq} are gone from Redis ({replay.reason})"
                )
                return
            if replay.events:
                self._apply(user_id, replay.epoch, replay.after + 1, replay.events)
            if replay.complete or not replay.events:
                return
        log.error("event=catch_up_failed user=%s", user_id)

    def _reset(self, user_id: str, reason: str) -> None:
        log.warning("event=stream_reset user=%s reason=%r", user_id, reason)
        self._users.pop(user_id, None)
        with contextlib.suppress(Exception):
            self._on_reset(user_id)
        if self.held(user_id):
            # Those holding it (the owner) get a fresh one; connections were closed by on_reset.
            task = self._priming[user_id] = asyncio.get_running_loop().create_task(self._prime(user_id))
            task.add_done_callback(lambda done: self._reprimed(user_id, done))

    def _reprimed(self, user_id: str, task: asyncio.Task[UserStream]) -> None:
        self._priming.pop(user_id, None)
        if not task.cancelled() and (error := task.exception()) is not None:
            # Left without a stream: the next ensure() primes it again.
            log.error("event=stream_reprime_failed user=%s reason=%r", user_id, str(error))


def _no_local_epochs() -> str:
    raise NotServed("a cluster node never makes an epoch itself: Redis does")
