"""Reading a server's admin stats over REST, for assertions on what it did."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec

from .client import http_get


async def stats(http_base: str, admin_token: str) -> dict[str, Any]:
    status, body, _ = await asyncio.to_thread(http_get, f"{http_base}/api/admin/websocket-stats", admin_token)
    assert status == 200, f"stats: HTTP {status} {body!r}"
    result: dict[str, Any] = msgspec.json.decode(body)
    return result
