"""Load processes for the server benchmarks: plain ``websockets`` clients, each role in its own process.

Run as ``python bench/load.py ROLE``; the first line on stdin is the role's JSON spec. Every role
prints JSON lines on stdout: ``{"kind": "ready", ...}`` once it holds its connections (holding
roles only), then exactly one ``{"kind": "result", ...}``. A holding role reads commands on stdin:
``mark`` resets its counters (the start of a measured span), ``stop`` (or EOF) ends it. Every loop
is bounded in count and in time; nothing here asserts a figure.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import resource
import socket
import sys
import threading
import time
from collections import Counter
from datetime import datetime
from typing import Any

import msgspec
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import ServerConnection, serve

MAX_SAMPLES = 50_000  # latency samples kept per process (reservoir)


def emit(kind: str, **fields: Any) -> None:
    sys.stdout.write(json.dumps({"kind": kind, **fields}) + "\n")
    sys.stdout.flush()


def iso_us(t: float) -> str:
    """Wall-clock seconds as an ISO 8601 UTC timestamp with microseconds and ``Z``."""
    whole = int(t)
    micros = min(999_999, int((t - whole) * 1_000_000))
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{micros:06d}Z"


def raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


class Reservoir:
    """A uniform sample of at most ``size`` values (Algorithm R), so memory stays bounded."""

    def __init__(self, size: int = MAX_SAMPLES) -> None:
        self.size = size
        self.seen = 0
        self.values: list[float] = []
        self._rng = random.Random(1)

    def add(self, value: float) -> None:
        self.seen += 1
        if len(self.values) < self.size:
            self.values.append(value)
        else:
            j = self._rng.randrange(self.seen)
            if j < self.size:
                self.values[j] = value


class Control:
    """Commands from stdin (``mark``, ``stop``), read in a thread and handed to the loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.stop = asyncio.Event()
        self.marks: asyncio.Queue[float] = asyncio.Queue()
        self._loop = loop
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in sys.stdin:
            command = line.strip()
            if command == "stop":
                break
            if command == "mark":
                self._loop.call_soon_threadsafe(self.marks.put_nowait, time.time())
        self._loop.call_soon_threadsafe(self.stop.set)


class CountingConnection(ClientConnection):
    """Counts the bytes read from the socket: the wire size, after any compression."""

    wire_in = 0

    def data_received(self, data: bytes) -> None:
        self.wire_in += len(data)
        super().data_received(data)


def client_kwargs(token: str | None, *, compression: bool = True) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return {
        "additional_headers": headers,
        "compression": "deflate" if compression else None,
        "proxy": None,  # loopback only, whatever the environment says
        "max_size": 2**24,
        "open_timeout": 30,
        "close_timeout": 2,
    }


async def read_until(ws: ClientConnection, kind: str | None, within: float) -> dict[str, Any]:
    """Read messages until one of type ``kind`` (any message when ``kind`` is None)."""
    async with asyncio.timeout(within):
        for _ in range(1000):
            message = json.loads(await ws.recv())
            if kind is None or message.get("type") == kind:
                return message
    raise RuntimeError(f"no {kind!r} message within 1000 messages")


# ------------------------------------------------------------------ clients


class ClientStats:
    def __init__(self) -> None:
        self.frames = 0
        self.payload_bytes = 0
        self.events = 0
        self.per_event_bytes = 0
        self.batch_payload_bytes = 0
        self.types: Counter[str] = Counter()
        self.latency = Reservoir()
        self.since = time.time()


