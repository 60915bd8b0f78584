"""One node of a cluster: its Redis parts wired together, and the ingest path across nodes.

A publish may arrive on any node; the owner of the user's partition commits
it. A node that owns the partition commits at once; any other forwards the
message on the partition's request channel, which only the owner listens
on, and acks when the owner's answer comes back on its own reply channel.
The forwarded request is not stored: until the owner has committed it, it is
the publisher's to send again, so a request that meets no owner (SPUBLISH
reached nobody) or no answer within ``answer_timeout_s`` (the owner died,
was paused, or lost its lease) is answered ``unavailable``, never dropped
in silence. A request the owner did commit but whose answer was lost comes
back as duplicates when sent again (fill ids are recorded with the commit).

Background work, each a task that never stops the node: the lease steps
(partitions gained are taken over, lost ones dropped), the shard reader,
the cluster presence (connection counts, streaming flag, stats) and the
users' watcher. Redis going away degrades ``/healthz`` and answers
publishes ``unavailable``; open streams keep their heartbeats, and every
part catches up by itself when Redis is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec

from alphaflow_live.protocol import Ack, Error, MessageError, Prices, Publish, decode_ingest_message, encode

from ..stats import Health
from .cancel import pause
from .keeper import PartitionKeeper
from .keys import TICKS_CHANNEL, node_replies_channel, partition_requests_channel
from .leases import PartitionLeases, partition_of
from .mirror import ClusterBus
from .owner import ClusterLedger, NotOwner
from .pubsub import ShardSubscriber
from .redis_log import Client, RedisLog, Unavailable

log = logging.getLogger("alphaflow.server.cluster")

# How often due re-marks may be looked for, at the most.
_REMARK_GRANULARITY_S = 0.005
_REMARK_SLICE_USERS = 50


class Forwarded(msgspec.Struct, frozen=True, kw_only=True):
    """A publish on its way to the owner of the user's partition."""

    id: str
    reply_to: str
    message: msgspec.Raw


class Answer(msgspec.Struct, frozen=True, kw_only=True):
    """The owner's answer to a forwarded publish: the ack, or the error to send the publisher."""

    id: str
    ack: Ack | None = None
    error: Error | None = None


_forwarded = msgspec.json.Decoder(Forwarded)
_answer = msgspec.json.Decoder(Answer)


