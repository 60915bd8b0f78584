"""S7 cluster: one node against a cluster of nodes over one Redis, side by side in one run.

Every server is the real ``alphaflow-live serve`` on 127.0.0.1 (harness.Server): the single node
with no state (the baseline of every figure), and cluster nodes ``a`` and ``b`` with ``--redis``
over one redis-server of their own (tests/support/redis.py: AOF, ``appendfsync always``, what the
docs recommend). Load runs in separate processes made of plain ``websockets`` clients: this file's
roles (``python bench/bench_cluster.py ROLE``, the spec on stdin, JSON lines out, as bench/load.py)
and load.py's ``publish_setup`` and ``ticks``. Every node runs ``--batch-window-ms 0`` (each event
goes out at once, so latency is the pipeline's, not the window's) and ``--mark-interval-ms 250``
(the default re-mark cadence, which a window of 0 would otherwise make "every tick").

What it measures (each figure beside a baseline from the same run: the single node's, or for
Redis's cost the owner's set-up and the event's own size):

* fill → client latency: a publisher on /ws/ingest sends fills at a steady rate, a raw
  portfolio client receives them; publish-send → the client decoded the frame with that fill
  (S1's measurement). Single node; then the cluster with publisher and client on the owner of
  the user's partition, both on the other node, and one on each (both ways round).
* CPU per 1,000 committed events at a fixed tick rate: users holding positions, a price feed
  at a fixed rate, no clients; each node's CPU seconds (psutil, else /proc) over the span and the
  events committed (the users' seqs: REST snapshots on the single node, ``afl:{user}:meta`` in
  Redis for the cluster). Single node, a 1-node cluster, then both nodes of a 2-node cluster
  (ticks sent half to each; users split by partition); and each process's CPU with no load.
* Redis cost per committed event: ``CONFIG RESETSTAT``, a fixed number of fill publishes, then
  ``INFO commandstats`` (scripts' inner calls included) and ``INFO stats`` bytes in and out; the
  idle cluster's background (leases, presence, users) measured alone and subtracted.
* resume: a client subscribes, goes away, N events are committed, it comes back with its resume
  point; subscribe → the last recovered batch (and connect → it, which includes the priming).
  Single node (local journal); a cluster node with no stream of the user (primed from Redis);
  one holding the stream (another connection of the user open: kept live by SSUBSCRIBE); the
  owner.

Run: ``.venv/bin/python bench/bench_cluster.py [--quick]`` (or ``bench/run.py --scenarios S7``).
Figures only: nothing asserts a time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import statistics
import sys
import time
import urllib.error
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
from bench_server import holdings, setup_positions
from harness import (
    BenchError,
    Load,
    Server,
    Users,
    percentiles,
    raise_nofile,
    row,
    run_loads,
    run_scenarios,
    table,
    write_users,
)
from load import client_kwargs, emit, fill_message, iso_us, read_until
from websockets.asyncio.client import ClientConnection, connect

if TYPE_CHECKING:
    from alphaflow_server.auth import Role
    from tests.support.redis import RedisServer

SCRIPT = Path(__file__).resolve()
ROOT = SCRIPT.parents[1]
NODE_FLAGS = ["--batch-window-ms", "0", "--mark-interval-ms", "250"]
SINGLE = "single node (no Redis)"


@dataclass(frozen=True)
class Params:
    quick: bool
    partitions: int
    lease_s: float
    # fill → client latency: fills per second, for this long, after a few not measured
    lat_rate: float
    lat_seconds: float
    lat_warmup: int
    # Redis cost: fill publishes (one fill each), at most this rate; the idle span measured alone
    cost_publishes: int
    cost_rate: float
    cost_idle_s: float
    # CPU: users holding per_user of symbols, ticks per second over them, for this long
    cpu_users: int
    cpu_symbols: int
    cpu_per_user: int
    cpu_rate: float
    cpu_seconds: float
    cpu_settle_s: float
    # resume: events missed, resumes timed per set-up (the median is shown)
    resume_events: int
    resume_repeats: int


QUICK = Params(
    quick=True,
    partitions=64,
    lease_s=5.0,
    lat_rate=50,
    lat_seconds=0.6,
    lat_warmup=3,
    cost_publishes=200,
    cost_rate=500,
    cost_idle_s=0.5,
    cpu_users=40,
    cpu_symbols=10,
    cpu_per_user=3,
    cpu_rate=100,
    cpu_seconds=1.0,
    cpu_settle_s=0.3,
    resume_events=2000,
    resume_repeats=3,
)
FULL = Params(
    quick=False,
    partitions=64,
    lease_s=5.0,
    lat_rate=50,
    lat_seconds=20.0,
    lat_warmup=10,
    cost_publishes=2000,
    cost_rate=500,
    cost_idle_s=5.0,
    cpu_users=200,
    cpu_symbols=20,
    cpu_per_user=5,
    cpu_rate=200,
    cpu_seconds=20.0,
    cpu_settle_s=2.0,
    resume_events=10_000,
    resume_repeats=5,
)


# ------------------------------------------------------------------ Redis, nodes, users


def redis_server(directory: Path) -> RedisServer:
    """A redis-server of its own: the tests' (tests/support/redis.py), so AOF with ``appendfsync
    always`` on a free port, killed with this process if it dies."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from tests.support.redis import RedisServer

    return RedisServer(directory)


