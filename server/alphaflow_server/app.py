"""The stream server: websockets ``serve()``, the HTTP endpoints, sources, shutdown.

Everything with rules lives in the sans-I/O cores (admission, subscription,
journal, batcher, limits, state); this module wires them together, applies
their decisions and moves bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import logging
import secrets
import signal
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.http11 import Request, Response

from alphaflow_live.codes import CLOSE_STREAMING_DISABLED
from alphaflow_live.protocol import (
    Ack,
    GetStats,
    MessageError,
    Prices,
    Publish,
    SetStreaming,
    Stats,
    StatsReport,
    decode_admin_message,
    decode_ingest_message,
    encode,
    format_timestamp,
)

from .admission import (
    OpenStream,
    Preflight,
    Refused,
    ServePublic,
    ServeRest,
    ServeSession,
    decide,
)
from .auth import UsersFileWatcher, UsersSource
from .bus import EventBus, JournalOptions
from .config import ClusterFlags, ServerConfig
from .deflate import StreamingDeflateFactory
from .engine import PortfolioEngine
from .handshakes import gated_connections, pending_bound
from .http_api import (
    MetricsEndpoint,
    health_response,
    json_response,
    preflight_response,
    refusal,
    session_response,
)
from .ingest import Ingest
from .ledger import Ledger
from .limits import ConnectionLimiter, PendingHandshakes
from .logs import throttle_accept_errors
from .rpc import serve_requests
from .session import PortfolioSession
from .sources import ServerPort, Source
from .stats import Health, ServerStats, StatsCollector
from .store import MemoryStore, Quarantined, StateError, StateStore, StorageError

if TYPE_CHECKING:
    from .cluster.runtime import ClusterRuntime

log = logging.getLogger("alphaflow.server")


def deflate() -> StreamingDeflateFactory:
    """permessage-deflate at level 1, with the compressor kept only while a connection streams.

    Compressing is a fifth of the server's time at a thousand busy clients at
    the default level (6); level 1 takes about 40% less for frames about a
    third larger (measured on batches of positions).

    A compressor kept between messages is about 70 KiB at a window of 2**13
    and memLevel 6: kept by every connection, it was most of an idle one's
    memory (S3: 63.9 KiB a connection with websockets' defaults). So context
    takeover is negotiated (the client keeps its window) but used only while
    the connection streams: ``StreamingDeflate`` compresses each message alone,
    with a compressor freed once it is out, until the session sends batches,
    and frees the kept one when the connection goes quiet. Ten thousand idle
    connections hold none (22.6 KiB each), and a streaming one's batches refer
    back to the previous ones (a captured S4 stream: 17.7% of its JSON against
    20.7% compressed alone). Clients reset their compressor: what they send is
    an occasional subscribe or ping, which no history makes smaller.
    """
    return StreamingDeflateFactory(
        server_no_context_takeover=False,
        client_no_context_takeover=True,
        server_max_window_bits=13,
        client_max_window_bits=12,
        compress_settings={"memLevel": 6, "level": 1},
    )


def new_epoch() -> str:
    return "e-" + secrets.token_hex(6)


class StreamServer:
    def __init__(
        self,
        config: ServerConfig,
        users: UsersFileWatcher,
        store: StateStore | None = None,
        *,
        open_state: Callable[[], StateStore] | None = None,
        cluster: ClusterFlags | None = None,
    ) -> None:
        """``open_state``, when given, opens the store in ``start`` once the port is bound (and
        replaces ``store``): a server that cannot have its port never reads its state.
        ``cluster`` (with ``redis`` set) makes the node one of a cluster over Redis: its users,
        streams and books are the cluster's, and no local state is read or written."""
        self.config = config
        self._cluster_flags = cluster if cluster is not None and cluster.redis else None
        self.cluster: ClusterRuntime | None = None
        self._open_state = open_state
        self._started = False
        self.users: UsersSource = users
        self.bus = EventBus(
            new_epoch=new_epoch,
            journal=JournalOptions(retain_events=config.retain_events, retain_seconds=config.retain_seconds),
        )
        self.engine = PortfolioEngine()
        self.ledger = Ledger(
            self.bus, self.engine, store or MemoryStore(), remark_interval_s=config.mark_interval_s
        )
        self.stats = ServerStats(started_at=time.monotonic())
        self.health = Health()
        self.ingest = Ingest(self.ledger, health=self.health, stats=self.stats)
        self.limiter = ConnectionLimiter(max_total=config.max_connections, max_per_user=config.max_per_user)
        self.sessions: dict[ServerConnection, PortfolioSession] = {}
        self.streaming_enabled = True
        self.set_streaming(not config.disable_streaming)
        self._admitted: dict[ServerConnection, OpenStream] = {}
        self._server: Server | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._sources: dict[str, Source] = {}
        self._port = ServerPort(self.ingest_local, self.engine, self.bus, self.health)
        self._source_tasks: list[asyncio.Task[None]] = []
        self._allowed_origins = frozenset(config.allowed_origins)
        self._pending: PendingHandshakes[ServerConnection] = PendingHandshakes(
            pending_bound(config.max_pending_handshakes)
        )
        self._metrics = MetricsEndpoint(
            StatsCollector(
                self.stats_report, self.stats.latency, pending_handshakes=lambda: len(self._pending)
            )
        )
        self.port: int | None = None

    # ------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Bind the port, read the state, then listen; a start that fails writes nothing.

        The port is bound (not yet listening) before the state is opened, so a
        busy port fails before anything in the state dir is read; a failure
        after that closes what was opened without writing, and only a server
        that started owes the state anything in ``close``.
        """
        config = self.config
        throttle_accept_errors(asyncio.get_running_loop(), log)
        self._server = await serve(
            self._handle,
            config.host,
            config.port,
            create_connection=gated_connections(self._pending, self.stats, log),
            process_request=self._process_request,
            server_header="alphaflow-live",
            compression=None,
            extensions=[deflate()] if config.compression else None,
            max_size=config.max_frame_bytes,
            ping_interval=config.heartbeat_s,
            ping_timeout=config.ping_timeout_s,
            close_timeout=config.close_timeout_s,
            logger=logging.getLogger("alphaflow.server.websockets"),
            start_serving=False,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        try:
            if self._cluster_flags is not None:
                await self._join_cluster(self._cluster_flags)
            else:
                self._restore_state()
            await self._server.start_serving()
        except BaseException:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
            self.ledger.store.close()
            if self.cluster is not None:
                await self.cluster.close()
                self.cluster = None
            raise
        self._started = True
        self._ticker = asyncio.create_task(self._tick_loop(), name="heartbeats")
        log.info("listening on ws://%s:%d", _host_for_url(config.host), self.port)
        for name, run in self._sources.items():
            runner = (
                self.run_source(name, run)
                if self.cluster is None
                else self.cluster.run_source(name, run, self)
            )
            self._source_tasks.append(asyncio.create_task(runner, name=f"source-{name}"))

    async def _join_cluster(self, flags: ClusterFlags) -> None:
        from .cluster.runtime import ClusterRuntime

        self.cluster = await ClusterRuntime.join(self, flags)
        self.bus = self.cluster.bus
        self.engine = self.cluster.ledger.engine
        self._port = ServerPort(
            self.ingest_local, self.engine, self.bus, self.health, stored_book=self.cluster.ledger.stored_book
        )

    def _restore_state(self) -> None:
        config = self.config
        if self._open_state is not None:
            self.ledger.store = self._open_state()
        self.ledger.store.observe(self.ingest.storage_outcome)
        loaded = self.ledger.store.load()
        try:
            restored = self.ledger.restore(
                loaded,
                retain_events=config.retain_events,
                retain_seconds=config.retain_seconds,
                now=asyncio.get_running_loop().time(),
            )
        except StorageError as exc:
            raise StateError(
                f"a stored row that cannot be applied could not be set aside ({exc}); "
                "the server will not start until the state dir can be written"
            ) from None
        if restored.users:
            log.info("event=state_restored users=%d", restored.users)
        self._report_quarantine([*loaded.quarantined, *restored.quarantined])
        self.ingest.remark_due()
        if not config.disable_streaming and loaded.meta.get("streaming_enabled") == "false":
            self.set_streaming(False)

    def _report_quarantine(self, entries: list[Quarantined]) -> None:
        """Health stays degraded while the quarantine table lists rows, across restarts too."""
        if not entries:
            return
        shown = "; ".join(f"{e.kind} {e.key}: {e.reason}" for e in entries[:5])
        more = f"; and {len(entries) - 5} more" if len(entries) > 5 else ""
        self.health.set(
            "state",
            "degraded",
            f"{len(entries)} stored row set(s) could not be applied and were quarantined ({shown}{more}); "
            "everything else is served. See the quarantine table (docs/operations.md, Quarantined rows)",
        )

    async def close(self) -> None:
        """Close every connection with 1001 and stop serving.

        Only a server that started writes here (the last re-marks and the
        checkpoints); ``start`` cleans up after itself when it fails.
        """
        if not self._started:
            return
        self._started = False
        self.health.set("server", "offline", "shutting down")
        for task in self._source_tasks:
            task.cancel()
        await asyncio.gather(*self._source_tasks, return_exceptions=True)
        if self._ticker is not None:
            self._ticker.cancel()
        if self._server is not None:
            self._server.close(close_connections=True)
            await self._server.wait_closed()
        if self.cluster is not None:
            await self.cluster.close()
            log.info("event=stopped")
            return
        self.ingest.cancel()
        self.ingest.remark(everyone=True)  # so the journal holds every mark that was acknowledged
        self.ledger.checkpoint_all()
        self.ledger.store.close()
        log.info("event=stopped")

    async def run_until_signalled(self, on_ready: Callable[[StreamServer], None] | None = None) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await self.start()
        if on_ready is not None:
            on_ready(self)
        try:
            await stop.wait()
        finally:
            log.info("event=shutdown reason=signal")
            await self.close()

    # --------------------------------------------------------------- sources

    def add_source(self, name: str, run: Source) -> None:
        """A coroutine that feeds events through its SourcePort while the server runs."""
        self._sources[name] = run

    async def ingest_local(self, message: Publish | Prices) -> Ack:
        """Ingest a message from an in-process source through the same path as /ws/ingest
        (encoded and decoded, so it is validated exactly as a remote publisher's would be)."""
        return await self.handle_ingest(decode_ingest_message(encode(message)))

    async def handle_ingest(self, message: Publish | Prices) -> Ack:
        if self.cluster is not None:
            return await self.cluster.ingest.handle(message)
        return await self.ingest.handle(message)

    async def run_source(self, name: str, run: Source) -> None:
        try:
            await run(self._port)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("event=source_failed source=%s", name)
            self.health.set(f"source:{name}", "degraded", f"source stopped: {exc}")

    def use_users(self, users: UsersSource) -> None:
        """Authenticate against another users source (a cluster's, in Redis)."""
        self.users = users

    def count_events_in(self, count: int) -> None:
        self.stats.events_in += count

    def close_user_streams(self, user_id: str, code: int, reason: str) -> None:
        for session in list(self.sessions.values()):
            if session.user_id == user_id:
                session.close_soon(code, reason)

    async def _tick_loop(self) -> None:
        interval = min(1.0, max(0.05, self.config.heartbeat_s / 4))
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(interval)
            now = loop.time()
            for session in list(self.sessions.values()):
                session.tick(now)

    # ---------------------------------------------------------- feature flag

    def set_streaming(self, enabled: bool, *, persist: bool = False) -> None:
        self.streaming_enabled = enabled
        if persist and self.cluster is None:
            self.ledger.set_meta("streaming_enabled", "true" if enabled else "false")
        if enabled:
            self.health.set("streaming", "healthy")
        else:
            self.health.set("streaming", "degraded", "streaming disabled by operator; REST snapshot serving")
            for session in list(self.sessions.values()):
                session.close_soon(*CLOSE_STREAMING_DISABLED)

    # -------------------------------------------------------------- handshake

    async def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        response = self._decide(connection, request)
        if not isinstance(response, _Pending):
            return response
        cluster = self.cluster
        assert cluster is not None
        if isinstance(response.decision, ServeRest):
            return await cluster.rest(response.decision)
        admission = response.decision
        refusal_ = await cluster.admit(admission, self.config.max_per_user)
        if refusal_ is not None:
            self.limiter.release(admission.principal.name, per_user_limit=admission.per_user_limit)
            self._admitted.pop(connection, None)
            self.stats.handshakes_refused[refusal_.code.value] += 1
            return refusal(refusal_)
        return None

    def _decide(self, connection: ServerConnection, request: Request) -> Response | _Pending | None:
        # Never log request.path: it may hold a credential.
        now = time.monotonic()
        decision = decide(
            request.path,
            request.headers,
            now,
            authenticate=lambda token: self.users.current(now).authenticate(token),
            streaming_enabled=self.streaming_enabled,
            capacity=self.limiter,
            method=request.method,
            allowed_origins=self._allowed_origins,
            secure=connection.transport.get_extra_info("sslcontext") is not None,
        )
        if isinstance(decision, Refused):
            self.stats.handshakes_refused[decision.code.value] += 1
            return refusal(decision)
        if isinstance(decision, Preflight):
            return preflight_response(decision)
        if isinstance(decision, ServeSession):
            if decision.principal is not None:
                log.info("event=browser_session user=%s", decision.principal.name)
            return session_response(decision)
        if isinstance(decision, ServePublic):
            if decision.endpoint == "healthz":
                return health_response(
                    self.health,
                    streaming_enabled=self.streaming_enabled,
                    connections=self.limiter.total,
                    uptime_s=time.monotonic() - self.stats.started_at,
                    cluster=None if self.cluster is None else self.cluster.health_fields(),
                )
            return self._metrics.response()
        if isinstance(decision, ServeRest):
            if self.cluster is not None:
                return _Pending(decision)
            return self._rest(decision)
        self.limiter.add(decision.principal.name, per_user_limit=decision.per_user_limit)
        self._admitted[connection] = decision
        connection.connection_lost_waiter.add_done_callback(lambda _: self._release(connection))
        return _Pending(decision) if self.cluster is not None else None

    def _release(self, connection: ServerConnection) -> None:
        admission = self._admitted.pop(connection, None)
        if admission is not None:
            self.limiter.release(admission.principal.name, per_user_limit=admission.per_user_limit)
            if self.cluster is not None:
                self.cluster.release(admission)

    # ------------------------------------------------------------ plain HTTP

    def _rest(self, request: ServeRest) -> Response:
        if request.endpoint == "snapshot":
            state = self.bus.user(request.principal.name).state
            return json_response(
                http.HTTPStatus.OK, state.to_snapshot(format_timestamp(time.time())), request.cors
            )
        return json_response(http.HTTPStatus.OK, self.stats_report(), request.cors)

    def stats_report(self) -> StatsReport:
        by_stream: Counter[str] = Counter({"portfolio": 0, "ingest": 0, "admin": 0})
        per_user: Counter[str] = Counter()
        for admission in self._admitted.values():
            by_stream[admission.stream] += 1
            if admission.stream == "portfolio":
                per_user[admission.principal.name] += 1
        schedule = (self.ledger if self.cluster is None else self.cluster.ledger).schedule
        return self.stats.report(
            now=time.monotonic(),
            health=self.health,
            streaming_enabled=self.streaming_enabled,
            connections_by_stream=dict(by_stream),
            connections_per_user=dict(sorted(per_user.items())),
            replay=(
                sum(len(stream.journal) for stream in self.bus),
                sum(stream.journal.bytes for stream in self.bus),
            ),
            remark_turns=(schedule.turns_taken, schedule.turns_shed),
        )

    # ------------------------------------------------------------ connections

    async def _handle(self, ws: ServerConnection) -> None:
        admission = self._admitted.get(ws)
        if admission is None:  # pragma: no cover - process_request admits every upgrade
            await ws.close(1011, "not admitted")
            return
        user = admission.principal.name
        connection_id = "c-" + secrets.token_hex(4)
        log.info("event=connect stream=%s user=%s conn=%s", admission.stream, user, connection_id)
        chosen_code: int | None = None
        held = False
        try:
            if admission.stream == "portfolio":
                if self.cluster is not None:
                    if not await self.cluster.open_stream(ws, user):
                        return
                    held = True
                session = PortfolioSession(
                    ws,
                    user_id=user,
                    connection_id=connection_id,
                    bus=self.bus,
                    config=self.config,
                    stats=self.stats,
                    node_id=None if self._cluster_flags is None else self._cluster_flags.node_id,
                )
                self.sessions[ws] = session
                try:
                    await session.run()
                finally:
                    self.sessions.pop(ws, None)
                    chosen_code = session.close_code
            else:
                route: tuple[Callable[[str], Any], Callable[[Any], Awaitable[Any]]] = (
                    (decode_ingest_message, self.handle_ingest)
                    if admission.stream == "ingest"
                    else (decode_admin_message, self._admin)
                )
                decode, handle = route
                chosen_code = await serve_requests(
                    ws,
                    decode=decode,
                    handle=handle,
                    # A relay publishes one tick per message: services get their own, higher rate.
                    messages_per_s=(
                        self.config.ingest_rate
                        if admission.stream == "ingest"
                        else self.config.max_messages_per_s
                    ),
                    describe=admission.stream,
                )
        finally:
            if held and self.cluster is not None:
                self.cluster.bus.release(user)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.wait_closed(), timeout=self.config.heartbeat_s)
            code = chosen_code or ws.close_code or 1006
            self.stats.disconnects_by_code[code] += 1
            log.info(
                "event=disconnect stream=%s user=%s conn=%s code=%d duration_s=%.3f",
                admission.stream,
                user,
                connection_id,
                code,
                time.monotonic() - admission.opened_at,
            )

    async def _admin(self, message: SetStreaming | GetStats) -> Ack | Stats:
        if isinstance(message, SetStreaming):
            if message.enabled != self.streaming_enabled:
                log.warning("event=streaming_flag enabled=%s", str(message.enabled).lower())
            if self.cluster is not None:
                await self.cluster.set_streaming(message.enabled, message.id)
            self.set_streaming(message.enabled, persist=True)
            return Ack(id=message.id)
        if isinstance(message, GetStats):
            report = self.stats_report() if self.cluster is None else await self.cluster.stats_report_now()
            return Stats(id=message.id, **{f: getattr(report, f) for f in report.__struct_fields__})
        raise MessageError("unknown_type", f"unexpected message {type(message).__name__}")


class _Pending:
    """A decision whose answer needs Redis (a cluster's connection count, a snapshot): awaited."""

    __slots__ = ("decision",)

    def __init__(self, decision: OpenStream | ServeRest) -> None:
        self.decision = decision


def _host_for_url(host: str) -> str:
    return f"[{host}]" if ":" in host else host