async def clients(spec: dict[str, Any]) -> None:
    """Open ``count`` connections, subscribe each, read until ``stop``; counters and latencies."""
    raise_nofile()
    loop = asyncio.get_running_loop()
    control = Control(loop)
    url: str = spec["url"]
    tokens: list[str | None] = spec.get("tokens") or [None]
    count: int = spec["count"]
    subscribe = spec.get("subscribe", True)
    until = spec.get("until", "snapshot")
    measure = spec.get("measure", False)
    per_event = spec.get("per_event", False)
    read_delay = float(spec.get("read_delay_s", 0.0))
    rcvbuf = spec.get("rcvbuf")
    compression = spec.get("compression", True)
    deltas = bool(spec.get("deltas", False))
    hold_s = float(spec.get("hold_s", 120.0))
    ping_interval = spec.get("ping_interval")
    stats = ClientStats()
    errors: Counter[str] = Counter()
    handshakes: list[float] = []
    connections: list[CountingConnection] = []
    readers: list[asyncio.Task[None]] = []
    ts_cache: dict[str, float] = {}
    gate = asyncio.Semaphore(int(spec.get("concurrency", 50)))
    host, port = url.split("//", 1)[1].split("/", 1)[0].rsplit(":", 1)

    def stamp(ts: str) -> float:
        value = ts_cache.get(ts)
        if value is None:
            if len(ts_cache) > 100_000:
                ts_cache.clear()
            value = ts_cache[ts] = datetime.fromisoformat(ts).timestamp()
        return value

    async def read(ws: CountingConnection) -> None:
        try:
            for _ in range(10_000_000):
                raw = await ws.recv()
                now = time.time()
                stats.frames += 1
                stats.payload_bytes += len(raw)
                if measure or per_event:
                    message = msgspec.json.decode(raw)
                    kind = message.get("type", "?")
                    stats.types[kind] += 1
                    if kind == "batch":
                        events = message["events"]
                        stats.events += len(events)
                        if measure:
                            for event in events:
                                stats.latency.add((now - stamp(event["ts"])) * 1000)
                        if per_event:
                            stats.batch_payload_bytes += len(raw)
                            stats.per_event_bytes += sum(
                                len(json.dumps(event, separators=(",", ":"))) for event in events
                            )
                if read_delay:
                    await asyncio.sleep(read_delay)
        except Exception as exc:  # a closed connection ends its reader
            errors[f"reader: {type(exc).__name__}"] += 1

    async def open_one(i: int) -> None:
        async with gate:
            started = time.perf_counter()
            try:
                sock = None
                if rcvbuf:
                    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, int(rcvbuf))
                    sock.setblocking(False)
                    await loop.sock_connect(sock, (host, int(port)))
                ws = await connect(
                    url,
                    **client_kwargs(tokens[i % len(tokens)], compression=compression),
                    create_connection=CountingConnection,
                    ping_interval=ping_interval,
                    ping_timeout=None if ping_interval is None else 20,
                    **({"sock": sock} if sock is not None else {}),
                )
                if subscribe:
                    # Field deltas when the spec asks (docs/protocol.md): the frames carry what changed.
                    await ws.send(json.dumps({"type": "subscribe", "id": 1, "deltas": deltas}))
                    await read_until(ws, until, 30)
                handshakes.append(time.perf_counter() - started)
                connections.append(ws)
                readers.append(asyncio.create_task(read(ws)))
            except Exception as exc:
                errors[f"{type(exc).__name__}: {str(exc)[:80]}"] += 1

    ramp_started = time.perf_counter()
    async with asyncio.timeout(float(spec.get("ramp_timeout_s", 300))):
        await asyncio.gather(*(open_one(i) for i in range(count)))
    ramp_s = time.perf_counter() - ramp_started
    emit(
        "ready",
        connected=len(connections),
        failed=count - len(connections),
        ramp_s=round(ramp_s, 3),
        errors=dict(errors.most_common(5)),
    )
    stats = ClientStats()  # what the handshakes and snapshots cost is not part of the measured span
    deadline = loop.time() + hold_s
    while not control.stop.is_set() and loop.time() < deadline:
        mark = asyncio.ensure_future(control.marks.get())
        stop = asyncio.ensure_future(control.stop.wait())
        await asyncio.wait({mark, stop}, timeout=deadline - loop.time(), return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        if mark.done():
            stats = ClientStats()
            stats.since = mark.result()
        else:
            mark.cancel()
    elapsed = time.time() - stats.since
    emit(
        "result",
        connected=len(connections),
        failed=count - len(connections),
        ramp_s=round(ramp_s, 3),
        handshake_ms=[round(h * 1000, 3) for h in handshakes[:2000]],
        still_open=sum(1 for ws in connections if ws.state.name == "OPEN"),
        elapsed_s=round(elapsed, 3),
        frames=stats.frames,
        payload_bytes=stats.payload_bytes,
        wire_bytes=sum(ws.wire_in for ws in connections),
        events=stats.events,
        types=dict(stats.types),
        per_event_bytes=stats.per_event_bytes,
        batch_payload_bytes=stats.batch_payload_bytes,
        latency_ms=[round(v, 3) for v in stats.latency.values],
        latency_seen=stats.latency.seen,
        errors=dict(errors.most_common(5)),
    )
    sys.stdout.flush()
    os._exit(0)  # drop thousands of sockets at once; the server sees them go


# ------------------------------------------------------------------ fill latency


def fill_message(n: int, user_id: str, fill_id: str, symbol: str, position_qty: int) -> dict[str, Any]:
    now = iso_us(time.time())
    return {
        "type": "publish",
        "id": n,
        "user_id": user_id,
        "events": [
            {
                "type": "fill",
                "ts": now,
                "data": {
                    "id": fill_id,
                    "order_id": f"o-{fill_id}",
                    "symbol": symbol,
                    "side": "buy",
                    "qty": "1",
                    "price": "100.00",
                    "position_qty": str(position_qty),
                    "timestamp": now,
                },
            }
        ],
    }


async def fill_latency(spec: dict[str, Any]) -> None:
    """One subscriber and one publisher: isolated fills, publish-send → decoded batch with the fill."""
    base: str = spec["base"]
    user_id: str = spec["user_id"]
    samples: int = spec["samples"]
    gap_s = float(spec.get("gap_s", 0.3))
    timeout_s = float(spec.get("timeout_s", 5.0))
    pending: dict[str, asyncio.Future[float]] = {}
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    acks = 0

    async with (
        connect(f"{base}/ws/portfolio", **client_kwargs(spec["user_token"])) as sub,
        connect(f"{base}/ws/ingest", **client_kwargs(spec["service_token"])) as pub,
    ):
        await sub.send(json.dumps({"type": "subscribe", "id": 1}))
        await read_until(sub, "snapshot", 30)

        async def read_sub() -> None:
            for _ in range(10_000_000):
                message = json.loads(await sub.recv())
                received = time.perf_counter()
                for event in message.get("events", ()):
                    if event["type"] == "fill":
                        future = pending.pop(event["data"]["id"], None)
                        if future is not None and not future.done():
                            future.set_result(received)

        async def read_pub() -> None:
            nonlocal acks
            for _ in range(10_000_000):
                message = json.loads(await pub.recv())
                if message.get("type") == "ack":
                    acks += 1
                else:
                    errors[f"ingest {message.get('code', message.get('type'))}"] += 1

        tasks = [asyncio.create_task(read_sub()), asyncio.create_task(read_pub())]
        run = f"{user_id}-{os.getpid()}"
        for i in range(samples):
            fill_id = f"f-{run}-{i}"
            future: asyncio.Future[float] = asyncio.get_running_loop().create_future()
            pending[fill_id] = future
            payload = json.dumps(fill_message(i + 1, user_id, fill_id, spec.get("symbol", "AAPL"), i + 1))
            sent = time.perf_counter()
            await pub.send(payload)
            try:
                received = await asyncio.wait_for(future, timeout_s)
                latencies.append((received - sent) * 1000)
            except TimeoutError:
                errors["timeout"] += 1
            await asyncio.sleep(gap_s)
        for task in tasks:
            task.cancel()
    emit("result", latency_ms=latencies, acks=acks, errors=dict(errors))


# ------------------------------------------------------------------ echo baseline


async def echo_server(spec: dict[str, Any]) -> None:
    """A bare websockets server that echoes: the loopback baseline, and S3's idle-connection baseline."""
    raise_nofile()
    control = Control(asyncio.get_running_loop())
    open_connections = 0

    async def handler(ws: ServerConnection) -> None:
        nonlocal open_connections
        open_connections += 1
        try:
            async for message in ws:
                await ws.send(message)
        finally:
            open_connections -= 1

    async with serve(handler, "127.0.0.1", 0, max_size=2**16) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        emit("ready", port=port, pid=os.getpid())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(control.stop.wait(), float(spec.get("hold_s", 900)))
        emit("result", open_connections=open_connections)
    sys.stdout.flush()
    os._exit(0)


async def echo_client(spec: dict[str, Any]) -> None:
    """Round trips of a fill-sized JSON message through the echo server, decoded each time."""
    latencies: list[float] = []
    async with connect(spec["url"], **client_kwargs(None)) as ws:
        for i in range(int(spec["samples"])):
            payload = json.dumps(fill_message(i + 1, "echo", f"f-{i}", "AAPL", i + 1))
            sent = time.perf_counter()
            await ws.send(payload)
            async with asyncio.timeout(5):
                json.loads(await ws.recv())
            latencies.append((time.perf_counter() - sent) * 1000)
            await asyncio.sleep(float(spec.get("gap_s", 0.002)))
    emit("result", latency_ms=latencies)


# ------------------------------------------------------------------ ingest load


class Acks:
    """Replies on the ingest connections; ``done`` is set once ``target`` replies arrived."""

    def __init__(self) -> None:
        self.acks = 0
        self.errors: Counter[str] = Counter()
        self.target = 10**12
        self.done = asyncio.Event()

    def expect(self, target: int) -> None:
        self.target = target
        self._check()

    def _check(self) -> None:
        if self.acks + sum(self.errors.values()) >= self.target:
            self.done.set()

    def reply(self, message: dict[str, Any]) -> None:
        if message.get("type") == "ack":
            self.acks += 1
        else:
            code = message.get("code", message.get("type"))
            self.errors[f"ingest {code}: {str(message.get('message', ''))[:60]}"] += 1
        self._check()

    async def wait(self, target: int, within: float) -> None:
        self.expect(target)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.done.wait(), within)


