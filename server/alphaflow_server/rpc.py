"""The request/reply loop shared by /ws/ingest and /ws/admin.

Each inbound frame is rate limited (``inbound``), decoded against the stream's
message union and answered with exactly one reply: the handler's (an ``ack``
or ``stats``) or an ``error`` that names what was wrong and echoes the ``id``.
The connection stays open after an error.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from alphaflow_live.protocol import MessageError, encode

from .inbound import Inbound, internal_error, text_of

log = logging.getLogger("alphaflow.server.rpc")

M = TypeVar("M")


async def serve_requests(
    ws: ServerConnection,
    *,
    decode: Callable[[str], M],
    handle: Callable[[M], Awaitable[Any]],
    messages_per_s: float,
    describe: str,
) -> int | None:
    """Serve until the peer leaves; returns the close code this side chose, if any."""
    inbound = Inbound(ws, messages_per_s=messages_per_s)
    try:
        async for frame in inbound:
            try:
                reply = await handle(decode(text_of(frame)))
            except MessageError as exc:
                reply = exc.to_error()
            except Exception:
                reply = internal_error(log, f"stream={describe}").to_error()
            await ws.send(encode(reply), text=True)
    except ConnectionClosed:
        pass
    await inbound.closed()
    return inbound.close_code
