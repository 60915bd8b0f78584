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
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.extensions.permessage_deflate import ServerPerMessageDeflateFactory
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

from .admission import OpenStream, Preflight, Refused, ServePublic, ServeRest, ServeSession, decide
from .auth import UsersFileWatcher
from .bus import EventBus, JournalOptions
from .config import ServerConfig
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
from .ledger import Ledger
from .limits import ConnectionLimiter, PendingHandshakes
from .logs import throttle_accept_errors
from .rpc import serve_requests
from .session import PortfolioSession
from .sources import ServerPort, Source
from .stats import FailureTally, Health, ServerStats, StatsCollector
from .store import MemoryStore, Quarantined, StateError, StateStore, StorageError

log = logging.getLogger("alphaflow.server")


# How close together re-mark turns may be and still share one wake-up of the event loop.
REMARK_GRANULARITY_S = 0.005
# Users re-marked in one go (a few milliseconds of work) before the event loop serves others.
REMARK_SLICE_USERS = 25


def deflate() -> ServerPerMessageDeflateFactory:
    """websockets' default permessage-deflate, at compression level 1.

    Compressing is a fifth of the server's time at a thousand busy clients at
    the default level (6); level 1 takes about 40% less for frames about a
    third larger, which are still about a tenth of their JSON (measured on
    batches of positions).
    """
    return ServerPerMessageDeflateFactory(
        server_max_window_bits=12, client_max_window_bits=12, compress_settings={"memLevel": 5, "level": 1}
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
    ) -> None:
        """``open_state``, when given, opens the store in ``start`` once the port is bound (and
        replaces ``store``): a server that cannot have its port never reads its state."""
        self.config = config
        self._open_state = open_state
        self._started = False
        self._storage_failures = FailureTally()
        self.users = users
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
        self._remark_timer: asyncio.Handle | None = None
        # The last re-mark failure logged, and how many like it followed: logged once per cause.
        self._remark_failure: tuple[str, int] | None = None

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
            self._restore_state()
            await self._server.start_serving()
        except BaseException:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
            self.ledger.store.close()
            raise
        self._started = True
        self._ticker = asyncio.create_task(self._tick_loop(), name="heartbeats")
        log.info("listening on ws://%s:%d", _host_for_url(config.host), self.port)
        for name, run in self._sources.items():
            self._source_tasks.append(asyncio.create_task(self._run_source(name, run), name=f"source-{name}"))

    def _restore_state(self) -> None:
        config = self.config
        if self._open_state is not None:
            self.ledger.store = self._open_state()
        self.ledger.store.observe(self._storage_outcome)
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
        self._remark_due()
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

    def _storage_outcome(self, failure: StorageError | None) -> None:
        """Health and logs follow the store's writes: degraded from a failed write until one
        succeeds; each cause is logged once, and the count when writes succeed again."""
        tally = self._storage_failures
        if failure is None:
            log.warning("event=storage_recovered failed_writes=%d", tally.clear())
            self.health.set("storage", "healthy")
            return
        if tally.add(failure.cause, format_timestamp(time.time())):
            log.error("event=storage_failed reason=%r", str(failure))  # once per cause; recovery: the count
        self.health.set(
            "storage",
            "degraded",
            f"writes to the state file fail ({failure.cause}); {tally.total} write(s) failed since "
            f"{tally.since}: publishes answer 'unavailable' until a write succeeds",
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
        if self._remark_timer is not None:
            self._remark_timer.cancel()
        self._remark(everyone=True)  # so the journal holds every mark that was acknowledged
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
        return await self._ingest(decode_ingest_message(encode(message)))

    async def _run_source(self, name: str, run: Source) -> None:
        try:
            await run(self._port)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("event=source_failed source=%s", name)
            self.health.set(f"source:{name}", "degraded", f"source stopped: {exc}")

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
        if persist:
            self.ledger.set_meta("streaming_enabled", "true" if enabled else "false")
        if enabled:
            self.health.set("streaming", "healthy")
        else:
            self.health.set("streaming", "degraded", "streaming disabled by operator; REST snapshot serving")
            for session in list(self.sessions.values()):
                session.close_soon(*CLOSE_STREAMING_DISABLED)

    # -------------------------------------------------------------- handshake

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
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
                )
            return self._metrics.response()
        if isinstance(decision, ServeRest):
            return self._rest(decision)
        self.limiter.add(decision.principal.name, per_user_limit=decision.per_user_limit)
        self._admitted[connection] = decision
        connection.connection_lost_waiter.add_done_callback(lambda _: self._release(connection))
        return None

    def _release(self, connection: ServerConnection) -> None:
        admission = self._admitted.pop(connection, None)
        if admission is not None:
            self.limiter.release(admission.principal.name, per_user_limit=admission.per_user_limit)

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
        try:
            if admission.stream == "portfolio":
                session = PortfolioSession(
                    ws,
                    user_id=user,
                    connection_id=connection_id,
                    bus=self.bus,
                    config=self.config,
                    stats=self.stats,
                )
                self.sessions[ws] = session
                try:
                    await session.run()
                finally:
                    self.sessions.pop(ws, None)
                    chosen_code = session.close_code
            else:
                route: tuple[Callable[[str], Any], Callable[[Any], Awaitable[Any]]] = (
                    (decode_ingest_message, self._ingest)
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

    async def _ingest(self, message: Publish | Prices) -> Ack:
        try:
            return await self._apply_ingest(message)
        except StorageError as exc:
            # The ledger rolled back: the publisher may send the same message again.
            raise MessageError(
                "unavailable",
                f"the server could not store this message ({exc.cause}); nothing changed: retry with backoff",
                message.id,
            ) from None

    async def _apply_ingest(self, message: Publish | Prices) -> Ack:
        now = asyncio.get_running_loop().time()
        if isinstance(message, Publish):
            published = self.ledger.publish(message.user_id, message.events, now)
            self.stats.events_in += len(message.events)
            return Ack(id=message.id, seqs=published.seqs, duplicates=published.duplicates)
        self.ledger.prices(message.prices, now)
        self.stats.events_in += len(message.prices)
        self._remark_due()
        # The repriced positions belong to many users' sequences, and may follow a little later
        # (each holder is re-marked at most once per mark interval): no seqs to report.
        return Ack(id=message.id, seqs=[])

    def _remark_due(self) -> None:
        """Re-mark the holders whose turn has come, then wait for the next turn."""
        if self._remark_timer is not None:
            self._remark_timer.cancel()
            self._remark_timer = None
        loop = asyncio.get_running_loop()
        due = self.ledger.next_remark()
        if due is not None and due <= loop.time():
            self._remark(limit=REMARK_SLICE_USERS)
            due = self.ledger.next_remark()
            if due is not None and due <= loop.time():
                # More are due: let sends and other requests run in between.
                self._remark_timer = loop.call_soon(self._remark_due)
                return
        if due is not None:
            # Turns closer together than this share one wake-up, so one does not cost a loop pass each.
            self._remark_timer = loop.call_at(max(due, loop.time() + REMARK_GRANULARITY_S), self._remark_due)

    def _remark(self, *, everyone: bool = False, limit: int | None = None) -> None:
        try:
            self.ledger.remark(asyncio.get_running_loop().time(), everyone=everyone, limit=limit)
        except StorageError:
            pass  # the marks are kept, as below; _storage_outcome logs each cause once
        except Exception as exc:
            # The marks are kept (the engine took them back); their holders' turn comes again, and
            # the same failure with it: logged with its traceback once, then counted. (A user whose
            # own re-mark raises is left out by the ledger and does not get here.)
            cause = f"{type(exc).__name__}: {exc}"
            if self._remark_failure is not None and self._remark_failure[0] == cause:
                self._remark_failure = (cause, self._remark_failure[1] + 1)
                return
            self._remark_failure = (cause, 1)
            log.exception("event=remark_failed")
        else:
            if self._remark_failure is not None:
                log.warning("event=remark_recovered failures=%d", self._remark_failure[1])
                self._remark_failure = None

    async def _admin(self, message: SetStreaming | GetStats) -> Ack | Stats:
        if isinstance(message, SetStreaming):
            if message.enabled != self.streaming_enabled:
                log.warning("event=streaming_flag enabled=%s", str(message.enabled).lower())
            self.set_streaming(message.enabled, persist=True)
            return Ack(id=message.id)
        if isinstance(message, GetStats):
            report = self.stats_report()
            return Stats(id=message.id, **{f: getattr(report, f) for f in report.__struct_fields__})
        raise MessageError("unknown_type", f"unexpected message {type(message).__name__}")


def _host_for_url(host: str) -> str:
    return f"[{host}]" if ":" in host else host