async def ingest_connections(
    spec: dict[str, Any],
) -> tuple[list[ClientConnection], list[asyncio.Task[None]], Acks]:
    base: str = spec["base"]
    connections = [
        await connect(f"{base}/ws/ingest", **client_kwargs(token)) for token in spec["service_tokens"]
    ]
    acks = Acks()

    async def read(ws: ClientConnection) -> None:
        for _ in range(10_000_000):
            acks.reply(json.loads(await ws.recv()))

    return connections, [asyncio.create_task(read(ws)) for ws in connections], acks


async def publish_setup(spec: dict[str, Any]) -> None:
    """One buy fill per held symbol per user, spread over the service connections, all acked."""
    connections, readers, acks = await ingest_connections(spec)
    holdings: dict[str, list[str]] = spec["holdings"]
    rate = float(spec.get("rate_per_connection", 80))
    started = time.perf_counter()
    sent = 0
    ts = iso_us(time.time())

    async def publish(k: int, users: list[str]) -> None:
        nonlocal sent
        ws = connections[k]
        for n, user in enumerate(users):
            events = [
                {
                    "type": "fill",
                    "ts": ts,
                    "data": {
                        "id": f"setup-{user}-{symbol}",
                        "order_id": f"setup-o-{user}-{symbol}",
                        "symbol": symbol,
                        "side": "buy",
                        "qty": "10",
                        "price": "100.00",
                        "position_qty": "10",
                        "timestamp": ts,
                    },
                }
                for symbol in holdings[user]
            ]
            await ws.send(json.dumps({"type": "publish", "id": n + 1, "user_id": user, "events": events}))
            sent += 1
            await asyncio.sleep(1 / rate)

    users = sorted(holdings)
    k = len(connections)
    await asyncio.gather(*(publish(i, users[i::k]) for i in range(k)))
    await acks.wait(sent, 30)
    for task in readers:
        task.cancel()
    for ws in connections:
        await ws.close()
    emit(
        "result", sent=sent, acks=acks.acks, errors=dict(acks.errors), elapsed_s=time.perf_counter() - started
    )


