"""The stream's connection loop: the asyncio shell around ``tracking``'s decisions.

It opens the WebSocket, hands each decoded message to the ``Tracker`` and
carries out the actions against the ``StreamSink``; after each attempt it asks
the ``Policy`` whether to reconnect, poll the REST snapshot or stop. It knows
nothing of pandas, widgets or threads: it runs on whatever loop it is given.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from .backoff import Backoff
from .codes import SNAPSHOT_PATH
from .protocol import encode
from .state import BatchOutcome
from .tracking import (
    Action,
    Apply,
    Attempt,
    Count,
    Endpoints,
    Note,
    Outcome,
    Policy,
    Poll,
    Reconnect,
    SetStatus,
    Stop,
    StreamSink,
    Touch,
    Tracker,
    ended,
    polled,
    refused,
)
from .trusted import trusted_server_message_decoder, trusted_snapshot_decoder

log = logging.getLogger("alphaflow_live")


@dataclass(frozen=True, slots=True)
class ConnectionOptions:
    # Every node of the cluster (or the one server): tried in a shuffled order (``Endpoints``).
    urls: Sequence[str]
    token: str
    channels: Sequence[str]
    poll_interval_s: float = 5.0
    backoff_base_s: float = 0.5
    backoff_cap_s: float = 30.0
    fallback_after_failures: int = 3
    connect_timeout_s: float = 10.0
    field_deltas: bool = True

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


async def run_connection(options: ConnectionOptions, sink: StreamSink, stop: asyncio.Event) -> None:
    """Stream (and poll when it must) until ``stop`` is set or the token is refused."""
    policy = Policy(
        Backoff(base_s=options.backoff_base_s, cap_s=options.backoff_cap_s),
        fallback_after_failures=options.fallback_after_failures,
    )
    endpoints = Endpoints(options.urls)
    warned = ""  # the last notable refusal logged at WARNING: one line per cause, not per retry
    while not stop.is_set():
        sink.endpoint(endpoints.current)
        attempt = await _stream_once(endpoints.current, options, sink, stop)
        if attempt.notable and attempt.reason != warned:
            log.warning("alphaflow-live: %s", attempt.reason)
            warned = attempt.reason
        step = policy.after(attempt)
        if isinstance(step, Stop):
            return
        sink.count("reconnects")
        if (
            isinstance(step, Poll)
            and await _poll_for(endpoints.current, options, sink, stop, step) is Outcome.FATAL
        ):
            return
        endpoints.advance()  # the next attempt goes to another node, when there are several
        if isinstance(step, Reconnect):
            sink.set_status("reconnecting", attempt.reason)
            await _sleep(stop, step.delay_s)


async def _sleep(stop: asyncio.Event, seconds: float) -> None:
    """Sleep, unless the stream is closed meanwhile."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), max(0.0, seconds))


# --------------------------------------------------------------------- stream


async def _stream_once(
    url: str, options: ConnectionOptions, sink: StreamSink, stop: asyncio.Event
) -> Attempt:
    ws: ClientConnection | None = None
    streamed = False
    reason = ""
    tracker = Tracker(list(options.channels), deltas=options.field_deltas)
    try:
        ws = await connect(
            url,
            additional_headers=options.headers,
            open_timeout=options.connect_timeout_s,
            max_size=None,  # a snapshot of a large portfolio runs to megabytes
            ping_interval=20,
            ping_timeout=20,
            close_timeout=2,
        )
        watcher = asyncio.create_task(_close_when_stopping(stop, ws))
        try:
            await _carry_out(ws, sink, tracker.opened(sink.held()), tracker)
            async for frame in ws:
                sink.count("bytes", len(frame))
                # The server's own frames: decoded without checking its values again (``trusted``).
                message = trusted_server_message_decoder.decode(frame)
                streamed |= await _carry_out(ws, sink, tracker.receive(message, sink.held()), tracker)
        finally:
            watcher.cancel()
    except InvalidStatus as exc:
        response = exc.response
        refusal = refused(
            response.status_code, bytes(response.body or b""), response.headers.get("Retry-After")
        )
        if refusal.error is not None:
            sink.fail(refusal.error)
        elif refusal.outcome is Outcome.DISABLED:
            log.warning("alphaflow-live: %s; polling the snapshot", refusal.message)
        elif not refusal.attempt.notable:
            log.info("alphaflow-live: %s", refusal.message)
        return refusal.attempt
    except ConnectionClosed as exc:
        reason = f"the connection closed ({exc})"
    except (OSError, TimeoutError, InvalidHandshake) as exc:
        reason = f"cannot connect to {url}: {exc}"
        log.info("alphaflow-live: %s", reason)
    except Exception:
        reason = "unexpected error in the stream (logged)"
        log.exception("alphaflow-live: unexpected error in the stream")
    attempt = ended(
        streamed=streamed,
        close_code=None if ws is None else ws.close_code,
        stopping=stop.is_set(),
        reason=reason,
    )
    if attempt.outcome is Outcome.DISABLED:
        log.warning("alphaflow-live: %s; polling the snapshot", attempt.reason)
    return attempt


