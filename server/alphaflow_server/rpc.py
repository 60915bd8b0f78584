"""The request/reply loop shared by /ws/ingest and /ws/admin.

Each inbound frame is rate limited, decoded against the stream's message
union and answered with exactly one reply: the handler's (an ``ack`` or
``stats``) or an ``error`` that names what was wrong and echoes the ``id``.
The connection stays open after an error.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from alphaflow_live.protocol import MessageError, encode

from .limits import TokenBucket

log = logging.getLogger("alphaflow.server.rpc")

M = TypeVar("M")

RATE_LIMIT_CLOSE = (1008, "rate limit")


async def serve_requests(
    ws: ServerConnection,
    *,
    decode: Callable[[str], M],
    handle: Callable[[M], Awaitable[Any]],
    messages_per_s: float,
    describe: str,
) -> int | None:
    """Serve until the peer leaves; returns the close code this side chose, if any."""
    loop = asyncio.get_running_loop()
    bucket = TokenBucket(messages_per_s, messages_per_s, loop.time())
    chosen: int | None = None
    closer: asyncio.Task[None] | None = None
    try:
        async for frame in ws:
            if chosen is not None:
                continue  # closing: drain what is in flight so the close frame gets read
            if not bucket.take(loop.time()):
                chosen = RATE_LIMIT_CLOSE[0]
                closer = asyncio.create_task(ws.close(*RATE_LIMIT_CLOSE))
                continue
            try:
                if isinstance(frame, bytes):
                    raise MessageError(
                        "invalid_message", "binary frames are not accepted; send JSON text frames"
                    )
                reply = await handle(decode(frame))
            except MessageError as exc:
                reply = exc.to_error()
            except Exception:
                log.exception("event=internal_error stream=%s", describe)
                reply = MessageError("internal", "the server failed to handle this message").to_error()
            await ws.send(encode(reply), text=True)
    except ConnectionClosed:
        pass
    if closer is not None:
        await closer
    return chosen
