"""A NodeServer's cluster side: what ``serve --redis`` adds to a node, behind one object.

``app.NodeServer`` asks this object at the few points where a cluster
differs from a single node: admitting a connection (the per-user limit
counts every node's), priming a user's stream before its session starts,
the REST snapshot (primed from Redis when no connection holds the user
here), ``/healthz`` fields, stats over every live node, the streaming
flag (every node's), and the built-in sources (once per cluster, under a
lease). Everything else, sessions, batching and limits, runs as on one node.
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import logging
import time
from collections.abc import Awaitable
from typing import Any, Protocol

import msgspec
from websockets.asyncio.server import ServerConnection
from websockets.http11 import Response

from alphaflow_live.protocol import StatsReport, format_timestamp

from ..admission import OpenStream, Refused, ServeRest, per_user_refusal
from ..auth import UsersSource
from ..config import ClusterFlags, ServerConfig
from ..http_api import json_response
from ..sources import Source
from ..stats import Health
from ..store import StateError
from .connect import open_client, redacted
from .keeper import PartitionKeeper
from .leases import ClusterMismatch, join_cluster
from .merge import merge_reports
from .mirror import ClusterBus
from .node import ClusterIngest, ClusterParts, make_cluster
from .owner import ClusterLedger
from .presence import ClusterPresence
from .pubsub import ShardSubscriber
from .redis_log import Client, RedisLog, Retention, Unavailable
from .source_lease import run_under_lease
from .users import InvalidUsers, RedisUsersWatcher


class NodeServer(Protocol):
    """What of its NodeServer the cluster side uses (app imports this module, not the reverse)."""

    config: ServerConfig
    health: Health
    streaming_enabled: bool

    def set_streaming(self, enabled: bool, *, persist: bool = False) -> None: ...
    def stats_report(self) -> StatsReport: ...
    def run_source(self, name: str, run: Source) -> Awaitable[None]: ...
    def close_user_streams(self, user_id: str, code: int, reason: str) -> None: ...
    def count_events_in(self, count: int) -> None: ...
    def use_users(self, users: UsersSource) -> None: ...


log = logging.getLogger("alphaflow.server.cluster")

# A close code that tells a client to come back soon (RFC 6455 1013, "try again later").
_CLOSE_TRY_AGAIN = (1013, "the cluster cannot serve this stream right now; reconnect")


class ClusterRuntime:
    def __init__(
        self,
        server: NodeServer,
        flags: ClusterFlags,
        client: Client,
        users: RedisUsersWatcher,
        presence: ClusterPresence,
        parts: ClusterParts,
    ) -> None:
        self._server = server
        self.flags = flags
        self.client = client
        self.users = users
        self.presence = presence
        self.bus: ClusterBus = parts.bus
        self.ledger: ClusterLedger = parts.ledger
        self.ingest: ClusterIngest = parts.ingest
        self.keeper: PartitionKeeper = parts.keeper
        self.subscriber: ShardSubscriber = parts.subscriber
        self._tasks: list[asyncio.Task[Any]] = []
        self._counted: dict[int, str] = {}
        self._reports: dict[str, dict[str, Any]] = {}

    @classmethod
    async def join(cls, server: NodeServer, flags: ClusterFlags) -> ClusterRuntime:
        """Connect, check the cluster's settings, load users and marks, start the background work."""
        assert flags.redis is not None
        config = server.config
        try:
            client = await open_client(flags.redis)
            await join_cluster(client, partitions=flags.partitions)
            users = RedisUsersWatcher(client)
            await users.load()
        except (Unavailable, ClusterMismatch, InvalidUsers) as exc:
            raise StateError(f"cannot join the cluster at {redacted(flags.redis)}: {exc}") from None
        commit_log = RedisLog(
            client,
            retention=Retention(retain_events=config.retain_events, retain_seconds=config.retain_seconds),
        )
        parts = make_cluster(
            client,
            commit_log,
            node_id=flags.node_id,
            partitions=flags.partitions,
            lease_s=flags.lease_s,
            remark_interval_s=config.mark_interval_s,
            health=server.health,
            on_reset=lambda user_id: server.close_user_streams(user_id, 1012, "the stream restarts: resume"),
            events_in=server.count_events_in,
        )
        presence = ClusterPresence(client, node_id=flags.node_id, lease_s=flags.lease_s)
        runtime = cls(server, flags, client, users, presence, parts)
        server.use_users(users)
        try:
            await runtime.ledger.load_marks()
            await runtime.ingest.start()
        except Unavailable as exc:
            await runtime.close()
            raise StateError(f"cannot join the cluster at {redacted(flags.redis)}: {exc}") from None
        runtime._start()
        log.info(
            "event=cluster_joined node=%s redis=%s partitions=%d lease_s=%g",
            flags.node_id,
            redacted(flags.redis),
            flags.partitions,
            flags.lease_s,
        )
        return runtime

    def _start(self) -> None:
        spawn = asyncio.get_running_loop().create_task
        self._tasks += [
            spawn(self.subscriber.run(), name="shard-subscriber"),
            spawn(self.keeper.run(), name="partition-leases"),
            spawn(
                self.presence.run(
                    report=self._own_report, on_streaming=self._on_streaming, on_error=self._presence_error
                ),
                name="presence",
            ),
            spawn(self.users.run(on_error=self._users_error), name="users"),
        ]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.ingest.close()
        await self.keeper.close()
        await self.ledger.close()
        with contextlib.suppress(Exception):
            await self.presence.leave()
        await self.subscriber.close()
        with contextlib.suppress(Exception):
            await self.client.aclose()

    # ------------------------------------------------------------ admission

    async def admit(self, admission: OpenStream, max_per_user: int) -> Refused | None:
        """Count the connection cluster-wide; the per-user limit holds over every node's.

        With Redis away the node's own count decides (it admitted already), so
        clients keep connecting to what the node can serve.
        """
        limit = max_per_user if admission.per_user_limit else None
        try:
            admitted = await self.presence.acquire(admission.principal.name, limit)
        except Unavailable:
            self._counted[id(admission)] = ""
            return None
        if not admitted:
            return per_user_refusal(admission.principal.name, max_per_user)
        self._counted[id(admission)] = admission.principal.name
        return None

    def release(self, admission: OpenStream) -> None:
        user = self._counted.pop(id(admission), None)
        if user:
            asyncio.get_running_loop().create_task(self.presence.release(user))

    async def open_stream(self, ws: ServerConnection, user_id: str) -> bool:
        """Prime the user's stream before its session starts; False (and the socket closed with
        1013) when Redis cannot serve it now."""
        try:
            await self.bus.ensure(user_id)
        except Unavailable as exc:
            log.warning("event=stream_unavailable user=%s reason=%r", user_id, str(exc))
            await ws.close(*_CLOSE_TRY_AGAIN)
            return False
        return True

    # ---------------------------------------------------------------- REST

    async def rest(self, request: ServeRest) -> Response:
        if request.endpoint == "stats":
            report = await self.stats_report_now()
            return json_response(http.HTTPStatus.OK, report, request.cors)
        user_id = request.principal.name
        try:
            stream = await self.bus.ensure(user_id)
        except Unavailable as exc:
            return json_response(
                http.HTTPStatus.SERVICE_UNAVAILABLE,
                {"error": "unavailable", "message": f"the cluster cannot read this portfolio now ({exc})"},
                request.cors,
            )
        try:
            snapshot = stream.state.to_snapshot(format_timestamp(time.time()))
        finally:
            self.bus.release(user_id)
        return json_response(http.HTTPStatus.OK, snapshot, request.cors)

    # --------------------------------------------------------- health, stats

    def health_fields(self) -> dict[str, Any]:
        return {
            "node_id": self.flags.node_id,
            "redis_reachable": self.keeper.redis_reachable,
            "partitions": self.ledger.serving(),
        }

    def _own_report(self) -> dict[str, Any]:
        report = self._server.stats_report()
        report.node_id = self.flags.node_id
        built: dict[str, Any] = msgspec.to_builtins(report)
        return built

    async def stats_report_now(self) -> StatsReport:
        """Totals over every live node, and each node's own report (this one's as of now)."""
        try:
            reports = await self.presence.node_reports()
        except Unavailable:
            reports = {}
        reports[self.flags.node_id] = self._own_report()
        return self._merged(reports)

    def stats_report(self) -> StatsReport:
        return self._merged({**self._reports, self.flags.node_id: self._own_report()})

    def _merged(self, reports: dict[str, dict[str, Any]]) -> StatsReport:
        for report in reports.values():
            report.pop("nodes", None)
        totals = merge_reports(reports)
        totals["node_id"] = self.flags.node_id
        totals["nodes"] = dict(sorted(reports.items()))
        return msgspec.convert(totals, StatsReport)

    # ------------------------------------------------------ streaming flag

    async def set_streaming(self, enabled: bool, ref: Any) -> None:
        from alphaflow_live.protocol import MessageError

        try:
            await self.presence.set_streaming(enabled)
        except Unavailable as exc:
            raise MessageError(
                "unavailable", f"the cluster's streaming flag cannot be set now ({exc}); retry", ref
            ) from None

    def _on_streaming(self, enabled: bool) -> None:
        server = self._server
        if enabled != server.streaming_enabled:
            log.warning("event=streaming_flag enabled=%s source=cluster", str(enabled).lower())
            server.set_streaming(enabled)

    def _presence_error(self, error: Exception | None) -> None:
        if error is None:
            log.warning("event=presence_recovered")
        else:
            log.error("event=presence_failed reason=%r", f"{type(error).__name__}: {error}")

    def _users_error(self, error: Exception | None) -> None:
        if error is None:
            log.warning("event=users_recovered")
        else:
            log.error("event=users_unavailable reason=%r keeping=last_known", str(error))

    # -------------------------------------------------------------- sources

    async def run_source(self, name: str, run: Source, server: NodeServer) -> None:
        """Run a built-in source on one node of the cluster at a time (its own lease)."""

        def state(running: bool) -> None:
            event = "source_started" if running else "source_stopped"
            log.warning("event=%s source=%s node=%s", event, name, self.flags.node_id)

        await run_under_lease(
            self.client,
            name,
            node_id=self.flags.node_id,
            lease_s=self.flags.lease_s,
            run=lambda: server.run_source(name, run),
            on_state=state,
        )