async def _close_when_stopping(stop: asyncio.Event, ws: ClientConnection) -> None:
    await stop.wait()
    await ws.close()


async def _carry_out(
    ws: ClientConnection | None, sink: StreamSink, actions: list[Action], tracker: Tracker | None = None
) -> bool:
    """Do what the tracker decided; True once the stream is live."""
    live = False
    for action in actions:
        if isinstance(action, Apply):
            outcome = sink.apply(action.message)
            if outcome is BatchOutcome.MISSING_BASE and tracker is not None:
                await _carry_out(ws, sink, tracker.unapplied(outcome, sink.held()))
                return live
        elif isinstance(action, SetStatus):
            sink.set_status(action.status, action.reason)
            live = live or action.status == "live"
        elif isinstance(action, Touch):
            sink.touch(action.server_time)
        elif isinstance(action, Count):
            sink.count(action.name, action.amount)
        elif isinstance(action, Note):
            log.log(action.level, "alphaflow-live: %s", action.text)
        elif ws is not None:  # Send
            await ws.send(encode(action.message), text=True)
    return live


# -------------------------------------------------------------------- polling


def snapshot_url(stream_url: str) -> str:
    parts = urlsplit(stream_url)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    return urlunsplit((scheme, parts.netloc, SNAPSHOT_PATH, "", ""))


async def _poll_for(
    url: str, options: ConnectionOptions, sink: StreamSink, stop: asyncio.Event, step: Poll
) -> Outcome | None:
    """Poll the snapshot for about ``step.duration_s`` (at least once), then let the stream be tried."""
    deadline = time.monotonic() + step.duration_s
    while not stop.is_set():
        if await _poll_once(url, options, sink, step.reason) is Outcome.FATAL:
            return Outcome.FATAL
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        await _sleep(stop, min(options.poll_interval_s, remaining))
    return Outcome.STOPPED


async def _poll_once(
    stream_url: str, options: ConnectionOptions, sink: StreamSink, reason: str
) -> Outcome | None:
    url = snapshot_url(stream_url)
    request = urllib.request.Request(url, headers=options.headers)  # noqa: S310 - ws(s) mapped to http(s)

    def fetch() -> bytes:
        with urllib.request.urlopen(request, timeout=options.connect_timeout_s) as reply:  # noqa: S310
            body: bytes = reply.read()
            return body

    try:
        body = await asyncio.to_thread(fetch)
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403):
            refusal = refused(exc.code, exc.read())
            if refusal.error is not None:
                sink.fail(refusal.error)
            return refusal.outcome
        problem = f"polling {url} failed: HTTP {exc.code}"
        log.info("alphaflow-live: %s", problem)
        sink.set_status("offline", f"{reason}; {problem}" if reason else problem)
        return None
    except (OSError, TimeoutError) as exc:
        problem = f"polling {url} failed: {exc}"
        log.info("alphaflow-live: %s", problem)
        sink.set_status("offline", f"{reason}; {problem}" if reason else problem)
        return None
    sink.count("bytes", len(body))
    await _carry_out(None, sink, polled(trusted_snapshot_decoder.decode(body), reason))
    return None