def add_to_redis(url: str, users: Users, names: Iterable[str] | None = None) -> None:
    """Put users of ``users`` (every one by default) in Redis with their tokens, as ``users add
    --redis`` does (the same store), so one ``Users`` serves the single node's file and the cluster."""
    from alphaflow_server.cluster.connect import open_sync_client
    from alphaflow_server.cluster.users import RedisUserStore

    client = open_sync_client(url)
    try:
        store = RedisUserStore(client)
        for name in users.tokens if names is None else names:
            role: Role = "admin" if name == users.admin else "service" if name in users.services else "user"
            store.add(name, role, token=users.tokens[name])
    finally:
        client.close()


def node(users: Users, work: Path, redis_url: str, node_id: str, p: Params) -> Server:
    flags = [
        *NODE_FLAGS, "--redis", redis_url, "--node-id", node_id,
        "--partitions", str(p.partitions), "--lease-s", f"{p.lease_s:g}",
    ]  # fmt: skip
    return Server(users, work, flags, name=f"s7-node-{node_id}")


def health(server: Server) -> dict[str, Any] | None:
    try:
        body, _ = server.http_get("/healthz", server.users.token(server.users.admin), timeout=2)
    except (OSError, urllib.error.URLError):
        return None
    answer = json.loads(body)
    return answer if isinstance(answer, dict) else None


def wait_partitions(nodes: dict[str, Server], partitions: int, timeout: float) -> dict[str, set[int]]:
    """Every partition owned by exactly one node, the shares within one of each other; the claims."""
    deadline = time.monotonic() + timeout
    seen: dict[str, Any] = {}
    while time.monotonic() < deadline:
        claims: dict[str, set[int]] = {}
        for node_id, server in nodes.items():
            answer = health(server)
            seen[node_id] = answer
            if answer is None or not isinstance(answer.get("partitions"), list):
                break
            claims[node_id] = {int(x) for x in answer["partitions"]}
        else:
            owned = sorted(x for share in claims.values() for x in share)
            counts = [len(share) for share in claims.values()]
            if owned == list(range(partitions)) and max(counts) - min(counts) <= 1:
                return claims
        time.sleep(0.1)
    raise BenchError(f"the {partitions} partitions were not owned once each and balanced: {seen}")


def owner_map(claims: dict[str, set[int]]) -> dict[int, str]:
    return {x: node_id for node_id, share in claims.items() for x in share}


def users_of(names: Iterable[str], node_id: str, owners: dict[int, str], partitions: int) -> list[str]:
    from alphaflow_server.cluster.leases import partition_of

    return [n for n in names if owners[partition_of(n, partitions)] == node_id]


def pick_user(prefix: str, owned: set[int], partitions: int) -> str:
    """The first ``prefix-<k>`` whose partition is in ``owned``."""
    from alphaflow_server.cluster.leases import partition_of

    for k in itertools.count():
        name = f"{prefix}-{k}"
        if partition_of(name, partitions) in owned:
            return name
    raise AssertionError("unreachable")


