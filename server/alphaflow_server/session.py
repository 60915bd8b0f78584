"""One /ws/portfolio connection: the asyncio shell around its Subscription.

The rules (what answers a subscribe, resume, contiguity, what a resync
sends) live in ``subscription``; this module moves their frames and time:

    EventBus ──listener──► Subscription (Batcher) ──due──► Outbox ──sender task──► socket

The listener runs synchronously inside ``EventBus.publish`` and never awaits;
only the sender task waits for the socket. When the socket cannot keep up and
the outbox passes its bound, the queued frames are discarded and one fresh
snapshot is sent once the socket drains (or the connection is closed with
``CLOSE_SLOW_CONSUMER`` if it does not drain in time).

An idle connection holds as little as it can (S3: ten thousand of them): the
sender task exists only while there is something to send; the first frame
pushed starts it and an empty outbox ends it. Most frames never need it: when
nothing is queued and the kernel took every byte written before, a frame is
written at once through the websockets protocol (S2: a task and a loop pass
per frame were a good part of the event loop's time).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from msgspec import UNSET
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

from alphaflow_live.codes import CLOSE_SLOW_CONSUMER
from alphaflow_live.protocol import (
    CHANNELS,
    Batch,
    Event,
    Heartbeat,
    MessageError,
    Ping,
    Pong,
    Snapshot,
    Subscribe,
    Unsubscribe,
    Welcome,
    decode_client_message,
    encode,
    encode_batch,
    format_timestamp,
)

from .batcher import PendingBatch
from .bus import EventBus, UserStream
from .config import ServerConfig
from .deflate import streaming_deflate
from .inbound import Inbound, internal_error, text_of
from .limits import Outbox
from .stats import ServerStats
from .subscription import Outgoing, Subscription

log = logging.getLogger("alphaflow.server.session")

# A connection that sent nothing for this long frees its kept compressor (about 70 KiB).
QUIET_S = 2.0


class PortfolioSession:
    def __init__(
        self,
        ws: ServerConnection,
        *,
        user_id: str,
        connection_id: str,
        bus: EventBus,
        config: ServerConfig,
        stats: ServerStats,
        node_id: str | None = None,
    ) -> None:
        self.ws = ws
        self._node_id = node_id
        self.user_id = user_id
        self.connection_id = connection_id
        self._bus = bus
        self._config = config
        self._stats = stats
        self._loop = asyncio.get_running_loop()
        self._stream: UserStream = bus.user(user_id)
        self._inbound = Inbound(ws, messages_per_s=config.max_messages_per_s, close=self._close)
        self._outbox = Outbox.bounded(config.max_backlog_bytes)
        # Runs while frames are to go out; None when idle (or once the socket closed).
        self._sender: asyncio.Task[None] | None = None
        self._socket_closed = False
        self._subscription = Subscription(window_s=config.batch_window_s, leading_edge=config.leading_edge)
        self._unlisten: Callable[[], None] | None = None
        self._flush_timer: asyncio.TimerHandle | None = None
        self._watchdog: asyncio.TimerHandle | None = None
        self.last_sent_at = self._loop.time()
        # Keeps its compressor across messages while batches flow (deflate.StreamingDeflate).
        self._deflate = streaming_deflate(ws.protocol.extensions)

    @property
    def close_code(self) -> int | None:
        """The close code this side chose, when it closed the connection itself."""
        return self._inbound.close_code

    # ------------------------------------------------------------ lifecycle

    async def run(self) -> None:
        self._push(
            Welcome(
                user_id=self.user_id,
                connection_id=self.connection_id,
                epoch=self._stream.epoch,
                server_time=self._server_time(),
                batch_window_ms=self._config.batch_window_ms,
                heartbeat_s=self._config.heartbeat_s,
                channels=list(CHANNELS),
                node=UNSET if self._node_id is None else self._node_id,
            )
        )
        try:
            async for frame in self._inbound:
                self._receive(frame)
        finally:
            self._stop()
            self._socket_closed = True
            sender, self._sender = self._sender, None
            if sender is not None:
                sender.cancel()
            await asyncio.gather(
                *([] if sender is None else [sender]), self._inbound.closed(), return_exceptions=True
            )

    def _stop(self) -> None:
        if self._unlisten is not None:
            self._unlisten()
            self._unlisten = None
        for timer in (self._flush_timer, self._watchdog):
            if timer is not None:
                timer.cancel()

    def close_soon(self, code: int, reason: str) -> None:
        """Start closing with ``code``; what the client still sends is read and dropped."""
        self._inbound.close_soon(code, reason)

    async def _close(self, code: int, reason: str) -> None:
        # A socket that does not drain never lets the close frame out: past the close
        # timeout, drop the TCP connection.
        try:
            async with asyncio.timeout(self._config.close_timeout_s):
                await self.ws.close(code, reason)
        except TimeoutError:
            self.ws.transport.abort()

    # -------------------------------------------------------------- inbound

    def _receive(self, frame: str | bytes) -> None:
        try:
            message = decode_client_message(text_of(frame))
            if isinstance(message, Subscribe):
                self._subscribe(message)
            elif isinstance(message, Unsubscribe):
                self._send(self._subscription.unsubscribe(message, self._loop.time()))
            elif isinstance(message, Ping):
                self._push(Pong(id=message.id, server_time=self._server_time()))
        except MessageError as exc:
            self._push(exc.to_error())
        except Exception:
            self._push(internal_error(log, f"user={self.user_id} conn={self.connection_id}").to_error())

    def _subscribe(self, message: Subscribe) -> None:
        first = not self._subscription.active
        self._send(self._subscription.subscribe(message, self._stream, self._server_time()))
        if first and self._subscription.active:
            self._unlisten = self._bus.subscribe(self.user_id, self._on_events)

    def _send(self, outgoing: Sequence[Outgoing]) -> None:
        for item in outgoing:
            if isinstance(item, PendingBatch):
                self._push_batch(item)
            else:
                if isinstance(item, Snapshot):
                    self._stats.snapshots_out += 1
                self._push(item)

    # ------------------------------------------------------------- outbound

    def _on_events(self, events: Sequence[Event], encoded: Sequence[bytes], now: float) -> None:
        self._subscription.add(events, encoded, now)
        self._schedule_flush()

    def _schedule_flush(self) -> None:
        deadline = self._subscription.deadline()
        if deadline is None:
            return
        now = self._loop.time()
        if deadline <= now:
            self._flush()
        elif self._flush_timer is None or self._flush_timer.when() > deadline:
            if self._flush_timer is not None:
                self._flush_timer.cancel()
            self._flush_timer = self._loop.call_at(deadline, self._flush)

    def _flush(self) -> None:
        self._flush_timer = None
        now = self._loop.time()
        # More than one batch is due only with a window of 0 (a frame per event).
        while (batch := self._subscription.take_due(now)) is not None:
            self._push_batch(batch)
            if batch.oldest_added_at is not None:
                self._stats.latency.record(now - batch.oldest_added_at)
        self._schedule_flush()

    def _push_batch(self, batch: PendingBatch) -> None:
        self._stats.events_delivered += batch.events_in
        self._stats.batches_out += 1
        if self._deflate is not None:
            self._deflate.keep_context(True)
        events = self._subscription.batch_events(batch)
        if events is not None:
            epoch, time_now = self._stream.epoch, self._server_time()
            self._push_frame(encode_batch(epoch, batch.from_seq, batch.to_seq, time_now, events))
            return
        self._push(
            Batch(
                epoch=self._stream.epoch,
                from_seq=batch.from_seq,
                to_seq=batch.to_seq,
                server_time=self._server_time(),
                events=[*batch.events],
            )
        )

    def _push(self, message: Any) -> None:
        if not self._subscription.resyncing:
            self._push_frame(encode(message))

    def _push_frame(self, frame: bytes) -> None:
        if self._subscription.resyncing:
            return
        if self._sender is None and self._write_at_once(frame):
            return
        if not self._outbox.push(frame):
            self._begin_resync()
        self._start_sending()

    def _write_at_once(self, frame: bytes) -> bool:
        """Write the frame now when the socket takes it without waiting; False leaves it to the sender.

        This is what the sender task's first step would do, less the task, its loop pass and
        ``send``'s await machinery. A transport still holding bytes (a client that may be
        falling behind: the outbox bound and the resync must see the frames) and a replay
        (the sender task paces it) keep to the task.
        """
        ws = self.ws
        if (
            self._socket_closed
            or self._outbox
            or self._subscription.replaying
            or ws.protocol.state is not State.OPEN
            or ws.transport.get_write_buffer_size()
        ):
            return False
        ws.protocol.send_text(frame)
        for data in ws.protocol.data_to_send():
            ws.transport.write(data)
        self._sent(frame)
        return True

    def _sent(self, frame: bytes) -> None:
        """The socket took ``frame`` (written at once, or by the sender task)."""
        self._stats.bytes_out += len(frame)
        self.last_sent_at = self._loop.time()

    def _start_sending(self) -> None:
        if self._sender is None and not self._socket_closed:
            self._sender = self._loop.create_task(self._send_loop(), name=f"send-{self.connection_id}")

    def _begin_resync(self) -> None:
        self._subscription.begin_resync()
        self._stats.slow_consumer_resyncs += 1
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        self._watchdog = self._loop.call_later(self._config.slow_client_timeout_s, self._on_stuck)
        log.warning(
            "event=slow_consumer user=%s conn=%s action=discard_backlog_then_snapshot",
            self.user_id,
            self.connection_id,
        )

    def _on_stuck(self) -> None:
        self._watchdog = None
        if self._subscription.resyncing:
            log.warning(
                "event=slow_consumer user=%s conn=%s action=close code=%d",
                self.user_id,
                self.connection_id,
                CLOSE_SLOW_CONSUMER.code,
            )
            self.close_soon(*CLOSE_SLOW_CONSUMER)

    def _end_resync(self) -> bytes | None:
        """The snapshot that replaces the discarded backlog, once the socket drained."""
        if not self._subscription.resyncing:
            return None
        snapshot = self._subscription.end_resync(self._stream, self._server_time())
        if snapshot is None:
            return None
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        self._stats.snapshots_out += 1
        return encode(snapshot)

    def _next_frame(self) -> bytes | None:
        """What goes out next: the queue, the resync's snapshot, the next recovered batch; or None."""
        while True:
            frame = self._outbox.pop()
            if frame is None:
                frame = self._end_resync()
            if frame is None and self._subscription.replaying:
                self._next_replay()
                continue
            return frame

    async def _send_loop(self) -> None:
        """Until nothing is left to send (the next frame pushed starts another), or the socket closed."""
        ws = self.ws
        try:
            while (frame := self._next_frame()) is not None:
                await ws.send(frame, text=True)
                self._sent(frame)
        except ConnectionClosed:
            self._socket_closed = True
        finally:
            if self._sender is asyncio.current_task():
                self._sender = None

    def _next_replay(self) -> None:
        """The socket took what was queued: the next recovered batch, then the live ones."""
        self._send(self._subscription.next_replay(self._stream, self._server_time()))
        if not self._subscription.replaying:
            self._schedule_flush()

    def tick(self, now: float) -> None:
        """Called about once a second: a heartbeat when nothing was sent for heartbeat_s, and the
        compressor freed once nothing was sent for ``QUIET_S``."""
        if self._deflate is not None and now - self.last_sent_at >= QUIET_S:
            self._deflate.keep_context(False)
        if self._subscription.resyncing or self._outbox or now - self.last_sent_at < self._config.heartbeat_s:
            return
        self.last_sent_at = now  # one heartbeat per interval, even before the socket takes it
        self._push(
            Heartbeat(server_time=self._server_time(), seq=self._subscription.heartbeat_seq(self._stream))
        )

    @staticmethod
    def _server_time() -> str:
        return format_timestamp(time.time())
