"""Plain websockets clients speaking the protocol, for integration tests."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from typing import Any

import msgspec
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from alphaflow_live.protocol import (
    Ack,
    Batch,
    Error,
    Event,
    FillEvent,
    Prices,
    PriceTick,
    Publish,
    Snapshot,
    encode,
    ingest_reply_decoder,
    server_message_decoder,
)
from alphaflow_live.state import BatchOutcome, PortfolioState

TIMEOUT = 10.0

# Every connection a test opens, so that teardown closes what a failing test left open.
_open_connections: set[ClientConnection] = set()


async def close_all() -> None:
    connections = list(_open_connections)
    _open_connections.clear()
    await asyncio.gather(*(_close_or_abort(ws) for ws in connections))


async def _close_or_abort(ws: ClientConnection) -> None:
    # A test that stopped reading leaves the server's close frame stuck behind data.
    try:
        await asyncio.wait_for(ws.close(), 2)
    except Exception:
        ws.transport.abort()


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def open_ws(base: str, path: str, token: str | None, **kwargs: Any) -> ClientConnection:
    headers = auth(token) if token else {}
    headers.update(kwargs.pop("additional_headers", {}))
    kwargs.setdefault("max_size", 64 * 2**20)  # snapshots of big portfolios run to megabytes
    ws = await connect(base + path, additional_headers=headers, open_timeout=TIMEOUT, **kwargs)
    _open_connections.add(ws)
    return ws


async def handshake(
    base: str, path: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, Any]]:
    """The HTTP status of a handshake (101 when accepted, then closed) and the refusal's JSON body."""
    try:
        ws = await connect(base + path, additional_headers=headers or {}, open_timeout=TIMEOUT)
    except InvalidStatus as exc:
        return exc.response.status_code, json.loads(bytes(exc.response.body or b"{}"))
    await ws.close()
    return 101, {}


