"""A blocking WebSocket client that paces what it sends: for request/reply fuzzing from a thread.

It runs outside any event loop (``websockets.sync``), so a hypothesis test
can drive it example by example; frames are read as plain JSON, whatever the
shared schema says, so that a fuzzer sees exactly what the server answered.
"""

from __future__ import annotations

import contextlib
import json
import time
from typing import Any

from websockets.sync.client import ClientConnection, connect

from .client import TIMEOUT, auth


class PacedSocket:
    def __init__(self, url: str, token: str, *, rate: float = 80.0) -> None:
        self.url = url
        self._token = token
        self._interval = 1 / rate
        self._next_send_at = 0.0
        self._scope = contextlib.ExitStack()
        self.ws = self._open()

    def _open(self) -> ClientConnection:
        # Entered as a context manager, as websockets wants (it closes the connection on the way out).
        return self._scope.enter_context(
            connect(self.url, additional_headers=auth(self._token), open_timeout=TIMEOUT, max_size=2**26)
        )

    def send(self, frame: str | bytes | dict[str, Any]) -> None:
        time.sleep(max(0.0, self._next_send_at - time.monotonic()))  # pacing, not waiting on a condition
        self._next_send_at = max(self._next_send_at, time.monotonic()) + self._interval
        if isinstance(frame, dict):
            frame = json.dumps(frame)
        self.ws.send(frame, text=isinstance(frame, str))

    def recv(self, timeout: float = TIMEOUT) -> Any:
        """The next frame as JSON (a frame that is not JSON fails the test: the server only sends JSON)."""
        frame = self.ws.recv(timeout=timeout)
        return json.loads(frame)

    def reopen(self) -> None:
        self.close()
        self.ws = self._open()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._scope.close()
