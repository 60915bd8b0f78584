"""A publisher that keeps several publishes in flight and reads every reply while it sends.

For fault tests. It never waits on one ack before the next publish, so a
server killed mid-stream leaves some publishes answered and some not, and
each publish's ``Outcome`` says which: ``Acked``, ``Refused`` (an ``error``) or
``Lost`` (the connection went before the reply). Replies are read as plain
JSON in the contract's words (``ack``, ``seqs``, ``duplicates``, ``error``,
``code``), so a test sees what went over the wire even where the shared
schema does not (yet) spell a field out.

A connection's replies come in the order of its requests, so each reply
settles the oldest publish in flight; one that names another id (an ack's
``id``, an error's ``ref``) or none is recorded in ``violations``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from alphaflow_live.protocol import Event, Publish, encode

from .client import open_ws


@dataclass(frozen=True)
class Acked:
    seqs: list[int]
    # Fill ids the server had applied already (the contract's ``duplicates``; absent means none).
    duplicates: list[str]


@dataclass(frozen=True)
class Refused:
    code: str
    message: str


@dataclass(frozen=True)
class Lost:
    reason: str


Outcome = Acked | Refused | Lost


def outcome_of(reply: Any) -> Outcome | None:
    """An ingest reply as an Outcome; None for anything but an ack or an error."""
    if not isinstance(reply, dict):
        return None
    if reply.get("type") == "ack":
        return Acked(seqs=list(reply.get("seqs", [])), duplicates=list(reply.get("duplicates", [])))
    if reply.get("type") == "error":
        return Refused(code=str(reply.get("code")), message=str(reply.get("message")))
    return None


def _answers(reply: Any) -> Any:
    """The id of the request a reply answers: an ack's ``id``, an error's ``ref``."""
    if not isinstance(reply, dict):
        return None
    return reply.get("ref") if reply.get("type") == "error" else reply.get("id")


@dataclass
class PipelinedPublisher:
    """One /ws/ingest connection with up to ``window`` publishes in flight, paced at ``rate``."""

    ws: ClientConnection
    # Under the server's inbound limit for a connection (100 a second unless configured).
    rate: float = 80.0
    window: int = 16
    _next_id: int = 0
    _next_send_at: float = 0.0
    # In the order sent: the oldest is the one the next reply answers.
    _pending: dict[int, asyncio.Future[Outcome]] = field(default_factory=dict)
    _slots: asyncio.Semaphore = field(init=False)
    _reader: asyncio.Task[None] = field(init=False)
    _closed: str | None = None
    # Replies that broke the contract: answering nothing in flight, or not naming the publish's id.
    violations: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._slots = asyncio.Semaphore(self.window)
        self._reader = asyncio.create_task(self._read(), name="pipelined-publisher-reader")

    @classmethod
    async def connect(cls, base: str, token: str, **kwargs: Any) -> PipelinedPublisher:
        return cls(await open_ws(base, "/ws/ingest", token), **kwargs)

    @property
    def lost(self) -> bool:
        """Whether the connection is gone (every later publish is ``Lost`` at once)."""
        return self._closed is not None

    async def submit(self, user_id: str, events: Sequence[Event]) -> asyncio.Future[Outcome]:
        """Send one publish once a slot is free and its turn has come; its outcome follows."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[Outcome] = loop.create_future()
        await self._slots.acquire()
        done.add_done_callback(lambda _: self._slots.release())
        if self._closed is not None:
            done.set_result(Lost(self._closed))
            return done
        await asyncio.sleep(max(0.0, self._next_send_at - loop.time()))  # pacing, not waiting on a condition
        self._next_send_at = max(self._next_send_at, loop.time()) + 1 / self.rate
        self._next_id += 1
        message_id = self._next_id
        self._pending[message_id] = done
        try:
            frame = encode(Publish(id=message_id, user_id=user_id, events=list(events)))
            await self.ws.send(frame, text=True)
        except ConnectionClosed as exc:
            self._lose(f"send failed: {exc}")
        return done

    async def request(self, user_id: str, events: Sequence[Event], timeout: float = 10.0) -> Outcome:
        """One publish and its outcome."""
        return await asyncio.wait_for(await self.submit(user_id, events), timeout)

    async def drain(self, timeout: float) -> None:
        """Until every publish in flight has its outcome."""
        pending = list(self._pending.values())
        if pending:
            await asyncio.wait_for(asyncio.gather(*pending), timeout)

    async def _read(self) -> None:
        try:
            async for frame in self.ws:
                try:
                    reply = json.loads(frame)
                except ValueError:
                    reply = frame
                if not self._pending:
                    self.violations.append(f"a reply to no publish in flight: {reply!r}")
                    continue
                oldest = next(iter(self._pending))
                if (named := _answers(reply)) != oldest:
                    self.violations.append(f"the reply to publish {oldest} names {named!r}: {reply!r}")
                outcome = outcome_of(reply)
                if outcome is None:
                    self.violations.append(f"an ingest reply is an ack or an error, got {reply!r}")
                    outcome = Refused(code="<no reply>", message=repr(reply))
                done = self._pending.pop(oldest)
                if not done.done():
                    done.set_result(outcome)
            self._lose(f"closed by the server with {self.ws.close_code}")
        except ConnectionClosed as exc:
            self._lose(f"connection lost: {exc}")

    def _lose(self, reason: str) -> None:
        self._closed = self._closed or reason
        pending, self._pending = self._pending, {}
        for done in pending.values():
            if not done.done():
                done.set_result(Lost(self._closed))

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.ws.close(), 2)
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader
        self._lose("closed by the test")
