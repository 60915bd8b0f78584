"""One /ws/portfolio connection: subscription, resume, batching and the bounded outbox.

The flow per connection:

    EventBus ──listener──► Batcher ──due──► Outbox ──sender task──► socket

The listener runs synchronously inside ``EventBus.publish`` and never awaits;
only the sender task waits for the socket. When the socket cannot keep up and
the outbox passes its bound, the queued frames are discarded and one fresh
snapshot is sent once the socket drains (or the connection is closed with 1013
if it does not drain in time).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from alphaflow_live.protocol import (
    CHANNELS,
    Batch,
    Channel,
    Event,
    Heartbeat,
    MessageError,
    Ping,
    Pong,
    Snapshot,
    Subscribe,
    Subscribed,
    Unsubscribe,
    Welcome,
    decode_client_message,
    encode,
    encode_batch,
    format_timestamp,
    validate_channels,
)

from .batcher import Batcher, PendingBatch, coalesce
from .bus import EventBus, UserStream
from .config import ServerConfig
from .limits import Outbox, TokenBucket
from .stats import ServerStats

log = logging.getLogger("alphaflow.server.session")

CLOSE_RATE_LIMIT = (1008, "rate limit")
CLOSE_SLOW_CONSUMER = (1013, "slow consumer: backlog did not drain")
CLOSE_STREAMING_DISABLED = (4003, "streaming disabled")


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
    ) -> None:
        self.ws = ws
        self.user_id = user_id
        self.connection_id = connection_id
        self._bus = bus
        self._config = config
        self._stats = stats
        self._loop = asyncio.get_running_loop()
        self._stream: UserStream = bus.user(user_id)
        now = self._loop.time()
        self._bucket = TokenBucket(config.max_messages_per_s, config.max_messages_per_s, now)
        self._outbox = Outbox.bounded(config.max_backlog_bytes)
        self._wakeup = asyncio.Event()
        self._batcher: Batcher | None = None  # set by the first subscribe
        self._unlisten: Callable[[], None] | None = None
        self._flush_timer: asyncio.TimerHandle | None = None
        self._resync_pending = False
        self._watchdog: asyncio.TimerHandle | None = None
        self.last_sent_at = now
        # The close code this side chose, when it closed the connection itself.
        self.close_code: int | None = None
        self._closer: asyncio.Task[None] | None = None

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
            )
        )
        sender = asyncio.create_task(self._send_loop(), name=f"send-{self.connection_id}")
        try:
            async for frame in self.ws:
                if self.close_code is not None:
                    continue  # closing: drain what is in flight so the close frame gets read
                if not self._bucket.take(self._loop.time()):
                    self._close_soon(*CLOSE_RATE_LIMIT)
                    continue
                self._receive(frame)
        except ConnectionClosed:
            pass
        finally:
            self._stop()
            sender.cancel()
            await asyncio.gather(sender, *([self._closer] if self._closer else []), return_exceptions=True)

    def _stop(self) -> None:
        if self._unlisten is not None:
            self._unlisten()
            self._unlisten = None
        for timer in (self._flush_timer, self._watchdog):
            if timer is not None:
                timer.cancel()

    async def close(self, code: int, reason: str) -> None:
        """Close with ``code``, or drop the TCP connection if that takes longer than
        the close timeout (a socket that does not drain never lets the close frame out)."""
        self.close_code = code
        try:
            async with asyncio.timeout(self._config.close_timeout_s):
                await self.ws.close(code, reason)
        except TimeoutError:
            self.ws.transport.abort()

    def _close_soon(self, code: int, reason: str) -> None:
        self.close_code = code
        self._closer = self._loop.create_task(self.close(code, reason))

    # -------------------------------------------------------------- inbound

    def _receive(self, frame: str | bytes) -> None:
        if isinstance(frame, bytes):
            self._reply_error(
                MessageError("invalid_message", "binary frames are not accepted; send JSON text frames")
            )
            return
        try:
            message = decode_client_message(frame)
            if isinstance(message, Subscribe):
                self._subscribe(message)
            elif isinstance(message, Unsubscribe):
                self._unsubscribe(message)
            elif isinstance(message, Ping):
                self._push(Pong(id=message.id, server_time=self._server_time()))
        except MessageError as exc:
            self._reply_error(exc)
        except Exception:
            log.exception("event=internal_error user=%s conn=%s", self.user_id, self.connection_id)
            self._reply_error(MessageError("internal", "the server failed to handle this message"))

    def _reply_error(self, error: MessageError) -> None:
        self._push(error.to_error())

    def _subscribe(self, message: Subscribe) -> None:
        names = CHANNELS if message.channels is None else message.channels
        channels = _channels_or_error(names, message.id)
        if not channels:
            raise MessageError("invalid_channel", "subscribe needs at least one channel", message.id)
        journal = self._stream.journal
        resume = message.resume
        if resume is not None and journal.can_resume(resume.epoch, resume.seq):
            missed = [e for e in journal.events_after(resume.seq) if e.channel in channels]
            self._push(Subscribed(channels=channels, recovered=True))
            self._push_batch(PendingBatch(resume.seq, journal.seq, coalesce(missed), len(missed), None))
        else:
            if resume is not None:
                self._reply_error(
                    MessageError(
                        "resume_unavailable",
                        _resume_refusal(
                            resume.epoch,
                            resume.seq,
                            journal.epoch,
                            journal.first_replayable_seq,
                            journal.seq,
                        ),
                        message.id,
                    )
                )
            self._push(Subscribed(channels=channels, recovered=False))
            self._push_snapshot(channels)
        if self._batcher is None:
            self._batcher = Batcher(
                window_s=self._config.batch_window_s,
                leading_edge=self._config.leading_edge,
                channels=channels,
                cursor=journal.seq,
            )
            self._unlisten = self._bus.subscribe(self.user_id, self._on_events)
        else:
            self._batcher.reset(journal.seq, channels=channels)

    def _unsubscribe(self, message: Unsubscribe) -> None:
        removed = set(_channels_or_error(message.channels, message.id))
        if self._batcher is None:
            raise MessageError("invalid_message", "not subscribed: send subscribe first", message.id)
        remaining = [c for c in CHANNELS if c in self._batcher.channels and c not in removed]
        # Whatever is pending for the remaining channels goes out first, so the
        # batches stay contiguous across the change of filter.
        pending = self._batcher.take(self._loop.time(), force=True)
        self._batcher.channels = frozenset(remaining)
        if pending is not None:
            self._push_batch(_filtered(pending, remaining))
        self._push(Subscribed(channels=remaining, recovered=True))

    # ------------------------------------------------------------- outbound

    def _on_events(self, events: Sequence[Event], encoded: Sequence[bytes], now: float) -> None:
        batcher = self._batcher
        if batcher is None or self._resync_pending:
            return  # the snapshot that ends the resync supersedes these
        batcher.add(events, now, encoded)
        self._schedule_flush()

    def _schedule_flush(self) -> None:
        batcher = self._batcher
        if batcher is None:
            return
        deadline = batcher.deadline()
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
        while self._batcher is not None and not self._resync_pending:
            batch = self._batcher.take(now)
            if batch is None:
                break
            self._push_batch(batch)
            if batch.oldest_added_at is not None:
                self._stats.latency.record(now - batch.oldest_added_at)
        if not self._resync_pending:
            self._schedule_flush()

    def _push_batch(self, batch: PendingBatch) -> None:
        self._stats.events_delivered += batch.events_in
        self._stats.batches_out += 1
        if batch.encoded is not None:
            frame = encode_batch(
                self._stream.epoch, batch.from_seq, batch.to_seq, self._server_time(), batch.encoded
            )
            self._push_frame(frame)
            return
        self._push(
            Batch(
                epoch=self._stream.epoch,
                from_seq=batch.from_seq,
                to_seq=batch.to_seq,
                server_time=self._server_time(),
                events=batch.events,
            )
        )

    def _push_snapshot(self, channels: Sequence[str]) -> None:
        self._push(self._snapshot(channels))

    def _snapshot(self, channels: Sequence[str]) -> Snapshot:
        self._stats.snapshots_out += 1
        return self._stream.state.to_snapshot(self._server_time(), channels)

    def _push(self, message: Any) -> None:
        if not self._resync_pending:
            self._push_frame(encode(message))

    def _push_frame(self, frame: bytes) -> None:
        if self._resync_pending:
            return
        if not self._outbox.push(frame):
            self._begin_resync()
        self._wakeup.set()

    def _begin_resync(self) -> None:
        self._resync_pending = True
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
        if self._resync_pending:
            log.warning(
                "event=slow_consumer user=%s conn=%s action=close code=1013",
                self.user_id,
                self.connection_id,
            )
            self._close_soon(*CLOSE_SLOW_CONSUMER)

    def _end_resync(self) -> bytes:
        """The snapshot that replaces the discarded backlog, built now that the socket drained."""
        assert self._batcher is not None
        self._resync_pending = False
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        channels = [c for c in CHANNELS if c in self._batcher.channels]
        self._batcher.reset(self._stream.seq)
        return encode(self._snapshot(channels))

    async def _send_loop(self) -> None:
        ws = self.ws
        try:
            while True:
                frame = self._outbox.pop()
                if frame is None and self._resync_pending and self._batcher is not None:
                    frame = self._end_resync()
                if frame is None:
                    self._wakeup.clear()
                    await self._wakeup.wait()
                    continue
                await ws.send(frame, text=True)
                self._stats.bytes_out += len(frame)
                self.last_sent_at = self._loop.time()
        except ConnectionClosed:
            pass

    def tick(self, now: float) -> None:
        """Called about once a second: a heartbeat when nothing was sent for heartbeat_s."""
        if self._resync_pending or self._outbox or now - self.last_sent_at < self._config.heartbeat_s:
            return
        seq = self._batcher.cursor if self._batcher is not None else self._stream.seq
        self.last_sent_at = now  # one heartbeat per interval, even before the socket takes it
        self._push(Heartbeat(server_time=self._server_time(), seq=seq))

    @staticmethod
    def _server_time() -> str:
        return format_timestamp(time.time())


def _channels_or_error(names: Sequence[str], ref: Any) -> list[Channel]:
    try:
        return validate_channels(names)
    except MessageError as exc:
        exc.ref = ref
        raise


def _filtered(batch: PendingBatch, channels: Sequence[str]) -> PendingBatch:
    kept = [e for e in batch.events if e.channel in channels]
    return PendingBatch(batch.from_seq, batch.to_seq, kept, batch.events_in, batch.oldest_added_at)


def _resume_refusal(epoch: str, seq: int, current_epoch: str, first: int, last: int) -> str:
    if epoch != current_epoch:
        return f"epoch {epoch!r} is not the current epoch {current_epoch!r}; a snapshot follows"
    return f"seq {seq} is outside the replayable range {first}..{last}; a snapshot follows"