class ClusterIngest:
    """Every publish and tick of the node, and the re-mark turns of the partitions it owns."""

    def __init__(
        self,
        client: Client,
        ledger: ClusterLedger,
        subscriber: ShardSubscriber,
        *,
        node_id: str,
        partitions: int,
        answer_timeout_s: float,
        events_in: Callable[[int], None],
    ) -> None:
        self._client = client
        self.ledger = ledger
        self._subscriber = subscriber
        self._node_id = node_id
        self._partitions = partitions
        self._answer_timeout_s = answer_timeout_s
        self._events_in = events_in
        self._waiting: dict[str, asyncio.Future[Ack]] = {}
        self._remark_timer: asyncio.Handle | None = None
        self._remark_task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._remark_failure: str | None = None

    async def start(self) -> None:
        await self._subscriber.add(node_replies_channel(self._node_id), self._on_answer)
        await self._subscriber.add(TICKS_CHANNEL, self._on_ticks)

    # -------------------------------------------------------------- publish

    async def handle(self, message: Publish | Prices) -> Ack:
        try:
            if isinstance(message, Prices):
                await self.ledger.prices(message)
                self._events_in(len(message.prices))
                return Ack(id=message.id, seqs=[])
            if self.ledger.token_for(message.user_id) is not None:
                try:
                    return await self._publish_here(message)
                except NotOwner:
                    pass  # lost the partition meanwhile: its new owner takes it
            return await self._forward(message)
        except Unavailable as exc:
            raise MessageError(
                "unavailable",
                f"the cluster could not commit this message ({exc}); retry with backoff",
                message.id,
            ) from None

    async def _publish_here(self, message: Publish) -> Ack:
        now = asyncio.get_running_loop().time()
        published = await self.ledger.publish(message.user_id, message.events, now)
        self._events_in(len(message.events))
        self.remark_due()
        return Ack(id=message.id, seqs=published.seqs, duplicates=published.duplicates)

    async def _forward(self, message: Publish) -> Ack:
        partition = partition_of(message.user_id, self._partitions)
        request_id = secrets.token_hex(8)
        answer: asyncio.Future[Ack] = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = answer
        try:
            request = Forwarded(id=request_id, reply_to=self._node_id, message=msgspec.Raw(encode(message)))
            try:
                reached = await self._client.spublish(partition_requests_channel(partition), encode(request))
            except Exception as exc:
                raise Unavailable(f"Redis cannot forward the publish: {type(exc).__name__}: {exc}") from exc
            if not reached:
                raise Unavailable(f"no node owns partition {partition} right now (it is being taken over)")
            try:
                async with asyncio.timeout(self._answer_timeout_s):
                    return await answer
            except TimeoutError:
                raise Unavailable(
                    f"the owner of partition {partition} did not answer within {self._answer_timeout_s:g} s"
                ) from None
        finally:
            self._waiting.pop(request_id, None)

    def _on_answer(self, raw: bytes) -> None:
        try:
            answer = _answer.decode(raw)
            waiting = self._waiting.get(answer.id)
            if waiting is None or waiting.done():
                return
            if answer.ack is not None:
                waiting.set_result(answer.ack)
            elif answer.error is not None:
                waiting.set_exception(MessageError(answer.error.code, answer.error.message))
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            log.error("event=answer_invalid reason=%r", str(exc))

    def on_request(self, raw: bytes) -> None:
        """A publish forwarded by another node to this one, the owner of its partition."""
        try:
            request = _forwarded.decode(raw)
            message = decode_ingest_message(bytes(request.message))
        except (msgspec.DecodeError, msgspec.ValidationError, MessageError) as exc:
            log.error("event=forwarded_invalid reason=%r", str(exc))
            return
        if not isinstance(message, Publish) or self.ledger.token_for(message.user_id) is None:
            return  # not ours (any more): the forwarder times out and answers unavailable
        task = asyncio.get_running_loop().create_task(self._serve(request, message))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, request: Forwarded, message: Publish) -> None:
        try:
            answer = Answer(id=request.id, ack=await self._publish_here(message))
        except NotOwner:
            return
        except Unavailable as exc:
            error = MessageError(
                "unavailable", f"the owner could not commit ({exc}); retry with backoff", message.id
            )
            answer = Answer(id=request.id, error=error.to_error())
        except MessageError as exc:
            answer = Answer(id=request.id, error=exc.to_error())
        except Exception:
            log.exception("event=forwarded_failed user=%s", message.user_id)
            error = MessageError("internal", "the owner failed to apply this publish", message.id)
            answer = Answer(id=request.id, error=error.to_error())
        with contextlib.suppress(Exception):
            await self._client.spublish(node_replies_channel(request.reply_to), encode(answer))

    def _on_ticks(self, raw: bytes) -> None:
        self.ledger.on_ticks(raw)
        self.remark_due()

    # ------------------------------------------------------------- re-marks

    def remark_due(self) -> None:
        """Run the due re-marks (one turn at a time), then wait for the next."""
        if self._remark_task is not None and not self._remark_task.done():
            return  # the running turn looks again when it ends
        if self._remark_timer is not None:
            self._remark_timer.cancel()
            self._remark_timer = None
        loop = asyncio.get_running_loop()
        due = self.ledger.next_remark()
        if due is None:
            return
        if due <= loop.time():
            self._remark_task = loop.create_task(self._remark_turn(), name="remark")
            return
        self._remark_timer = loop.call_at(max(due, loop.time() + _REMARK_GRANULARITY_S), self.remark_due)

    async def _remark_turn(self) -> None:
        try:
            await self.ledger.remark(asyncio.get_running_loop().time(), limit=_REMARK_SLICE_USERS)
        except (Unavailable, NotOwner) as exc:
            cause = str(exc)
            if self._remark_failure is None:
                log.warning("event=remark_failed reason=%r", cause)
            self._remark_failure = cause
            await pause(0.2)  # Redis is away: the marks wait, and are tried again soon
        except Exception:
            log.exception("event=remark_failed")
            await pause(0.2)
        else:
            if self._remark_failure is not None:
                log.warning("event=remark_recovered")
                self._remark_failure = None
        finally:
            self._remark_task = None
        self.remark_due()

    async def close(self) -> None:
        if self._remark_timer is not None:
            self._remark_timer.cancel()
        tasks = [*self._tasks, *([self._remark_task] if self._remark_task else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


@dataclass(frozen=True)
class ClusterParts:
    """A node's cluster machinery, wired: the streams, the engine, the ingest path, the leases."""

    subscriber: ShardSubscriber
    bus: ClusterBus
    ledger: ClusterLedger
    ingest: ClusterIngest
    keeper: PartitionKeeper


def make_cluster(
    client: Client,
    commit_log: RedisLog,
    *,
    node_id: str,
    partitions: int,
    lease_s: float,
    remark_interval_s: float,
    health: Health,
    on_reset: Callable[[str], None],
    events_in: Callable[[int], None],
) -> ClusterParts:
    subscriber = ShardSubscriber(client)
    bus = ClusterBus(commit_log, subscriber, on_reset=on_reset)
    leases = PartitionLeases(client, node_id=node_id, partitions=partitions, lease_s=lease_s)
    ledger = ClusterLedger(
        commit_log, bus, leases, partitions=partitions, remark_interval_s=remark_interval_s
    )
    ingest = ClusterIngest(
        client,
        ledger,
        subscriber,
        node_id=node_id,
        partitions=partitions,
        # An owner that has not answered within a lease is dead, paused or cut off: its partitions
        # are about to move, and the publisher's retry finds the next owner.
        answer_timeout_s=lease_s,
        events_in=events_in,
    )
    keeper = PartitionKeeper(leases, ledger, ingest, subscriber, health)
    return ClusterParts(subscriber, bus, ledger, ingest, keeper)
