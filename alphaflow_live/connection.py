"""The stream's connection loop: stream, resume, heal gaps, back off, poll, come back.

Runs on the PortfolioStream's own thread and loop. Outcomes of one attempt:

* the stream ran and then dropped → reconnect at once-ish (backoff reset) and resume;
* the handshake or connection failed → back off (exponential, full jitter);
* streaming is switched off (503 ``streaming_disabled``, close 4003), or the
  stream failed ``fallback_after_failures`` times in a row → poll the REST
  snapshot every ``poll_interval_s`` while retrying the stream with backoff;
* 401/403 → stop for good with an AuthError.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import logging
import time
import urllib.error
import urllib.request
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from .backoff import Backoff
from .protocol import (
    Batch,
    Error,
    Heartbeat,
    ResumePoint,
    Snapshot,
    Subscribe,
    Welcome,
    encode,
    server_message_decoder,
    snapshot_decoder,
)
from .state import BatchOutcome

if TYPE_CHECKING:
    from .client import PortfolioStream

log = logging.getLogger("alphaflow_live")

CLOSE_STREAMING_DISABLED = 4003


class Outcome(enum.Enum):
    DROPPED = "dropped"  # it was streaming, then the connection ended
    FAILED = "failed"  # could not connect, or refused for now
    DISABLED = "disabled"  # the operator switched streaming off
    FATAL = "fatal"  # credentials refused
    STOPPED = "stopped"  # the user closed the stream


async def run_connection(stream: PortfolioStream, token: str, stop: asyncio.Event) -> None:
    stream._stop_event = stop
    backoff = Backoff(base_s=stream.backoff_base_s, cap_s=stream.backoff_cap_s)
    failures = 0
    while not stream.stopping:
        outcome = await _stream_once(stream, token)
        if outcome in (Outcome.FATAL, Outcome.STOPPED):
            return
        if outcome is Outcome.DROPPED:
            backoff.reset()
            failures = 0
        else:
            failures += 1
        stream.counters["reconnects"] += 1
        delay = backoff.next_delay()
        if outcome is Outcome.DISABLED or failures >= stream.fallback_after_failures:
            if await _poll_for(stream, token, delay) is Outcome.FATAL:
                return
        else:
            stream._set_status("reconnecting")
            await _sleep(stream, delay)


async def _sleep(stream: PortfolioStream, seconds: float) -> None:
    """Sleep, unless the stream is closed meanwhile."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stream._stop_event.wait(), max(0.0, seconds))


# --------------------------------------------------------------------- stream


async def _stream_once(stream: PortfolioStream, token: str) -> Outcome:
    ws: ClientConnection | None = None
    streamed = False
    try:
        ws = await connect(
            stream.url,
            additional_headers={"Authorization": f"Bearer {token}"},
            open_timeout=stream.connect_timeout_s,
            max_size=None,  # a snapshot of a large portfolio runs to megabytes
            ping_interval=20,
            ping_timeout=20,
            close_timeout=2,
        )
        watcher = asyncio.create_task(_close_when_stopping(stream, ws))
        try:
            stream._healing = False
            await _subscribe(ws, stream)
            async for frame in ws:
                stream.counters["bytes"] += len(frame)
                if _handle(stream, server_message_decoder.decode(frame)):
                    await _subscribe(ws, stream)
                streamed = streamed or stream.status == "live"
        finally:
            watcher.cancel()
    except InvalidStatus as exc:
        return _refused(stream, exc.response.status_code, bytes(exc.response.body or b""))
    except ConnectionClosed as exc:
        if exc.rcvd is not None and exc.rcvd.code == CLOSE_STREAMING_DISABLED:
            log.warning("alphaflow-live: streaming switched off by the server; polling the snapshot")
            return Outcome.DISABLED
    except (OSError, TimeoutError, InvalidHandshake) as exc:
        log.info("alphaflow-live: cannot connect to %s: %s", stream.url, exc)
    except Exception:
        log.exception("alphaflow-live: unexpected error in the stream")
    if stream.stopping:
        return Outcome.STOPPED
    if ws is not None and ws.close_code == CLOSE_STREAMING_DISABLED:
        return Outcome.DISABLED
    return Outcome.DROPPED if streamed else Outcome.FAILED


