"""The inbound side of every stream: the rate limit, the close it leads to, and the shared error texts.

Each frame costs one token of the connection's bucket. Past the rate, this
side closes with 1008 ``rate limit`` and goes on reading without acting on
anything: the peer's close frame is only read after what it sent before it,
so the close handshake completes instead of waiting out the close timeout.
The same holds once this side decided to close for any other reason.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from alphaflow_live.codes import CLOSE_RATE_LIMIT
from alphaflow_live.protocol import MessageError, MessageId

from .limits import TokenBucket

BINARY_FRAME_REFUSED = "binary frames are not accepted; send JSON text frames"
INTERNAL_ERROR = "the server failed to handle this message"


def text_of(frame: str | bytes) -> str:
    """The frame's JSON text; a binary frame is ``invalid_message``."""
    if isinstance(frame, bytes):
        raise MessageError("invalid_message", BINARY_FRAME_REFUSED)
    return frame


def internal_error(log: logging.Logger, context: str, ref: MessageId | None = None) -> MessageError:
    """The reply to a bug: logged once with its traceback (call it inside the ``except``)."""
    log.exception("event=internal_error %s", context)
    return MessageError("internal", INTERNAL_ERROR, ref)


class Inbound:
    """The frames of one connection that its stream acts on, in order, until the peer leaves.

    Also this side's close, once decided (``close_soon``): its code, and the
    task sending the close frame through ``close`` (``ws.close`` unless given).
    """

    def __init__(
        self,
        ws: ServerConnection,
        *,
        messages_per_s: float,
        close: Callable[[int, str], Coroutine[Any, Any, None]] | None = None,
    ) -> None:
        self._ws = ws
        self._loop = asyncio.get_running_loop()
        self._bucket = TokenBucket(messages_per_s, messages_per_s, self._loop.time())
        self._close = close or ws.close
        # The close code this side chose, when it decided to close.
        self.close_code: int | None = None
        self._closers: list[asyncio.Task[None]] = []

    def close_soon(self, code: int, reason: str) -> None:
        self.close_code = code
        self._closers.append(self._loop.create_task(self._close(code, reason)))

    def __aiter__(self) -> Inbound:
        return self

    async def __anext__(self) -> str | bytes:
        while True:
            try:
                frame = await self._ws.recv()
            except ConnectionClosed:
                raise StopAsyncIteration from None
            if self.close_code is not None:
                continue
            if not self._bucket.take(self._loop.time()):
                self.close_soon(*CLOSE_RATE_LIMIT)
                continue
            return frame

    async def closed(self) -> None:
        """Until every close started by ``close_soon`` is done (its errors end the connection anyway)."""
        await asyncio.gather(*self._closers, return_exceptions=True)
