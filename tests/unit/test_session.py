"""PortfolioSession's shell: a sender task only while frames go out, over a socket stand-in."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from websockets.exceptions import ConnectionClosedOK
from websockets.protocol import State

from alphaflow_server.bus import EventBus, JournalOptions
from alphaflow_server.config import ServerConfig
from alphaflow_server.session import PortfolioSession
from alphaflow_server.stats import ServerStats

from .factories import position

USER = "alice"


class FakeProtocol:
    """The sans-I/O protocol's part the session writes through: frames written at once."""

    state = State.OPEN

    def __init__(self, socket: FakeSocket) -> None:
        self._socket = socket
        self.extensions: list[object] = []  # no permessage-deflate negotiated

    def send_text(self, frame: bytes) -> None:
        self._socket.record(frame)

    def data_to_send(self) -> list[bytes]:
        return []


class FakeTransport:
    """A transport whose kernel buffer always took everything: frames may be written at once."""

    def get_write_buffer_size(self) -> int:
        return 0


class FakeSocket:
    """What the session uses of a ServerConnection: recv from a queue; what it sends (through
    ``send``, or written at once through ``protocol``) into a list."""

    def __init__(self) -> None:
        self.inbound: asyncio.Queue[str | None] = asyncio.Queue()
        self.sent: list[dict[str, Any]] = []
        self.delivered = asyncio.Event()
        self.protocol = FakeProtocol(self)
        self.transport = FakeTransport()

    def record(self, frame: bytes) -> None:
        self.sent.append(json.loads(frame))
        self.delivered.set()

    async def recv(self) -> str:
        frame = await self.inbound.get()
        if frame is None:
            raise ConnectionClosedOK(None, None)
        return frame

    async def send(self, frame: bytes, *, text: bool) -> None:
        await asyncio.sleep(0)  # a send that yields, as a socket's does
        self.record(frame)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        await self.inbound.put(None)

    async def wait_for(self, kind: str, timeout: float = 2.0) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            while True:
                for message in self.sent:
                    if message["type"] == kind:
                        return message
                self.delivered.clear()
                await self.delivered.wait()


def sender_tasks() -> list[str]:
    return [t.get_name() for t in asyncio.all_tasks() if t.get_name().startswith("send-")]


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_a_subscribed_idle_session_runs_no_sender_task_until_a_batch_is_due() -> None:
    bus = EventBus(new_epoch=lambda: "e-1", journal=JournalOptions(retain_events=100, retain_seconds=0.0))
    ws = FakeSocket()
    config = ServerConfig(batch_window_ms=0)
    session = PortfolioSession(
        ws,  # type: ignore[arg-type]
        user_id=USER,
        connection_id="c-1",
        bus=bus,
        config=config,
        stats=ServerStats(started_at=0.0),
    )
    run = asyncio.create_task(session.run())
    await ws.inbound.put(json.dumps({"type": "subscribe", "id": 1}))
    await ws.wait_for("snapshot")
    await settle()

    assert sender_tasks() == [], f"expected no sender task once idle, got {sender_tasks()}"

    bus.publish(USER, [position("AAPL", "10")], asyncio.get_running_loop().time())
    batch = await ws.wait_for("batch")
    await settle()

    assert [e["data"]["symbol"] for e in batch["events"]] == ["AAPL"]
    assert [m["type"] for m in ws.sent] == ["welcome", "subscribed", "snapshot", "batch"]
    assert sender_tasks() == [], f"expected the sender task to end with the outbox, got {sender_tasks()}"
    await ws.inbound.put(None)
    await asyncio.wait_for(run, 2.0)