async def ticks(spec: dict[str, Any]) -> None:
    """Price ticks at a fixed rate for a fixed time; each tick's ts is its send time (microseconds)."""
    connections, readers, acks = await ingest_connections(spec)
    symbols: list[str] = spec["symbols"]
    rate = float(spec["rate"])
    duration = float(spec["duration_s"])
    hz = float(spec.get("messages_per_s", 50))
    per_message = max(1, round(rate / hz))
    total_messages = int(duration * hz)
    rng = random.Random(7)
    prices = dict.fromkeys(symbols, 100.0)
    cursor = late = sent_ticks = 0
    started = time.perf_counter()
    for k in range(total_messages):
        due = started + k / hz
        now = time.perf_counter()
        if now < due:
            await asyncio.sleep(due - now)
        elif now - due > 1 / hz:
            late += 1
        if time.perf_counter() - started > duration + 10:
            break
        batch = []
        ts = iso_us(time.time())
        for _ in range(per_message):
            symbol = symbols[cursor % len(symbols)]
            cursor += 1
            prices[symbol] = max(1.0, prices[symbol] * (1 + rng.gauss(0, 0.001)))
            batch.append({"symbol": symbol, "price": f"{prices[symbol]:.2f}", "ts": ts})
        await connections[k % len(connections)].send(
            json.dumps({"type": "prices", "id": k + 1, "prices": batch})
        )
        sent_ticks += len(batch)
    sent_s = time.perf_counter() - started
    await acks.wait(total_messages, 15)
    for task in readers:
        task.cancel()
    with contextlib.suppress(Exception):
        async with asyncio.timeout(5):
            await asyncio.gather(*(ws.close() for ws in connections))
    emit(
        "result",
        messages=total_messages,
        ticks=sent_ticks,
        sent_s=round(sent_s, 3),
        acked_s=round(time.perf_counter() - started, 3),
        acks=acks.acks,
        late_messages=late,
        errors=dict(acks.errors),
    )
    sys.stdout.flush()
    os._exit(0)


ROLES = {
    "clients": clients,
    "fill_latency": fill_latency,
    "echo_server": echo_server,
    "echo_client": echo_client,
    "publish_setup": publish_setup,
    "ticks": ticks,
}


def main() -> None:
    role = ROLES[sys.argv[1]]
    spec = json.loads(sys.stdin.readline())
    asyncio.run(role(spec))


if __name__ == "__main__":
    main()