def add_cluster_users(url: str, users: Users, names: Sequence[str], nodes: Sequence[Server]) -> None:
    """New users, in Redis, once every node accepts their tokens (nodes reload within 0.5 s)."""
    from alphaflow_server.auth import TokenStore

    store = TokenStore()
    for name in names:
        users.tokens[name] = store.add(name, "user")
        users.users.append(name)
    add_to_redis(url, users, names)
    deadline = time.monotonic() + 15
    for server in nodes:
        for name in names:
            while True:
                try:
                    server.http_get("/api/portfolio/snapshot", users.token(name))
                    break
                except urllib.error.HTTPError as exc:
                    if exc.code != 401 or time.monotonic() > deadline:
                        raise BenchError(f"{server.name} refused {name}'s token: HTTP {exc.code}") from None
                    time.sleep(0.1)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (psutil if installed, else /proc/<pid>/stat)."""
    try:
        import psutil  # type: ignore[import-untyped]
    except ImportError:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


# ------------------------------------------------------------------ latency


def latency_run(pub: Server, sub: Server, users: Users, user: str, p: Params, work: Path) -> dict[str, Any]:
    count = round(p.lat_rate * p.lat_seconds)
    [result] = run_loads(
        [
            (
                "fill_stream",
                {
                    "pub_base": pub.base,
                    "sub_base": sub.base,
                    "user_id": user,
                    "user_token": users.token(user),
                    "service_token": users.service_tokens(1)[0],
                    "rate": p.lat_rate,
                    "count": count,
                    "warmup": p.lat_warmup,
                    "window": 64,
                },
            )
        ],
        timeout=p.lat_seconds + 60,
        workdir=work,
        script=SCRIPT,
    )
    problems = {k: v for k, v in (("errors", result["errors"]), ("missing", result["missing"])) if v}
    if problems:
        print(f"  S7 latency {pub.name} → {sub.name} ({user}): {problems}", file=sys.stderr)
    return {**percentiles(result["latency_ms"]), "n": len(result["latency_ms"]), "result": result}


# ------------------------------------------------------------------ CPU


@dataclass
class CpuSpan:
    cpu: dict[str, float]  # CPU seconds over the span, per process name
    events: dict[str, int]  # events committed over the span, per node name (and "all")
    span_s: float
    ticks: int


def single_seqs(server: Server, users: Users, names: Sequence[str]) -> dict[str, int]:
    seqs = {}
    for name in names:
        body, _ = server.http_get("/api/portfolio/snapshot", users.token(name))
        seqs[name] = int(json.loads(body)["seq"])
    return seqs


def redis_seqs(redis: RedisServer, names: Sequence[str]) -> dict[str, int]:
    from alphaflow_server.cluster.keys import user_keys

    client = redis.sync_client()
    try:
        pipe = client.pipeline(transaction=False)
        for name in names:
            pipe.hget(user_keys(name).meta, "seq")
        return {name: int(raw or 0) for name, raw in zip(names, pipe.execute(), strict=True)}
    finally:
        client.close()


def cpu_span(
    nodes: dict[str, Server],
    processes: dict[str, int],
    users: Users,
    names: list[str],
    symbols: list[str],
    seqs: Callable[[], dict[str, int]],
    node_of: Callable[[str], str],
    p: Params,
    work: Path,
) -> CpuSpan:
    """Ticks at ``p.cpu_rate`` for ``p.cpu_seconds``, split over ``nodes``; CPU and events over it."""
    time.sleep(p.cpu_settle_s)  # what the set-up or a takeover left to do is done
    before_seqs = seqs()
    before = {name: cpu_seconds(pid) for name, pid in processes.items()}
    started = time.monotonic()
    services = users.service_tokens()
    jobs = [
        (
            "ticks",
            {
                "base": server.base,
                "service_tokens": services[2 * i : 2 * i + 2] or services[:2],
                "symbols": symbols,
                "rate": p.cpu_rate / len(nodes),
                "duration_s": p.cpu_seconds,
            },
        )
        for i, server in enumerate(nodes.values())
    ]
    sent = run_loads(jobs, timeout=p.cpu_seconds + 60, workdir=work)
    time.sleep(0.5)  # the re-marks the last ticks made due (250 ms apart) go out
    after = {name: cpu_seconds(pid) for name, pid in processes.items()}
    span_s = time.monotonic() - started
    after_seqs = seqs()
    events: Counter[str] = Counter()
    for name in names:
        moved = after_seqs[name] - before_seqs[name]
        events[node_of(name)] += moved
        events["all"] += moved
    errors = [s["errors"] for s in sent if s["errors"]]
    if errors:
        print(f"  S7 CPU ticks errors: {errors}", file=sys.stderr)
    return CpuSpan(
        cpu={name: after[name] - before[name] for name in processes},
        events=dict(events),
        span_s=span_s,
        ticks=sum(s["ticks"] for s in sent),
    )


def idle_cpu(processes: dict[str, int], seconds: float) -> dict[str, float]:
    """CPU seconds per second of each process over ``seconds`` with no load."""
    before = {name: cpu_seconds(pid) for name, pid in processes.items()}
    started = time.monotonic()
    time.sleep(seconds)
    after = {name: cpu_seconds(pid) for name, pid in processes.items()}
    span = time.monotonic() - started
    return {name: (after[name] - before[name]) / span for name in processes}


def per_thousand(cpu: float, events: int) -> float | None:
    return cpu / events * 1000 if events else None


# ------------------------------------------------------------------ Redis cost


@dataclass
class RedisStats:
    commands: int
    calls: dict[str, int]
    bytes_in: int
    bytes_out: int
    span_s: float

    def minus(self, idle: RedisStats) -> RedisStats:
        """These less the idle rate over this span (never below zero)."""
        k = self.span_s / idle.span_s if idle.span_s else 0.0
        return RedisStats(
            commands=max(0, round(self.commands - idle.commands * k)),
            calls={c: max(0, round(n - idle.calls.get(c, 0) * k)) for c, n in self.calls.items()},
            bytes_in=max(0, round(self.bytes_in - idle.bytes_in * k)),
            bytes_out=max(0, round(self.bytes_out - idle.bytes_out * k)),
            span_s=self.span_s,
        )


class RedisMeter:
    """``CONFIG RESETSTAT`` and what ``INFO`` counted since (its own INFO calls left out)."""

    def __init__(self, redis: RedisServer) -> None:
        self._client = redis.sync_client()
        self._reset_at = 0.0

    def reset(self) -> None:
        self._client.config_resetstat()
        self._reset_at = time.monotonic()

    def read(self) -> RedisStats:
        span_s = time.monotonic() - self._reset_at
        commands = self._client.info("commandstats")
        stats = self._client.info("stats")
        calls = {
            name.removeprefix("cmdstat_"): int(value["calls"])
            for name, value in commands.items()
            if name not in ("cmdstat_info", "cmdstat_config|resetstat")
        }
        return RedisStats(
            commands=sum(calls.values()),
            calls=calls,
            bytes_in=int(stats["total_net_input_bytes"]),
            bytes_out=int(stats["total_net_output_bytes"]),
            span_s=span_s,
        )

    def close(self) -> None:
        self._client.close()


def cost_run(
    pub: Server, sub: Server, users: Users, user: str, meter: RedisMeter, p: Params, work: Path
) -> dict[str, Any]:
    """``p.cost_publishes`` fill publishes for ``user``, counted from after both connections are up."""
    load = Load(
        "fill_stream",
        {
            "pub_base": pub.base,
            "sub_base": sub.base,
            "user_id": user,
            "user_token": users.token(user),
            "service_token": users.service_tokens(1)[0],
            "rate": p.cost_rate,
            "count": p.cost_publishes,
            "warmup": 0,
            "window": 32,
            "wait_go": True,
        },
        work,
        script=SCRIPT,
    )
    try:
        load.ready(60)
        time.sleep(0.2)
        meter.reset()
        load.mark()
        result = load.result(timeout=p.cost_publishes / p.cost_rate + 60, stop=False)
        stats = meter.read()
    finally:
        load.kill()
    if result["errors"] or result["missing"]:
        print(f"  S7 Redis cost {pub.name} → {sub.name}: errors {result['errors']}", file=sys.stderr)
    return {"stats": stats, "result": result}


# ------------------------------------------------------------------ resume


def resume_case(
    client_node: Server,
    pub: Server,
    users: Users,
    user: str,
    p: Params,
    work: Path,
    *,
    hold: bool = False,
) -> dict[str, Any]:
    """Subscribe and go away; ``p.resume_events`` more events; resume on ``client_node``, timed."""
    [result] = run_loads(
        [
            (
                "resume_series",
                {
                    "url": f"{client_node.base}/ws/portfolio",
                    "pub_base": pub.base,
                    "user_id": user,
                    "user_token": users.token(user),
                    "service_token": users.service_tokens(1)[0],
                    "events": p.resume_events,
                    "repeats": p.resume_repeats,
                    "hold": hold,
                },
            )
        ],
        timeout=p.resume_events / 200 + p.resume_repeats * 60 + 60,
        workdir=work,
        script=SCRIPT,
    )
    if result["problem"]:
        raise BenchError(f"resume on {client_node.name} for {user}: {result['problem']}")
    resumes = result["resumes"]
    return {
        "subscribe_ms": statistics.median(r["subscribe_to_last_ms"] for r in resumes),
        "connect_ms": statistics.median(r["connect_to_last_ms"] for r in resumes),
        "welcome_ms": statistics.median(r["connect_to_welcome_ms"] for r in resumes),
        "batches": resumes[0]["batches"],
        "events": resumes[0]["events"],
        "bytes": resumes[0]["payload_bytes"],
        "all_subscribe_ms": [round(r["subscribe_to_last_ms"], 1) for r in resumes],
    }


# ------------------------------------------------------------------ the scenario


def s7_cluster(p: Params, work: Path) -> list[dict[str, Any]]:
    raise_nofile()
    cpu_names = [f"cpu-{i:04d}" for i in range(p.cpu_users)]
    symbols = [f"S{j:03d}" for j in range(p.cpu_symbols)]
    held = holdings(cpu_names, symbols, p.cpu_per_user)
    users = write_users(work / "s7-users.json", [*cpu_names, "lat-single", "res-single"], services=4)

    # ---------------------------------------------------------- the single node: every baseline
    with Server(users, work, NODE_FLAGS, name="s7-single") as single:
        lat_single = latency_run(single, single, users, "lat-single", p, work)
        res_single = resume_case(single, single, users, "res-single", p, work)
        setup_positions(single, users, held, work)
        cpu_single = cpu_span(
            {"single": single},
            {"single": single.pid},
            users,
            cpu_names,
            symbols,
            lambda: single_seqs(single, users, cpu_names),
            lambda _: "single",
            p,
            work,
        )
        idle_single = idle_cpu({"single": single.pid}, p.cost_idle_s)["single"]

    # ---------------------------------------------------------- the cluster
    redis = redis_server(work / "s7-redis")
    redis.start()
    nodes: dict[str, Server] = {}
    meter: RedisMeter | None = None
    try:
        assert redis.proc is not None
        redis_pid = redis.proc.pid
        add_to_redis(redis.url, users, [*cpu_names, *users.services, users.admin])
        nodes["a"] = node(users, work, redis.url, "a", p).start()
        wait_partitions({"a": nodes["a"]}, p.partitions, p.lease_s * 3 + 10)
        setup_positions(nodes["a"], users, held, work)
        cpu_one = cpu_span(
            {"a": nodes["a"]},
            {"a": nodes["a"].pid, "redis": redis_pid},
            users,
            cpu_names,
            symbols,
            lambda: redis_seqs(redis, cpu_names),
            lambda _: "a",
            p,
            work,
        )
        nodes["b"] = node(users, work, redis.url, "b", p).start()
        claims = wait_partitions(nodes, p.partitions, p.lease_s * 3 + 10)
        owners = owner_map(claims)
        from alphaflow_server.cluster.leases import partition_of

        cpu_two = cpu_span(
            nodes,
            {"a": nodes["a"].pid, "b": nodes["b"].pid, "redis": redis_pid},
            users,
            cpu_names,
            symbols,
            lambda: redis_seqs(redis, cpu_names),
            lambda name: owners[partition_of(name, p.partitions)],
            p,
            work,
        )
        split = {n: len(users_of(cpu_names, n, owners, p.partitions)) for n in nodes}
        if wait_partitions(nodes, p.partitions, 5) != claims:
            print("  S7: the partitions moved during the CPU span", file=sys.stderr)

        # Users owned by node a: "own" is a, "other" is b.
        a, b = nodes["a"], nodes["b"]
        picked = {
            key: pick_user(key, claims["a"], p.partitions)
            for key in (
                "lat-aa", "lat-bb", "lat-ab", "lat-ba", "cost-own", "cost-fwd",
                "res-primed", "res-held", "res-owner",
            )
        }  # fmt: skip
        add_cluster_users(redis.url, users, list(picked.values()), [a, b])
        lat = {
            "aa": latency_run(a, a, users, picked["lat-aa"], p, work),
            "bb": latency_run(b, b, users, picked["lat-bb"], p, work),
            "ab": latency_run(a, b, users, picked["lat-ab"], p, work),
            "ba": latency_run(b, a, users, picked["lat-ba"], p, work),
        }
        meter = RedisMeter(redis)
        meter.reset()
        idle_nodes = idle_cpu({n: server.pid for n, server in nodes.items()}, p.cost_idle_s)
        idle = meter.read()
        cost_own = cost_run(a, a, users, picked["cost-own"], meter, p, work)
        cost_fwd = cost_run(b, b, users, picked["cost-fwd"], meter, p, work)
        res_primed = resume_case(b, a, users, picked["res-primed"], p, work)
        res_held = resume_case(b, a, users, picked["res-held"], p, work, hold=True)
        res_owner = resume_case(a, a, users, picked["res-owner"], p, work)
    finally:
        if meter is not None:
            meter.close()
        for server in nodes.values():
            server.stop()
        redis.stop()

    return [
        *latency_rows(p, lat_single, lat),
        *cpu_rows(p, cpu_single, cpu_one, cpu_two, split, idle_single, idle_nodes),
        *cost_rows(p, idle, cost_own, cost_fwd),
        *resume_rows(p, res_single, res_primed, res_held, res_owner),
    ]


def latency_rows(p: Params, single: dict[str, Any], lat: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    setups = (
        ("aa", "cluster, publisher and client on the owner of the user's partition"),
        ("bb", "cluster, publisher and client on the other node (forwarded; delivered over SSUBSCRIBE)"),
        ("ab", "cluster, publisher on the owner, client on the other node"),
        ("ba", "cluster, publisher on the other node, client on the owner"),
    )
    label = f"[{p.lat_rate:g} fills/s for {p.lat_seconds:g} s, n={single['n']}; 2 nodes, --batch-window-ms 0]"
    rows = []
    for i, (key, name) in enumerate(setups):
        for q in ("p50", "p99"):
            first = i == 0 and q == "p50"
            metric = f"fill → client latency {q}, {name}{' ' + label if first else ''}"
            rows.append(row("S7", metric, lat[key][q], "ms", SINGLE, single[q]))
    measured = {"single": single, **lat}
    print(
        "  S7 latency: "
        + ", ".join(f"{k} p50 {v['p50']:.2f} p99 {v['p99']:.2f} n={v['n']}" for k, v in measured.items()),
        file=sys.stderr,
    )
    return rows


def cpu_rows(
    p: Params,
    single: CpuSpan,
    one: CpuSpan,
    two: CpuSpan,
    split: dict[str, int],
    idle_single: float,
    idle_nodes: dict[str, float],
) -> list[dict[str, Any]]:
    label = (
        f"[{p.cpu_users} users × {p.cpu_per_user} of {p.cpu_symbols} symbols, {p.cpu_rate:g} ticks/s, "
        f"{p.cpu_seconds:g} s, re-marks every 250 ms, no clients]"
    )
    base = per_thousand(single.cpu["single"], single.events.get("single", 0))
    unit = "CPU s"
    rows = [
        row(
            "S7",
            f"node CPU per 1,000 committed events, 1-node cluster {label}",
            per_thousand(one.cpu["a"], one.events.get("a", 0)),
            unit,
            SINGLE,
            base,
        )
    ]
    for node_id, users in split.items():
        metric = f"node CPU per 1,000 committed events, 2-node cluster, node {node_id} (owns {users} users)"
        value = per_thousand(two.cpu[node_id], two.events.get(node_id, 0))
        rows.append(row("S7", metric, value, unit, SINGLE, base))
    both = per_thousand(sum(two.cpu[n] for n in split), two.events.get("all", 0))
    rows.append(
        row("S7", "both nodes' CPU per 1,000 committed events, 2-node cluster", both, unit, SINGLE, base)
    )
    for name, span in (("1-node", one), ("2-node", two)):
        metric = f"Redis CPU per 1,000 committed events, {name} cluster"
        rows.append(row("S7", metric, per_thousand(span.cpu["redis"], span.events.get("all", 0)), unit))
    single_rate = single.events.get("single", 0) / single.span_s
    for name, span in (("1-node", one), ("2-node", two)):
        metric = f"committed events per s at that tick rate, {name} cluster"
        rows.append(
            row("S7", metric, span.events.get("all", 0) / span.span_s, "events/s", SINGLE, single_rate)
        )
    idle = statistics.fmean(idle_nodes.values())
    metric = "node CPU per s with no load (leases, presence, users), 2-node cluster, each node's mean"
    rows.append(row("S7", metric, idle, "CPU s/s", SINGLE, idle_single))
    print(
        f"  S7 CPU: single {single}; 1-node {one}; 2-node {two}; users per node {split}; "
        f"idle CPU s/s single {idle_single:.4f}, nodes {idle_nodes}",
        file=sys.stderr,
    )
    return rows


def cost_rows(
    p: Params, idle: RedisStats, own: dict[str, Any], forwarded: dict[str, Any]
) -> list[dict[str, Any]]:
    costs = {}
    for key, run in (("own", own), ("fwd", forwarded)):
        net = run["stats"].minus(idle)
        events = max(run["result"]["events"], 1)
        delivered = run["result"]["delivered_events"]
        costs[key] = {
            "commands": net.commands / events,
            "in": net.bytes_in / events,
            "out": net.bytes_out / events,
            "client": run["result"]["payload_bytes"] / delivered if delivered else None,
            "events": run["result"]["events"],
            "per_publish": {c: round(n / p.cost_publishes, 2) for c, n in sorted(net.calls.items()) if n},
        }
    events = costs["own"]["events"]
    label = (
        f"[{p.cost_publishes:,} publishes of one fill = {events:,} events "
        f"({events / p.cost_publishes:g} each: fill, position, account); idle background subtracted]"
    )
    own_name = "publisher and client on the owner"
    fwd_name = "both on the other node (forwarded; delivered over SSUBSCRIBE)"
    client = "the event as its client receives it"
    o, f = costs["own"], costs["fwd"]
    idle_per_s = idle.commands / idle.span_s if idle.span_s else None
    first = f"Redis commands per committed event (scripts' calls included), {own_name} {label}"
    idle_name = "Redis commands per s, idle 2-node cluster (leases, presence, users)"
    rows = [
        row("S7", first, o["commands"], "cmds"),
        row(
            "S7",
            f"Redis commands per committed event, {fwd_name}",
            f["commands"],
            "cmds",
            own_name,
            o["commands"],
        ),
        row("S7", f"Redis bytes in per committed event, {own_name}", o["in"], "B", client, o["client"]),
        row("S7", f"Redis bytes in per committed event, {fwd_name}", f["in"], "B", own_name, o["in"]),
        row("S7", f"Redis bytes out per committed event, {own_name}", o["out"], "B", client, o["client"]),
        row("S7", f"Redis bytes out per committed event, {fwd_name}", f["out"], "B", own_name, o["out"]),
        row("S7", idle_name, idle_per_s, "cmds/s"),
    ]
    print(
        f"  S7 Redis calls per publish: owner {o['per_publish']}; forwarded {f['per_publish']}; "
        f"idle {idle.calls} over {idle.span_s:.1f} s",
        file=sys.stderr,
    )
    return rows


def resume_rows(
    p: Params, single: dict[str, Any], primed: dict[str, Any], held: dict[str, Any], owner: dict[str, Any]
) -> list[dict[str, Any]]:
    label = (
        f"[{p.resume_events:,} missed events ({single['events']:,} once coalesced) in "
        f"{single['batches']} batches, {single['bytes'] / 1024 / 1024:.1f} MiB; median of {p.resume_repeats}]"
    )
    cases = (
        (primed, "cluster node with no stream of the user (primed from Redis)"),
        (held, "cluster node holding the stream (another connection open; SSUBSCRIBE)"),
        (owner, "cluster, the owner of the user's partition"),
    )
    base = f"{SINGLE}, local journal"
    rows = []
    for i, (case, name) in enumerate(cases):
        metric = f"resume: subscribe → last recovered batch, {name}{' ' + label if i == 0 else ''}"
        rows.append(row("S7", metric, case["subscribe_ms"], "ms", base, single["subscribe_ms"]))
    for case, name in cases:
        metric = f"resume: connect → last recovered batch (priming included), {name}"
        rows.append(row("S7", metric, case["connect_ms"], "ms", base, single["connect_ms"]))
    every = {"single": single, "primed": primed, "held": held, "owner": owner}
    print(
        "  S7 resume, subscribe → last batch of each run: "
        + "; ".join(
            f"{name} {case['all_subscribe_ms']} ms (connect → welcome {case['welcome_ms']:.1f} ms)"
            for name, case in every.items()
        ),
        file=sys.stderr,
    )
    return rows


# ------------------------------------------------------------------ load roles (their own processes)


class Publisher:
    """One /ws/ingest connection: publishes with at most ``window`` unanswered; the seqs acked."""

    def __init__(self, ws: ClientConnection, window: int) -> None:
        self.ws, self.window = ws, window
        self.sent = self.answered = self.events = self.last_seq = 0
        self.errors: Counter[str] = Counter()
        self._changed = asyncio.Event()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        with contextlib.suppress(Exception):  # a closed connection ends the reader
            for _ in range(100_000_000):
                message = json.loads(await self.ws.recv())
                if message.get("type") == "ack":
                    seqs = message.get("seqs") or []
                    self.events += len(seqs)
                    self.last_seq = max(self.last_seq, *seqs) if seqs else self.last_seq
                else:
                    self.errors[f"ingest {message.get('code', message.get('type'))}"] += 1
                self.answered += 1
                self._changed.set()
        self._changed.set()

    async def publish(self, message: dict[str, Any]) -> None:
        while self.sent - self.answered >= self.window and not self._reader.done():
            self._changed.clear()
            await self._changed.wait()
        self.sent += 1
        await self.ws.send(json.dumps({**message, "id": self.sent}))

    async def drain(self, within: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within):
                while self.answered < self.sent and not self._reader.done():
                    self._changed.clear()
                    await self._changed.wait()

    async def close(self) -> None:
        self._reader.cancel()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(5):
                await self.ws.close()


def fill_event(fill_id: str, position_qty: int, ts: str, symbol: str = "AAPL") -> dict[str, Any]:
    event: dict[str, Any] = fill_message(0, "", fill_id, symbol, position_qty)["events"][0]
    event["ts"] = event["data"]["timestamp"] = ts
    return event


def account_event(ts: str) -> dict[str, Any]:
    cash = "100000.00"
    return {
        "type": "account",
        "ts": ts,
        "data": {
            "equity": cash, "last_equity": cash, "cash": cash, "buying_power": "200000.00",
            "portfolio_value": cash, "long_market_value": "0.00", "short_market_value": "0.00",
            "realized_pl_today": "0.00", "updated_at": ts,
        },
    }  # fmt: skip


async def fill_stream(spec: dict[str, Any]) -> None:
    """Fills at a steady rate on /ws/ingest; publish-send → the subscriber decoded the frame (as S1)."""
    user_id: str = spec["user_id"]
    rate = float(spec["rate"])
    count, warmup = int(spec["count"]), int(spec.get("warmup", 0))
    sent_at: dict[str, tuple[float, bool]] = {}
    latencies: list[float] = []
    received = frames = payload = delivered = late = 0
    all_seen = asyncio.Event()
    total = warmup + count

    async with (
        connect(f"{spec['sub_base']}/ws/portfolio", **client_kwargs(spec["user_token"])) as sub,
        connect(f"{spec['pub_base']}/ws/ingest", **client_kwargs(spec["service_token"])) as ws,
    ):
        await sub.send(json.dumps({"type": "subscribe", "id": 1}))
        await read_until(sub, "snapshot", 30)

        async def read_sub() -> None:
            nonlocal received, frames, payload, delivered
            for _ in range(100_000_000):
                raw = await sub.recv()
                message = json.loads(raw)
                now = time.perf_counter()
                frames += 1
                payload += len(raw)
                for event in message.get("events", ()):
                    delivered += 1
                    if event["type"] == "fill":
                        sent = sent_at.pop(event["data"]["id"], None)
                        if sent is not None:
                            received += 1
                            if sent[1]:
                                latencies.append((now - sent[0]) * 1000)
                if received >= total:
                    all_seen.set()

        reader = asyncio.create_task(read_sub())
        publisher = Publisher(ws, int(spec.get("window", 64)))
        if spec.get("wait_go"):
            emit("ready")
            await asyncio.to_thread(sys.stdin.readline)
        run = f"{user_id}-{os.getpid()}"
        started = time.perf_counter()
        for i in range(total):
            due = started + i / rate
            now = time.perf_counter()
            if now < due:
                await asyncio.sleep(due - now)
            elif now - due > 1 / rate:
                late += 1
            fill_id = f"f-{run}-{i}"
            message = fill_message(i + 1, user_id, fill_id, "AAPL", i + 1)
            sent_at[fill_id] = (time.perf_counter(), i >= warmup)
            await publisher.publish(message)
        sent_s = time.perf_counter() - started
        await publisher.drain(30)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(all_seen.wait(), 10)
        elapsed_s = time.perf_counter() - started
        reader.cancel()
        await publisher.close()
    emit(
        "result",
        latency_ms=[round(v, 4) for v in latencies],
        acks=publisher.answered - sum(publisher.errors.values()),
        events=publisher.events,
        last_seq=publisher.last_seq,
        errors=dict(publisher.errors),
        missing=total - received,
        late=late,
        sent_s=round(sent_s, 3),
        elapsed_s=round(elapsed_s, 3),
        frames=frames,
        payload_bytes=payload,
        delivered_events=delivered,
    )


async def burst(publisher: Publisher, user_id: str, count: int, fills: int = 100) -> None:
    """Exactly ``count`` committed events for one user: publishes of ``fills`` fills (2 × fills + 1
    events each: every fill and its position, then one account), the rest as account events."""
    run = f"{user_id}-{os.getpid()}-{time.monotonic_ns()}"
    remaining, n = count, 0
    while remaining > 0:
        ts = iso_us(time.time())
        if remaining >= 2 * fills + 1:
            events = [fill_event(f"b-{run}-{n + k}", n + k + 1, ts) for k in range(fills)]
            n += fills
            remaining -= 2 * fills + 1
        else:
            events = [account_event(ts) for _ in range(min(remaining, 100))]
            remaining -= len(events)
        await publisher.publish({"type": "publish", "user_id": user_id, "events": events})
    await publisher.drain(60)


async def resume_once(url: str, token: str, point: dict[str, Any], target: int) -> dict[str, Any]:
    """Connect, subscribe from ``point``, read until the batch that reaches ``target``; the times."""
    recovered: bool | None = None
    batches = events = payload = 0
    errors: list[str] = []
    t_connect = time.perf_counter()
    async with connect(url, **client_kwargs(token)) as ws:
        welcome = await read_until(ws, "welcome", 60)
        t_welcome = time.perf_counter()
        await ws.send(json.dumps({"type": "subscribe", "id": 1, "resume": point}))
        t_subscribe = time.perf_counter()
        async with asyncio.timeout(90):
            for _ in range(10_000_000):
                raw = await ws.recv()
                message = msgspec.json.decode(raw)
                kind = message.get("type")
                if kind == "subscribed":
                    recovered = bool(message["recovered"])
                elif kind == "batch":
                    batches += 1
                    events += len(message["events"])
                    payload += len(raw)
                    if message["to_seq"] >= target:
                        break
                elif kind == "snapshot":
                    recovered = False
                    break
                elif kind == "error":
                    errors.append(f"{message.get('code')}: {message.get('message')}")
        t_last = time.perf_counter()
    return {
        "recovered": bool(recovered),
        "node": welcome.get("node"),
        "batches": batches,
        "events": events,
        "payload_bytes": payload,
        "errors": errors,
        "connect_to_welcome_ms": (t_welcome - t_connect) * 1000,
        "subscribe_to_last_ms": (t_last - t_subscribe) * 1000,
        "connect_to_last_ms": (t_last - t_connect) * 1000,
    }


async def resume_series(spec: dict[str, Any]) -> None:
    """A client's resume point, ``events`` committed after it, then ``repeats`` timed resumes from it.

    With ``hold``, another connection of the user stays subscribed on the client's node all along
    (so the node keeps the user's stream); without, the node has none when each resume comes.
    """
    url, user_id, token = spec["url"], spec["user_id"], spec["user_token"]
    count = int(spec["events"])
    problem = ""
    resumes: list[dict[str, Any]] = []
    holder: Follower | None = None
    async with connect(f"{spec['pub_base']}/ws/ingest", **client_kwargs(spec["service_token"])) as ws:
        publisher = Publisher(ws, 4)
        # One event first, so that the resume point is a seq of the user's (not 0: nothing yet).
        await burst(publisher, user_id, 1)
        async with connect(url, **client_kwargs(token)) as client:
            await client.send(json.dumps({"type": "subscribe", "id": 1}))
            snapshot = await read_until(client, "snapshot", 30)
        point = {"epoch": snapshot["epoch"], "seq": snapshot["seq"]}
        if spec.get("hold"):
            ws_held = await connect(url, **client_kwargs(token))
            await ws_held.send(json.dumps({"type": "subscribe", "id": 1}))
            await read_until(ws_held, "snapshot", 30)
            holder = Follower(ws_held)
        await asyncio.sleep(0.2)  # the node has seen the client go (and, unheld, let the stream go)
        await burst(publisher, user_id, count)
        target = publisher.last_seq
        if publisher.errors or target - point["seq"] != count:
            problem = (
                f"{target - point['seq']} events after the resume point; errors {dict(publisher.errors)}"
            )
        await publisher.close()
    if holder is not None:
        # The node has delivered the burst to the connection it holds: resumes meet no backlog.
        await holder.reach(target, 60)
    for _ in range(int(spec["repeats"]) if not problem else 0):
        result = await resume_once(url, token, point, target)
        if not result["recovered"]:
            problem = f"not recovered: {result}"
            break
        resumes.append(result)
        await asyncio.sleep(0.2)
    if holder is not None:
        await holder.close()
    emit("result", problem=problem, resumes=resumes, point=point, target=target)


class Follower:
    """A subscribed connection read in the background: the seq its batches have reached."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.seq = 0
        self._moved = asyncio.Event()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        with contextlib.suppress(Exception):  # a closed connection ends the reader
            for _ in range(100_000_000):
                message = msgspec.json.decode(await self.ws.recv())
                if message.get("type") == "batch":
                    self.seq = max(self.seq, int(message["to_seq"]))
                    self._moved.set()
        self._moved.set()

    async def reach(self, target: int, within: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within):
                while self.seq < target and not self._reader.done():
                    self._moved.clear()
                    await self._moved.wait()

    async def close(self) -> None:
        self._reader.cancel()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(5):
                await self.ws.close()


ROLES = {"fill_stream": fill_stream, "resume_series": resume_series}


# ------------------------------------------------------------------ running

SCENARIOS: dict[str, Callable[[Params, Path], list[dict[str, Any]]]] = {"S7": s7_cluster}


def run(
    scenarios: list[str] | None = None, *, quick: bool = False, params: Params | None = None
) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Run the scenarios; their rows and, per failed scenario, why it failed (as bench_server.run)."""
    p = params or (QUICK if quick else FULL)
    return run_scenarios(scenarios or list(SCENARIOS), SCENARIOS, p, prefix="alphaflow-bench-cluster-")


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] in ROLES:
        role = ROLES[sys.argv[1]]
        asyncio.run(role(json.loads(sys.stdin.readline())))
        sys.stdout.flush()
        os._exit(0)
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small loads, short spans (seconds)")
    args = parser.parse_args()
    rows, failures = run(quick=args.quick)
    print()
    print(table(rows))
    for name, why in failures.items():
        print(f"{name} failed: {why}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
