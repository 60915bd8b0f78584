"""Plain HTTP requests with any method and headers, as a browser's fetch would send them."""

from __future__ import annotations

import asyncio
import http.client
import json
from dataclasses import dataclass
from typing import Any

TIMEOUT = 10.0


@dataclass(frozen=True)
class Reply:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        values = self.all(name)
        return values[0] if values else None

    def all(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key.lower() == name.lower()]

    def json(self) -> Any:
        return json.loads(self.body)


def request_sync(port: int, method: str, path: str, headers: dict[str, str] | None = None) -> Reply:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    try:
        # http.client sends Content-Length: 0 for a POST without a body, as browsers do.
        connection.request(method, path, headers=headers or {})
        response = connection.getresponse()
        # A HEAD answer has no body to read.
        body = b"" if method == "HEAD" else response.read()
        return Reply(response.status, response.getheaders(), body)
    finally:
        connection.close()


async def request(port: int, method: str, path: str, headers: dict[str, str] | None = None) -> Reply:
    return await asyncio.to_thread(request_sync, port, method, path, headers)
