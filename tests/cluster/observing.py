"""Looking at a cluster the way its users do: kernel clients, the journal, welcomes, closes.

``LiveClient`` is an ``alphaflow_live`` stream (the kernel client itself,
with its shuffled URLs and resume) that also records every fill the stream
hands to its ``fill`` callbacks, so a fill delivered twice shows twice even
though ``PortfolioState`` would keep it once. ``journal`` reads the user's
whole history back from seq 0 on one node: contiguous or it fails, and its
fill ids list every fill event Redis holds. ``held`` copies what a client
holds, for comparing it with a snapshot.
"""

from __future__ import annotations

import asyncio
import collections
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidStatus

import alphaflow_live as afl
from alphaflow_live.codes import PORTFOLIO_PATH
from alphaflow_live.protocol import Fill, Snapshot
from alphaflow_live.state import PortfolioState
from tests.support.client import StreamClient, history, open_ws, state_of

# A kernel client that notices a drop and moves at once, as tests/integration/test_client_reconnects.py's.
FAST: dict[str, Any] = {
    "backoff_base_s": 0.05,
    "backoff_cap_s": 0.5,
    "poll_interval_s": 0.2,
    "connect_timeout_s": 5,
}


@dataclass
class LiveClient:
    stream: afl.PortfolioStream
    # Every fill handed to the stream's "fill" callbacks, in order (a stream thread appends).
    delivered: list[str] = field(default_factory=list)

    @classmethod
    def connect(cls, urls: list[str], token: str) -> LiveClient:
        stream = afl.connect(urls, token, start=False, **FAST)
        client = cls(stream)
        stream.on("fill", client._record)
        stream.start()
        return client

    def _record(self, fill: Fill) -> None:
        self.delivered.append(fill.id)

    async def until_live(self, timeout: float = 15.0) -> None:
        await self.stream.until(lambda live: live.status == "live", timeout=timeout)

    async def until_seq(self, seq: int, timeout: float = 15.0) -> None:
        await self.stream.until(lambda live: live.status == "live" and live.seq == seq, timeout=timeout)

    def held(self) -> Held:
        with self.stream.reading() as state:
            return Held.of(state)

    def close(self) -> None:
        self.stream.close()


@dataclass(frozen=True)
class Held:
    """A copy of what a PortfolioState holds, comparable with ``==``."""

    epoch: str | None
    seq: int | None
    positions: dict[str, Any]
    orders: dict[str, Any]
    account: Any
    fill_ids: list[str]

    @classmethod
    def of(cls, state: PortfolioState) -> Held:
        return cls(
            state.epoch,
            state.seq,
            dict(state.positions),
            dict(state.orders),
            state.account,
            [f.id for f in state.fills],
        )

    @classmethod
    def of_snapshot(cls, snapshot: Snapshot) -> Held:
        return cls.of(state_of(snapshot))


def exactly_once(seen: Iterable[str], acked: Iterable[str], where: str) -> list[str]:
    """What is wrong with ``seen`` as the fills of ``acked`` each exactly once (empty when right)."""
    counts = collections.Counter(seen)
    expected = set(acked)
    problems = []
    if repeated := sorted(i for i, n in counts.items() if n > 1):
        problems.append(f"{where}: fills seen more than once: {repeated}")
    if missing := sorted(expected - set(counts)):
        problems.append(f"{where}: acked fills missing: {missing}")
    if unknown := sorted(set(counts) - expected):
        problems.append(f"{where}: fills never acked: {unknown}")
    return problems


async def journal(base: str, token: str, epoch: str, through_seq: int) -> StreamClient:
    """The user's whole history on the node at ``base``, from seq 0 to ``through_seq`` (contiguous, or
    ``StreamClient`` fails); it ends exactly at ``through_seq``: nothing beyond the last ack."""
    client = await history(base, token, epoch, through_seq)
    assert client.state.seq == through_seq, (
        f"the journal goes on past seq {through_seq} to {client.state.seq}"
    )
    await client.close()
    return client


async def welcome(base: str, token: str) -> dict[str, Any]:
    """The first frame of a portfolio stream, as plain JSON (``node`` is a cluster's, beyond the Struct)."""
    ws = await open_ws(base, PORTFOLIO_PATH, token)
    try:
        frame = json.loads(await asyncio.wait_for(ws.recv(), 10))
    finally:
        await ws.close()
    assert isinstance(frame, dict) and frame.get("type") == "welcome", f"expected a welcome, got {frame}"
    return frame


async def closed_with(ws: ClientConnection, timeout: float = 10.0) -> tuple[int | None, str | None]:
    """Read until the server closes; its close code and reason."""
    try:
        async with asyncio.timeout(timeout):
            while True:
                await ws.recv()
    except ConnectionClosed as exc:
        return (exc.rcvd.code, exc.rcvd.reason) if exc.rcvd else (None, None)


async def admitted(base: str, token: str) -> StreamClient | None:
    """A portfolio stream on ``base`` if the handshake is accepted; None when refused with 429."""
    try:
        return await StreamClient.connect(base, token)
    except InvalidStatus as exc:
        if exc.response.status_code == 429:
            return None
        raise