async def refusal(base: str, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    """The HTTP status and JSON body of a handshake the server must refuse."""
    status, body = await handshake(base, path, headers)
    assert status != 101, f"expected {path} to be refused, but the handshake succeeded"
    return status, body


async def recv(ws: ClientConnection, timeout: float = TIMEOUT) -> Any:
    frame = await asyncio.wait_for(ws.recv(), timeout)
    return server_message_decoder.decode(frame)


async def recv_until(ws: ClientConnection, predicate: Callable[[Any], bool], timeout: float = TIMEOUT) -> Any:
    async with asyncio.timeout(timeout):
        while True:
            message = await recv(ws, timeout)
            if predicate(message):
                return message


async def send(ws: ClientConnection, payload: dict[str, Any] | msgspec.Struct) -> None:
    data = encode(payload) if isinstance(payload, msgspec.Struct) else json.dumps(payload).encode()
    await ws.send(data, text=True)


class StreamClient:
    """A portfolio stream that applies what it receives to a PortfolioState and checks contiguity."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.state = PortfolioState(max_fills=100_000)
        self.welcome: Any = None
        self.batches: list[Batch] = []
        self.snapshots: list[Snapshot] = []
        self.errors: list[Error] = []
        self.fill_ids: list[str] = []

    @classmethod
    async def connect(cls, base: str, token: str, **kwargs: Any) -> StreamClient:
        client = cls(await open_ws(base, "/ws/portfolio", token, **kwargs))
        client.welcome = await recv(client.ws)
        return client

    async def subscribe(
        self, channels: Sequence[str] | None = None, resume: dict[str, Any] | None = None, id: int = 1
    ) -> Any:
        message: dict[str, Any] = {"type": "subscribe", "id": id}
        if channels is not None:
            message["channels"] = list(channels)
        if resume is not None:
            message["resume"] = resume
        await send(self.ws, message)
        reply = await recv_until(
            self.ws, lambda m: getattr(m, "channels", None) is not None or isinstance(m, Error)
        )
        if isinstance(reply, Error):  # refused outright (an invalid channel): nothing follows
            self.errors.append(reply)
            return reply
        # The snapshot (after resume_unavailable, when the resume point could not be served) or the
        # recovered batch that follows.
        while isinstance(await self.pump_one(), Error):
            pass
        return reply

    def apply(self, message: Any) -> None:
        if isinstance(message, Snapshot):
            self.snapshots.append(message)
            self.state.apply_snapshot(message)
        elif isinstance(message, Batch):
            self.batches.append(message)
            outcome = self.state.apply_batch(message)
            assert outcome is BatchOutcome.APPLIED, (
                f"batch {message.from_seq}..{message.to_seq} did not apply at seq {self.state.seq}: {outcome}"
            )
            self.fill_ids += [e.data.id for e in message.events if isinstance(e, FillEvent)]
        elif isinstance(message, Error):
            self.errors.append(message)

    async def pump_one(self, timeout: float = TIMEOUT) -> Any:
        message = await recv(self.ws, timeout)
        self.apply(message)
        return message

    async def pump_until_seq(self, seq: int, timeout: float = TIMEOUT) -> None:
        async with asyncio.timeout(timeout):
            while self.state.seq is None or self.state.seq < seq:
                await self.pump_one(timeout)

    async def close(self) -> None:
        await self.ws.close()


class Publisher:
    """A service on /ws/ingest."""

    # Under the server's 100 messages a second, as a well-behaved service stays.
    MAX_RATE = 80.0

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self._next_id = 0
        self._next_send_at = 0.0

    @classmethod
    async def connect(cls, base: str, token: str) -> Publisher:
        return cls(await open_ws(base, "/ws/ingest", token))

    async def request(self, payload: dict[str, Any] | msgspec.Struct) -> Ack | Error:
        loop = asyncio.get_running_loop()
        await asyncio.sleep(max(0.0, self._next_send_at - loop.time()))  # pacing, not waiting on a condition
        self._next_send_at = loop.time() + 1 / self.MAX_RATE
        await send(self.ws, payload)
        reply: Ack | Error = ingest_reply_decoder.decode(await asyncio.wait_for(self.ws.recv(), TIMEOUT))
        return reply

    async def publish(self, user_id: str, events: Sequence[Event]) -> list[int]:
        self._next_id += 1
        reply = await self.request(Publish(id=self._next_id, user_id=user_id, events=list(events)))
        assert isinstance(reply, Ack), f"publish refused: {reply}"
        assert isinstance(reply.seqs, list)
        return reply.seqs

    async def prices(self, ticks: Sequence[PriceTick]) -> Ack | Error:
        self._next_id += 1
        return await self.request(Prices(id=self._next_id, prices=list(ticks)))

    async def close(self) -> None:
        await self.ws.close()


def http_get(
    url: str, token: str | None = None, timeout: float = TIMEOUT
) -> tuple[int, bytes, dict[str, str]]:
    request = urllib.request.Request(url, headers=auth(token) if token else {})  # noqa: S310 - loopback only
    try:
        with urllib.request.urlopen(request, timeout=timeout) as reply:  # noqa: S310
            return reply.status, reply.read(), dict(reply.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), dict(exc.headers)


async def rest_snapshot(http_base: str, token: str) -> Snapshot:
    status, body, _ = await asyncio.to_thread(http_get, f"{http_base}/api/portfolio/snapshot", token)
    assert status == 200, f"snapshot: HTTP {status} {body!r}"
    return msgspec.json.decode(body, type=Snapshot)


def state_of(snapshot: Snapshot) -> PortfolioState:
    state = PortfolioState(max_fills=100_000)
    state.apply_snapshot(snapshot)
    return state


def same_portfolio(a: PortfolioState, b: PortfolioState) -> bool:
    return (a.positions, a.orders, a.account) == (b.positions, b.orders, b.account)


def exact_portfolio(state: PortfolioState) -> tuple[bytes, bytes, bytes]:
    """Positions, orders and account as the wire spells them: 1.0 and 1.00 differ here, where
    ``same_portfolio`` compares decimals by value."""
    return (
        encode(sorted(state.positions.values(), key=lambda p: p.symbol)),
        encode(sorted(state.orders.values(), key=lambda o: o.id)),
        encode(state.account),
    )


async def health(http_base: str) -> dict[str, Any]:
    """``/healthz``'s JSON body (its status line too: HTTP 503 is a valid answer when offline)."""
    status, body, _ = await asyncio.to_thread(http_get, f"{http_base}/healthz")
    assert status in (200, 503), f"healthz: HTTP {status} {body!r}"
    result: dict[str, Any] = json.loads(body)
    return result


async def history(base: str, token: str, epoch: str, through_seq: int) -> StreamClient:
    """A stream resumed from seq 0 up to ``through_seq``: every event the user's journal holds, in order.

    Its ``fill_ids`` list every fill event the stream carried (a fill applied twice shows twice).
    """
    client = await StreamClient.connect(base, token)
    client.state.epoch, client.state.seq = epoch, 0
    reply = await client.subscribe(resume={"epoch": epoch, "seq": 0})
    assert reply.recovered is True, (
        f"the journal no longer holds every event since seq 0 (epoch {epoch}): {reply}; "
        "keep the test's history under the server's retention"
    )
    await client.pump_until_seq(through_seq)
    return client


def without_server_time(snapshot: Snapshot) -> Snapshot:
    """The snapshot with its ``server_time`` blanked: two snapshots of one state then compare equal."""
    return msgspec.structs.replace(snapshot, server_time="")