async def _close_when_stopping(stream: PortfolioStream, ws: ClientConnection) -> None:
    await stream._stop_event.wait()
    await ws.close()


async def _subscribe(ws: ClientConnection, stream: PortfolioStream) -> None:
    state = stream._state
    resume = ResumePoint(epoch=state.epoch, seq=state.seq) if state.epoch and state.seq is not None else None
    await ws.send(encode(Subscribe(id=1, channels=stream.channels, resume=resume)), text=True)


def _handle(stream: PortfolioStream, message: Any) -> bool:
    """Apply one message; True when the client must resubscribe (with resume) to heal a gap.

    While such a resubscribe is under way (``_healing``), batches that still do
    not fit are ignored: the reply (a recovered batch or a snapshot) covers them.
    """
    if isinstance(message, Snapshot):
        stream._apply_snapshot(message)
        stream._healing = False
        stream._set_status("live")
    elif isinstance(message, Batch):
        outcome = stream._apply_batch(message)
        if outcome is BatchOutcome.APPLIED:
            stream._healing = False
            stream._set_status("live")
        elif outcome is not BatchOutcome.DUPLICATE and not stream._healing:
            log.info("alphaflow-live: %s at seq %s; resubscribing to heal", outcome.value, stream.seq)
            return _start_healing(stream)
    elif isinstance(message, Heartbeat):
        stream._touch(message.server_time)
        if stream.seq is not None and message.seq > stream.seq and not stream._healing:
            return _start_healing(stream)  # the server delivered more than we hold
    elif isinstance(message, Error):
        level = logging.INFO if message.code == "resume_unavailable" else logging.WARNING
        log.log(level, "alphaflow-live: server says %s: %s", message.code, message.message)
    elif isinstance(message, Welcome):
        stream.counters["connections"] += 1
    return False


def _start_healing(stream: PortfolioStream) -> bool:
    stream._healing = True
    stream.counters["resyncs"] += 1
    return True


def _refused(stream: PortfolioStream, status: int, body: bytes) -> Outcome:
    from .client import AuthError

    try:
        detail = json.loads(body)
    except ValueError:
        detail = {}
    message = detail.get("message") or body.decode(errors="replace")[:200]
    if status in (401, 403):
        stream._fail(AuthError(f"the server refused the token (HTTP {status}): {message}"))
        return Outcome.FATAL
    if status == 503 and detail.get("error") == "streaming_disabled":
        return Outcome.DISABLED
    log.info("alphaflow-live: handshake refused (HTTP %d): %s", status, message)
    return Outcome.FAILED


# -------------------------------------------------------------------- polling


def snapshot_url(stream_url: str) -> str:
    parts = urlsplit(stream_url)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    return urlunsplit((scheme, parts.netloc, "/api/portfolio/snapshot", "", ""))


async def _poll_for(stream: PortfolioStream, token: str, duration: float) -> Outcome | None:
    """Poll the snapshot for about ``duration`` (at least once), then let the stream be tried."""
    deadline = time.monotonic() + duration
    while not stream.stopping:
        outcome = await _poll_once(stream, token)
        if outcome is Outcome.FATAL:
            return outcome
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        await _sleep(stream, min(stream.poll_interval_s, remaining))
    return Outcome.STOPPED


async def _poll_once(stream: PortfolioStream, token: str) -> Outcome | None:
    url = snapshot_url(stream.url)
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})  # noqa: S310

    def fetch() -> bytes:
        with urllib.request.urlopen(request, timeout=stream.connect_timeout_s) as reply:  # noqa: S310
            body: bytes = reply.read()
            return body

    try:
        body = await asyncio.to_thread(fetch)
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403):
            return _refused(stream, exc.code, exc.read())
        log.info("alphaflow-live: polling %s failed: HTTP %d", url, exc.code)
        stream._set_status("offline")
        return None
    except (OSError, TimeoutError) as exc:
        log.info("alphaflow-live: polling %s failed: %s", url, exc)
        stream._set_status("offline")
        return None
    stream.counters["polls"] += 1
    stream.counters["bytes"] += len(body)
    stream._apply_snapshot(snapshot_decoder.decode(body))
    stream._set_status("polling")
    return None
