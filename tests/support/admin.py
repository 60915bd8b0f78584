"""Reading a server's admin stats over REST, for assertions on what it did."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec

from alphaflow_live.protocol import Ack, Stats, admin_reply_decoder

from .client import http_get, open_ws, send


async def stats(http_base: str, admin_token: str) -> dict[str, Any]:
    status, body, _ = await asyncio.to_thread(http_get, f"{http_base}/api/admin/websocket-stats", admin_token)
    assert status == 200, f"stats: HTTP {status} {body!r}"
    result: dict[str, Any] = msgspec.json.decode(body)
    return result


async def admin_request(server: Any, tokens: Any, payload: dict[str, Any]) -> Ack | Stats:
    """One request on /ws/admin and its reply."""
    ws = await open_ws(server.ws_base, "/ws/admin", tokens.admin)
    await send(ws, payload)
    reply: Ack | Stats = admin_reply_decoder.decode(await asyncio.wait_for(ws.recv(), 10))
    await ws.close()
    return reply
