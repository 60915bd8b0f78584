"""The lease loop of a node: the partitions it holds are the partitions it serves.

Every ``interval_s`` the node steps its leases, then makes what it serves
agree with what it holds by its own clock too (a lease past its local
deadline is not served, whatever Redis may say later): a partition gained
is taken over (its request channel listened to first, so a publish
forwarded meanwhile waits for its answer; then every user claimed and read),
a partition lost is dropped. A step that cannot reach Redis degrades
``/healthz`` with the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Protocol

from ..stats import Health
from .cancel import pause
from .keys import partition_requests_channel
from .leases import PartitionLeases
from .owner import ClusterLedger, NotOwner
from .pubsub import ShardSubscriber
from .redis_log import Unavailable


class Requests(Protocol):
    """What of the node's ingest the keeper needs (``node.ClusterIngest``)."""

    def on_request(self, raw: bytes) -> None: ...
    def remark_due(self) -> None: ...


log = logging.getLogger("alphaflow.server.cluster")


class PartitionKeeper:
    """The lease loop: takes over the partitions gained, drops those lost, reports Redis's health."""

    def __init__(
        self,
        leases: PartitionLeases,
        ledger: ClusterLedger,
        ingest: Requests,
        subscriber: ShardSubscriber,
        health: Health,
    ) -> None:
        self.leases = leases
        self._ledger = ledger
        self._ingest = ingest
        self._subscriber = subscriber
        self._health = health
        self._adopting: dict[int, asyncio.Task[None]] = {}
        self.redis_reachable = True

    async def run(self) -> None:
        failing = False
        while True:
            try:
                await self.leases.step()
            except Unavailable as exc:
                self._unreachable(str(exc), log_it=not failing)
                failing = True
            else:
                if failing:
                    log.warning("event=redis_recovered")
                failing = False
                self.redis_reachable = True
                self._health.set("redis", "healthy")
            await self._reconcile()
            await pause(self.leases.interval_s)

    async def _reconcile(self) -> None:
        """Serve exactly the partitions whose lease this node holds now (by its own clock too)."""
        held = {p: t for p, t in self.leases.owned.items() if self.leases.token(p) == t}
        for partition, token in self._ledger.partitions().items():
            if held.get(partition) != token:
                await self._drop(partition)
        taken = self._ledger.partitions()
        for partition, token in held.items():
            if partition not in taken and partition not in self._adopting:
                self._adopt(partition, token)

    def _unreachable(self, reason: str, *, log_it: bool) -> None:
        if log_it:
            log.error("event=redis_unreachable reason=%r", reason)
        self.redis_reachable = False
        self._health.set(
            "redis",
            "degraded",
            f"Redis is unreachable ({reason}): publishes answer 'unavailable', open streams keep going",
        )

    def _adopt(self, partition: int, token: int) -> None:
        previous = self._adopting.pop(partition, None)
        if previous is not None:
            previous.cancel()
        task = asyncio.get_running_loop().create_task(
            self._take_over(partition, token), name=f"adopt-{partition}"
        )
        self._adopting[partition] = task
        task.add_done_callback(lambda done: self._forget_adoption(partition, done))

    def _forget_adoption(self, partition: int, task: asyncio.Task[None]) -> None:
        if self._adopting.get(partition) is task:
            del self._adopting[partition]

    async def _take_over(self, partition: int, token: int) -> None:
        """One attempt; one that fails leaves the partition untaken, and the next ``_reconcile``
        (a lease step later) tries again while the lease is still held."""
        # Listen first, so a publish forwarded while the users are read waits for its answer.
        channel = partition_requests_channel(partition)
        try:
            if channel not in self._subscriber:
                await self._subscriber.add(channel, self._ingest.on_request)
            await self._ledger.adopt(partition, token)
            self._ingest.remark_due()
            return
        except (Unavailable, NotOwner) as exc:
            log.warning("event=adopt_retry partition=%d reason=%r", partition, str(exc))
        except Exception:
            log.exception("event=adopt_failed partition=%d", partition)
        self._subscriber.remove(channel)  # not served: a retry listens again

    async def _drop(self, partition: int) -> None:
        task = self._adopting.pop(partition, None)
        if task is not None:
            task.cancel()
        self._ledger.drop(partition)
        self._subscriber.remove(partition_requests_channel(partition))

    async def close(self) -> None:
        for task in list(self._adopting.values()):
            task.cancel()
        await asyncio.gather(*self._adopting.values(), return_exceptions=True)
        self._ledger.drop_all()
        with contextlib.suppress(Exception):
            await self.leases.release_all()
