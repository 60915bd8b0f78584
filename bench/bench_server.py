"""Server benchmarks: latency, tick fan-out, connection scale, bandwidth and memory.

Each scenario starts the real ``alphaflow-live serve`` on 127.0.0.1 (an ephemeral port, no
state) and drives it from separate load processes (``bench/load.py``) made of plain
``websockets`` clients. Every scenario measures its baseline in the same run and returns rows
``{scenario, metric, value, unit, baseline_name, baseline_value, ratio}`` (ratio = value ÷
baseline). Figures are printed; nothing asserts an absolute time.

Run: ``.venv/bin/python bench/bench_server.py [--quick] [--scenarios S1,S2]`` (or ``bench/run.py``).

S1 fill latency     isolated fill: publish-send on /ws/ingest → the subscriber decoded it
S2 tick fan-out     ticks at a fixed rate over held symbols → every holder's client
S3 connection scale idle authenticated connections (full mode, or when asked for)
S4 bandwidth        a time-compressed trading hour of the simulator, bytes on the wire
S6 memory           RSS idle, with connections, and over a 20-minute soak with slow readers that
                    reaches the replay buffers' retention plateau (start, plateau, drift, end)
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import statistics
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import (
    BenchError,
    EchoServer,
    Load,
    MiB,
    RssSampler,
    Server,
    collect,
    percentiles,
    raise_nofile,
    row,
    rss_bytes,
    run_loads,
    run_scenarios,
    start_clients,
    table,
    wait_ready,
    write_users,
)

from alphaflow_server.config import ServerConfig

MANY = ["--max-connections", "20000", "--max-per-user", "20000"]
SEED_FLAGS = ["--batch-window-ms", "1000", "--no-leading-edge"]
SEED = "seed: 1000 ms window, no leading edge"
# The server's default --batch-window-ms, and so its mark interval: S2 runs with it.
DEFAULT_WINDOW_MS = ServerConfig().batch_window_ms
# S2: when the start of the ticks (every holder due at once) is over.
WARM_S = 3.0


@dataclass(frozen=True)
class Params:
    quick: bool
    # S1
    s1_clients: tuple[int, ...]
    s1_samples: int
    s1_seed_samples: int
    s1_echo_samples: int
    s1_idle_users: int
    # S2
    s2_clients: int
    s2_symbols: int
    s2_per_user: int
    s2_rate: float
    s2_seconds: float
    s2_baseline: bool
    # S3
    s3_connections: int
    # S4
    s4_seconds: float
    # S6
    s6_connections: int
    s6_soak_clients: int
    s6_slow: int
    s6_soak_seconds: float
    s6_rate: float


QUICK = Params(
    quick=True,
    s1_clients=(1, 20),
    s1_samples=20,
    s1_seed_samples=5,
    s1_echo_samples=200,
    s1_idle_users=20,
    s2_clients=20,
    s2_symbols=20,
    s2_per_user=5,
    s2_rate=100,
    s2_seconds=5,
    s2_baseline=True,
    s3_connections=1000,
    s4_seconds=5,
    s6_connections=20,
    s6_soak_clients=100,
    s6_slow=10,
    s6_soak_seconds=10,
    s6_rate=100,
)
FULL = Params(
    quick=False,
    s1_clients=(1, 100, 1000),
    s1_samples=200,
    s1_seed_samples=20,
    s1_echo_samples=2000,
    s1_idle_users=100,
    s2_clients=1000,
    s2_symbols=100,
    s2_per_user=10,
    s2_rate=1000,
    s2_seconds=30,
    s2_baseline=True,
    s3_connections=10_000,
    s4_seconds=60,
    s6_connections=100,
    s6_soak_clients=100,
    s6_slow=10,
    s6_soak_seconds=1200,
    s6_rate=100,
)


def window_gap(flags: list[str]) -> float:
    """Pause after each fill so that the next one is isolated (nothing sent for a whole window)."""
    return 0.02 if "--no-leading-edge" in flags else 0.25 + 0.03


# ------------------------------------------------------------------ S1


def s1_fill_latency(p: Params, work: Path) -> list[dict[str, Any]]:
    """Isolated fill, publish-send → decoded by the subscriber, with N connected clients."""
    idle_users = [f"u{i:04d}" for i in range(p.s1_idle_users)]
    measuring = [f"m{n}" for n in p.s1_clients]
    users = write_users(work / "s1-users.json", idle_users + measuring, services=2)

    with EchoServer(work) as echo:
        [echo_result] = run_loads(
            [("echo_client", {"url": echo.url, "samples": p.s1_echo_samples})], timeout=120, workdir=work
        )
    echo_p = percentiles(echo_result["latency_ms"])

    results: dict[str, dict[int, dict[str, float]]] = {}
    counts: dict[str, dict[int, int]] = {}
    for config, flags, samples in (("ours", [], p.s1_samples), ("seed", SEED_FLAGS, p.s1_seed_samples)):
        results[config], counts[config] = {}, {}
        with Server(users, work, [*MANY, *flags], name=f"s1-{config}") as server:
            idle: list[Load] = []
            connected = 0
            try:
                for n in p.s1_clients:
                    more = n - 1 - connected
                    if more > 0:
                        tokens = [users.token(u) for u in idle_users]
                        spec = {"url": f"{server.base}/ws/portfolio", "tokens": tokens, "hold_s": 900}
                        new = start_clients(more, spec, per_process=500, workdir=work)
                        connected += sum(r["connected"] for r in wait_ready(new, timeout=180))
                        idle += new
                    [result] = run_loads(
                        [
                            (
                                "fill_latency",
                                {
                                    "base": server.base,
                                    "user_id": f"m{n}",
                                    "user_token": users.token(f"m{n}"),
                                    "service_token": users.service_tokens(1)[0],
                                    "samples": samples,
                                    "gap_s": window_gap(flags),
                                    "timeout_s": 5,
                                },
                            )
                        ],
                        timeout=samples * 7 + 30,
                        workdir=work,
                    )
                    if result["errors"]:
                        print(f"  S1 {config} n={n}: errors {result['errors']}", file=sys.stderr)
                    results[config][n] = percentiles(result["latency_ms"])
                    counts[config][n] = connected + 1
            finally:
                if idle:
                    collect(idle)

    rows = []
    for n in p.s1_clients:
        for q in ("p50", "p95", "p99"):
            rows.append(
                row(
                    "S1",
                    f"fill latency {q}, {counts['ours'][n]} client{'s' if n != 1 else ''} "
                    f"(n={p.s1_samples}; seed n={p.s1_seed_samples})",
                    results["ours"][n][q],
                    "ms",
                    SEED,
                    results["seed"][n][q],
                )
            )
    first = p.s1_clients[0]
    for q in ("p50", "p99"):
        rows.append(
            row(
                "S1",
                f"fill latency {q}, {first} client, vs raw websockets echo round trip",
                results["ours"][first][q],
                "ms",
                "websockets echo RTT on loopback",
                echo_p[q],
            )
        )
    return rows


# ------------------------------------------------------------------ S2


def holdings(users: list[str], symbols: list[str], per_user: int) -> dict[str, list[str]]:
    """Overlapping holdings: user i holds ``per_user`` consecutive symbols starting at a stride."""
    stride = max(1, len(symbols) // max(1, min(len(users), len(symbols))))
    return {
        user: [symbols[(i * stride + k) % len(symbols)] for k in range(per_user)]
        for i, user in enumerate(users)
    }


def setup_positions(server: Server, users: Any, held: dict[str, list[str]], work: Path) -> None:
    tokens = users.service_tokens()
    [setup] = run_loads(
        [("publish_setup", {"base": server.base, "service_tokens": tokens, "holdings": held})],
        timeout=len(held) / (80 * len(tokens)) + 60,
        workdir=work,
    )
    if setup["errors"] or setup["acks"] < setup["sent"]:
        raise BenchError(f"setup publish: {setup}")


def fan_out_run(p: Params, work: Path, flags: list[str], name: str) -> dict[str, float]:
    names = [f"u{i:04d}" for i in range(p.s2_clients)]
    symbols = [f"S{j:03d}" for j in range(p.s2_symbols)]
    users = write_users(work / f"s2-{name}-users.json", names, services=4)
    held = holdings(names, symbols, p.s2_per_user)
    with Server(users, work, [*MANY, *flags], name=f"s2-{name}") as server:
        setup_positions(server, users, held, work)
        spec = {
            "url": f"{server.base}/ws/portfolio",
            "tokens": [users.token(u) for u in names],
            "measure": True,
            "hold_s": p.s2_seconds + 120,
        }
        loads = start_clients(p.s2_clients, spec, per_process=250, workdir=work)
        try:
            ready = wait_ready(loads, timeout=180)
            before = server.stats()
            started = time.monotonic()
            for load in loads:
                load.mark()
            time.sleep(0.1)
            spy = server.profile(p.s2_seconds)
            # The first tick makes every holder due at once; what is shed after that start is the
            # steady state's (the stats again a few seconds in, while the ticks run).
            warm: list[dict[str, Any]] = []
            warmed = threading.Timer(WARM_S, lambda: warm.append(server.stats()))
            warmed.start()
            [sent] = run_loads(
                [
                    (
                        "ticks",
                        {
                            "base": server.base,
                            "service_tokens": users.service_tokens(2),
                            "symbols": symbols,
                            "rate": p.s2_rate,
                            "duration_s": p.s2_seconds,
                        },
                    )
                ],
                timeout=p.s2_seconds + 120,
                workdir=work,
            )
            time.sleep(1.0)  # let the last window flush
            after = server.stats()
            warmed.join()
            span_server = time.monotonic() - started
            if spy is not None:
                spy.wait(timeout=60)
        finally:
            try:
                results = collect(loads, timeout=60)
            except TimeoutError:
                # Clients buried under frames (the unbatched baseline) cannot report in time:
                # what the server counted still tells the story, latency excepted.
                results = []
    connected = sum(r["connected"] for r in ready)
    latencies = [v for r in results for v in r["latency_ms"]]
    delivered = after["events_delivered"] - before["events_delivered"]
    batches = after["batches_out"] - before["batches_out"]
    frames = sum(r["frames"] for r in results) if results else batches
    events = sum(r["events"] for r in results) if results else delivered
    # Rates over what the clients measured: from the first tick until 1 s after the last ack.
    span = max(max((r["elapsed_s"] for r in results), default=span_server), 1e-9)
    # Every re-mark of a user derives one position per stale holding and one account event, and
    # the ticks go round the symbols every 100 ms (faster than any window), so every holding is
    # stale at each turn: re-marks done = events handed to the batchers ÷ (holdings + 1), over
    # the span the ticks ran (the last turn after it is left in: one in a hundred and twenty).
    remarks_per_client_s = delivered / (p.s2_per_user + 1) / max(connected, 1) / max(sent["sent_s"], 1e-9)
    # Each tick concerns every holder of its symbol: what an unbatched stream would send each.
    ticks_per_client_s = sent["ticks"] * (p.s2_per_user / p.s2_symbols) / span
    frames_per_client_s = frames / max(connected, 1) / span
    return {
        "connected": connected,
        "clients_reported": len(results) > 0,
        **percentiles(latencies),
        "batch_efficiency_pct": 100 * (1 - frames_per_client_s / ticks_per_client_s),
        "ticks_per_s": sent["ticks"] / max(sent["sent_s"], 1e-9),
        "ticks_processed_per_s": sent["ticks"] / max(sent["acked_s"], 1e-9),
        "acked_s": sent["acked_s"],
        "frames_per_client_s": frames_per_client_s,
        "remarks_per_client_s": remarks_per_client_s,
        "remark_turns": after.get("remark_turns", 0) - before.get("remark_turns", 0),
        "remark_turns_shed": after.get("remark_turns_shed", 0) - before.get("remark_turns_shed", 0),
        "remark_turns_steady": after.get("remark_turns", 0) - warm[0].get("remark_turns", 0) if warm else 0,
        "remark_turns_shed_steady": (
            after.get("remark_turns_shed", 0) - warm[0].get("remark_turns_shed", 0) if warm else 0
        ),
        # The server's own histogram (since it started; the ticks are nearly all of it): how long
        # events waited in the batchers, from the re-mark that made them to their frame's write.
        "server_hold_p50": after["latency_ms"]["p50"],
        "server_hold_p99": after["latency_ms"]["p99"],
        "bytes_per_client_s": (
            sum(r["payload_bytes"] for r in results) if results else after["bytes_out"] - before["bytes_out"]
        )
        / max(connected, 1)
        / span,
        "wire_bytes_per_client_s": (
            sum(r["wire_bytes"] for r in results) / max(connected, 1) / span if results else math.nan
        ),
        "events_per_frame_client": events / frames if frames else math.nan,
        "events_per_frame_server": delivered / batches if batches else math.nan,
        "events_in": after["events_in"] - before["events_in"],
        "server_rss_mib": after["memory_rss_bytes"] / MiB,
        "resyncs": after["slow_consumer_resyncs"] - before["slow_consumer_resyncs"],
    }


def s2_tick_fan_out(p: Params, work: Path) -> list[dict[str, Any]]:
    ours = fan_out_run(p, work, [], "ours")
    base = fan_out_run(p, work, ["--batch-window-ms", "0"], "window0") if p.s2_baseline else {}
    label = (
        f"{p.s2_clients} clients, {p.s2_rate:g} ticks/s over {p.s2_symbols} symbols "
        f"({p.s2_per_user} held per user), {p.s2_seconds:g} s"
    )
    print(f"  S2 load: {label}; ours {ours}; window 0 {base}", file=sys.stderr)
    b = "--batch-window-ms 0"
    metrics = [
        ("tick→client latency p50", "p50", "ms"),
        ("tick→client latency p99", "p99", "ms"),
        (
            "server hold p50 (event derived → its frame written; the server's histogram)",
            "server_hold_p50",
            "ms",
        ),
        ("server hold p99", "server_hold_p99", "ms"),
        ("frames per client per s", "frames_per_client_s", "frames/s"),
        ("batch efficiency (1 − frames ÷ ticks of held symbols)", "batch_efficiency_pct", "%"),
        ("payload bytes per client per s", "bytes_per_client_s", "B/s"),
        ("wire bytes per client per s (deflate)", "wire_bytes_per_client_s", "B/s"),
        ("events per frame (client count)", "events_per_frame_client", "events"),
        ("events per frame (server stats)", "events_per_frame_server", "events"),
        ("ticks/s sent", "ticks_per_s", "ticks/s"),
        ("ticks/s processed (all acked ÷ time to last ack)", "ticks_processed_per_s", "ticks/s"),
    ]
    rows = [
        row("S2", f"{name} [{label}]" if i == 0 else name, ours[key], unit, b, base.get(key))
        for i, (name, key, unit) in enumerate(metrics)
    ]
    # The target: every holder re-marked once a window (the default mark interval), none shed.
    asked = 1000 / DEFAULT_WINDOW_MS
    return [
        *rows,
        row(
            "S2",
            "user re-marks done per client per s (events handed ÷ (holdings + 1)), vs asked",
            ours["remarks_per_client_s"],
            "re-marks/s",
            f"asked: 1000 ÷ {DEFAULT_WINDOW_MS} ms window",
            asked,
        ),
        row(
            "S2",
            "re-mark turns shed (taken half a window or more late; the server's count)",
            ours["remark_turns_shed"],
            "turns",
            "re-mark turns taken",
            ours["remark_turns"],
        ),
        row(
            "S2",
            f"  of those, shed after the first {WARM_S:g} s of ticks (the steady state)",
            ours["remark_turns_shed_steady"],
            "turns",
            "re-mark turns taken then",
            ours["remark_turns_steady"],
        ),
        row(
            "S2",
            "user re-marks done per s, all clients, vs asked",
            ours["remarks_per_client_s"] * ours["connected"],
            "re-marks/s",
            f"asked: {ours['connected']} clients × {asked:g}",
            asked * ours["connected"],
        ),
    ]


# ------------------------------------------------------------------ S3


def hold_idle(target: int, url: str, tokens: list[str | None], work: Path, subscribe: bool) -> dict[str, Any]:
    spec = {
        "url": url,
        "tokens": tokens,
        "subscribe": True,
        "until": "snapshot" if subscribe else None,
        "hold_s": 900,
        "concurrency": 64,
        "ramp_timeout_s": 600,
    }
    started = time.monotonic()
    loads = start_clients(target, spec, per_process=2500, workdir=work)
    try:
        ready = wait_ready(loads, timeout=900)
        # The load processes ramp side by side; the slowest one's ramp (their start-up left out).
        ramp_s = max((r["ramp_s"] for r in ready), default=time.monotonic() - started)
        connected = sum(r["connected"] for r in ready)
        errors: dict[str, int] = {}
        for r in ready:
            for k, v in r["errors"].items():
                errors[k] = errors.get(k, 0) + v
        time.sleep(2.0)
        return {"connected": connected, "ramp_s": ramp_s, "errors": errors, "loads": loads}
    except BaseException:
        collect(loads)
        raise


def s3_connection_scale(p: Params, work: Path) -> list[dict[str, Any]]:
    limit = raise_nofile()
    target = p.s3_connections
    users = write_users(work / "s3-users.json", [f"u{i:04d}" for i in range(100)], services=1)
    tokens: list[str | None] = [users.token(u) for u in users.users]
    with Server(users, work, MANY, nofile=target + 2000, name="s3") as server:
        idle_rss = server.rss()
        held = hold_idle(target, f"{server.base}/ws/portfolio", tokens, work, subscribe=True)
        try:
            rss = server.rss()
            stats = server.stats()
        finally:
            collect(held["loads"])
    with EchoServer(work) as echo:
        time.sleep(0.3)
        echo_idle = rss_bytes(echo.pid)
        bare = hold_idle(target, echo.url, [None], work, subscribe=False)
        try:
            echo_rss = rss_bytes(echo.pid)
        finally:
            collect(bare["loads"])
    n, nb = held["connected"], bare["connected"]
    note = ""
    if n < target:
        note = f" (target {target}; reached {n}; errors {held['errors']}; RLIMIT_NOFILE {limit})"
        print(f"  S3: {note}", file=sys.stderr)
    per_conn = (rss - idle_rss) / n if n else math.nan
    per_conn_bare = (echo_rss - echo_idle) / nb if nb else math.nan
    return [
        row("S3", f"authenticated idle connections held{note}", n, "conns", "bare websockets server", nb),
        row("S3", "server RSS with them", rss / MiB, "MiB", "bare websockets server", echo_rss / MiB),
        row(
            "S3", "RSS per connection", per_conn / 1024, "KiB", "bare websockets server", per_conn_bare / 1024
        ),
        row(
            "S3",
            "handshake rate (handshake + subscribe + snapshot)",
            n / held["ramp_s"],
            "conn/s",
            "bare websockets server (handshake + one echo)",
            nb / bare["ramp_s"],
        ),
        row("S3", "connections the server counts", stats["connections_total"], "conns"),
    ]


# ------------------------------------------------------------------ S4


def sim_hour(p: Params, work: Path, users: Any, extra: list[str], name: str, *, both: bool) -> dict[str, Any]:
    """Run the compressed hour once; what a deflate client and a plain client received."""
    compression = 3600 / p.s4_seconds
    # The simulator ticks per wall second in 50 ms steps, at most once per symbol per step (30
    # symbols): beyond ~1,200 requested ticks/s nearly every symbol ticks every step anyway.
    tick_rate = min(40 * compression, 1200)
    flags = [
        "--sim-speed", f"{compression:g}", "--sim-tick-rate", f"{tick_rate:g}",
        "--sim-order-rate", f"{0.3 * compression:g}", "--seed", "7", *extra,
    ]  # fmt: skip
    token = users.token("demo")
    with Server(users, work, flags, source="sim", name=f"s4-{name}") as server:
        url = f"{server.base}/ws/portfolio"
        common = {"url": url, "tokens": [token], "count": 1, "hold_s": p.s4_seconds + 60}
        loads = [Load("clients", {**common, "compression": False, "per_event": True}, work)]
        if both:
            loads.append(Load("clients", common, work))
            # The same stream with field deltas, deflated and not.
            loads.append(Load("clients", {**common, "deltas": True}, work))
            loads.append(Load("clients", {**common, "deltas": True, "compression": False}, work))
        try:
            wait_ready(loads, timeout=60)
            started = time.monotonic()
            time.sleep(p.s4_seconds)
            body, head = server.http_get("/api/portfolio/snapshot", token)
            stats = server.stats()
        finally:
            results = collect(loads, timeout=60)
            span = time.monotonic() - started
    return {
        "plain": results[0],
        "deflate": results[1] if both else None,
        "deltas_deflate": results[2] if both else None,
        "deltas_plain": results[3] if both else None,
        "span": span,
        "compression": compression,
        "tick_rate": tick_rate,
        "snapshot": (body, head),
        "stats": stats,
    }


def s4_bandwidth(p: Params, work: Path) -> list[dict[str, Any]]:
    """One trading hour of the simulator compressed into ``s4_seconds``: bytes for one client."""
    users = write_users(work / "s4-users.json", ["demo"], services=1)
    main = sim_hour(p, work, users, [], "ours", both=True)
    # The same seed, so the same market, with every event sent at once: the unbatched stream.
    unbatched = sim_hour(p, work, users, ["--batch-window-ms", "0"], "window0", both=False)
    on, off, zero = main["deflate"], main["plain"], unbatched["plain"]
    body, head = main["snapshot"]
    # The wall span is one market hour (compressed); scale for the few ms the span ran over.
    hour = 3600 / (main["span"] * main["compression"])
    hour0 = 3600 / (unbatched["span"] * unbatched["compression"])
    polls = 3600 // 30 + 1
    request_bytes = 150  # GET line, Host, Authorization, Accept-Encoding, User-Agent (approximate)
    rest = polls * (len(body) + head + request_bytes)
    print(
        f"  S4: {main['span']:.1f} s wall = 1 market hour (compression {main['compression']:g}x; "
        f"requested ticks {main['tick_rate']:g}/s); batched: {off['frames']} frames, {off['events']} events; "
        f"window 0: {zero['frames']} frames, {zero['events']} events; snapshot {len(body)} B; "
        f"server events_in {main['stats']['events_in']}",
        file=sys.stderr,
    )
    kib = 1024
    return [
        row(
            "S4",
            f"wire bytes per market hour ({p.s4_seconds:g} s compressed), permessage-deflate",
            on["wire_bytes"] * hour / kib,
            "KiB",
            "no compression (client refuses deflate)",
            off["wire_bytes"] * hour / kib,
        ),
        row(
            "S4",
            "batch frames' payload per market hour",
            off["batch_payload_bytes"] * hour / kib,
            "KiB",
            "the same delivered events, each as its own JSON",
            off["per_event_bytes"] * hour / kib,
        ),
        row(
            "S4",
            "batch frames' payload per market hour",
            off["batch_payload_bytes"] * hour / kib,
            "KiB",
            "unbatched, uncoalesced (window 0, same seed), each event as its own JSON",
            zero["per_event_bytes"] * hour0 / kib,
        ),
        row(
            "S4",
            "wire bytes per market hour, permessage-deflate",
            on["wire_bytes"] * hour / kib,
            "KiB",
            f"REST polling every 30 s ({polls} snapshots)",
            rest / kib,
        ),
        row(
            "S4",
            "wire bytes per market hour, permessage-deflate, field deltas",
            main["deltas_deflate"]["wire_bytes"] * hour / kib,
            "KiB",
            "permessage-deflate, full events",
            on["wire_bytes"] * hour / kib,
        ),
        row(
            "S4",
            "wire bytes per market hour, permessage-deflate, field deltas",
            main["deltas_deflate"]["wire_bytes"] * hour / kib,
            "KiB",
            "the same delivered events in full, each as its own JSON (uncompressed)",
            off["per_event_bytes"] * hour / kib,
        ),
        row(
            "S4",
            "wire bytes per market hour, field deltas, no compression",
            main["deltas_plain"]["wire_bytes"] * hour / kib,
            "KiB",
            "no compression, full events",
            off["wire_bytes"] * hour / kib,
        ),
        row(
            "S4",
            "batch frames per market hour",
            off["types"].get("batch", 0) * hour,
            "frames",
            "window 0",
            zero["types"].get("batch", 0) * hour0,
        ),
    ]


# ------------------------------------------------------------------ S6


def s6_memory(p: Params, work: Path) -> list[dict[str, Any]]:
    names = [f"u{i:04d}" for i in range(p.s6_soak_clients)]
    symbols = [f"S{j:03d}" for j in range(50)]
    users = write_users(work / "s6-users.json", names, services=2)
    held = holdings(names, symbols, 5)
    slow_users = names[-p.s6_slow :] if p.s6_slow else []
    for user in slow_users:  # slow readers hold everything: big frames, so that they fall behind
        held[user] = list(symbols)
    fast_users = [u for u in names if u not in slow_users]
    with Server(users, work, MANY, name="s6") as server:
        time.sleep(0.5)
        idle = server.rss()
        setup_positions(server, users, held, work)
        url = f"{server.base}/ws/portfolio"
        first = start_clients(
            p.s6_connections,
            {"url": url, "tokens": [users.token(u) for u in fast_users], "hold_s": p.s6_soak_seconds + 300},
            workdir=work,
        )
        loads = list(first)
        try:
            wait_ready(first, timeout=120)
            time.sleep(0.5)
            with_connections = server.rss()
            more = p.s6_soak_clients - p.s6_slow - p.s6_connections
            if more > 0:
                offset = p.s6_connections % len(fast_users)
                tokens = [users.token(u) for u in fast_users[offset:] + fast_users[:offset]]
                extra = start_clients(
                    more, {"url": url, "tokens": tokens, "hold_s": p.s6_soak_seconds + 300}, workdir=work
                )
                loads += extra
                wait_ready(extra, timeout=120)
            if p.s6_slow:
                slow = Load(
                    "clients",
                    {
                        "url": url,
                        "tokens": [users.token(u) for u in slow_users],
                        "count": p.s6_slow,
                        "read_delay_s": 0.5,
                        "rcvbuf": 8192,
                        "hold_s": p.s6_soak_seconds + 300,
                    },
                    work,
                )
                loads.append(slow)
                slow.ready(120)
            before = server.stats()
            # The replay buffers as the plateau window opens: a plateau shows them no longer growing.
            plateau_opens = threading.Timer(
                PLATEAU_START * p.s6_soak_seconds, lambda: marks.append(server.stats())
            )
            marks: list[dict[str, Any]] = []
            with RssSampler(server.pid, interval=0.2) as sampler:
                start_rss = server.rss()
                soak_started = time.monotonic()
                plateau_opens.start()
                run_loads(
                    [
                        (
                            "ticks",
                            {
                                "base": server.base,
                                "service_tokens": users.service_tokens(2),
                                "symbols": symbols,
                                "rate": p.s6_rate,
                                "duration_s": p.s6_soak_seconds,
                            },
                        )
                    ],
                    timeout=p.s6_soak_seconds + 60,
                    workdir=work,
                )
                time.sleep(1.0)
            end_rss = server.rss()
            after = server.stats()
        finally:
            plateau_opens.cancel()
            results = collect(loads, timeout=60)
    plateau = plateau_of(sampler.samples, soak_started + PLATEAU_START * p.s6_soak_seconds)
    at_plateau = marks[0] if marks else after
    open_at_end = sum(r["still_open"] for r in results)
    total = sum(r["connected"] for r in results)
    resyncs = after["slow_consumer_resyncs"] - before["slow_consumer_resyncs"]
    closes = {k: v - before["disconnects_by_code"].get(k, 0) for k, v in after["disconnects_by_code"].items()}
    print(
        f"  S6: {total} clients ({p.s6_slow} slow), {open_at_end} open at the end; resyncs {resyncs}; "
        f"closes {closes}; {len(sampler.samples)} RSS samples",
        file=sys.stderr,
    )
    per_conn = (with_connections - idle) / max(p.s6_connections, 1)
    soak = f"soak {p.s6_soak_seconds:g} s, {total} clients ({p.s6_slow} slow), {p.s6_rate:g} ticks/s"
    return [
        row("S6", "server RSS idle (no users, no connections)", idle / MiB, "MiB"),
        row(
            "S6",
            f"server RSS with {p.s6_connections} subscribed connections",
            with_connections / MiB,
            "MiB",
            "idle",
            idle / MiB,
        ),
        row("S6", "RSS per subscribed connection", per_conn / 1024, "KiB"),
        row("S6", f"RSS at soak start [{soak}]", start_rss / MiB, "MiB"),
        row(
            "S6",
            "RSS peak during soak",
            max(sampler.peak, start_rss) / MiB,
            "MiB",
            "soak start",
            start_rss / MiB,
        ),
        row("S6", "RSS at soak end", end_rss / MiB, "MiB", "soak start", start_rss / MiB),
        # The replay buffers grow by design until each user holds its retention (10,000 events
        # or 5 minutes); what is left beyond them is what a leak would show.
        row("S6", "replay buffers at soak end (events kept for resume)", after["replay_events"], "events"),
        row("S6", "replay buffers at soak end (encoded size)", after["replay_bytes"] / MiB, "MiB"),
        row(
            "S6",
            "RSS at soak end less the replay buffers' encoded size",
            (end_rss - after["replay_bytes"]) / MiB,
            "MiB",
            "soak start",
            start_rss / MiB,
        ),
        row("S6", "slow-consumer resyncs during soak", resyncs, "resyncs"),
        # The last quarter of the soak, once every user's buffer holds its retention.
        row(
            "S6",
            "RSS plateau (median over the soak's last quarter)",
            plateau.median / MiB,
            "MiB",
            "soak start",
            start_rss / MiB,
        ),
        row("S6", "RSS drift over the plateau", plateau.drift_per_min / MiB, "MiB/min"),
        row(
            "S6",
            "replay buffers over the plateau (events kept, its start → end)",
            after["replay_events"],
            "events",
            "plateau start",
            at_plateau["replay_events"],
        ),
    ]


# The share of the soak after which every user's replay buffer has reached its retention at the
# full load (10,000 events take the 90 fast users about 14 minutes; the soak runs 20).
PLATEAU_START = 0.75


@dataclass(frozen=True)
class Plateau:
    median: float
    # Least-squares slope of RSS over the window, in bytes a minute: about 0 when flat.
    drift_per_min: float


def plateau_of(samples: list[tuple[float, int]], since: float) -> Plateau:
    window = [(t, rss) for t, rss in samples if t >= since] or samples[-1:]
    values = sorted(rss for _, rss in window)
    median = float(values[len(values) // 2]) if values else 0.0
    if len(window) < 2:
        return Plateau(median, 0.0)
    mean_t = statistics.fmean(t for t, _ in window)
    mean_rss = statistics.fmean(rss for _, rss in window)
    spread = sum((t - mean_t) ** 2 for t, _ in window)
    slope = sum((t - mean_t) * (rss - mean_rss) for t, rss in window) / spread if spread else 0.0
    return Plateau(median, slope * 60)


# ------------------------------------------------------------------ running

SCENARIOS: dict[str, Callable[[Params, Path], list[dict[str, Any]]]] = {
    "S1": s1_fill_latency,
    "S2": s2_tick_fan_out,
    "S3": s3_connection_scale,
    "S4": s4_bandwidth,
    "S6": s6_memory,
}
QUICK_SCENARIOS = ("S1", "S2", "S4", "S6")
FULL_SCENARIOS = ("S1", "S2", "S3", "S4", "S6")


def run(
    scenarios: list[str] | None = None, *, quick: bool = False, params: Params | None = None
) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Run the scenarios; their rows and, per failed scenario, why it failed."""
    p = params or (QUICK if quick else FULL)
    chosen = scenarios or list(QUICK_SCENARIOS if quick else FULL_SCENARIOS)
    raise_nofile()
    return run_scenarios(chosen, SCENARIOS, p, prefix="alphaflow-bench-")


def add_overrides(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--s3-connections", type=int, help="S3's target of idle connections")
    parser.add_argument("--s6-soak-seconds", type=float, help="S6's soak span")
    parser.add_argument(
        "--s2-no-baseline", action="store_true", help="S2 without its window-0 run (half the time)"
    )


def params_from(args: argparse.Namespace) -> Params:
    p = QUICK if args.quick else FULL
    if args.s3_connections:
        p = dataclasses.replace(p, s3_connections=args.s3_connections)
    if args.s6_soak_seconds:
        p = dataclasses.replace(p, s6_soak_seconds=args.s6_soak_seconds)
    if args.s2_no_baseline:
        p = dataclasses.replace(p, s2_baseline=False)
    return p


def parse_scenarios(text: str | None) -> list[str] | None:
    if not text:
        return None
    names = [s.strip().upper() for s in text.split(",") if s.strip()]
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        raise SystemExit(f"unknown scenarios {unknown}; choose from {', '.join(SCENARIOS)}")
    return names


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small loads, short spans (about a minute)")
    parser.add_argument("--scenarios", help="comma-separated: S1,S2,S3,S4,S6 (default: all of the mode)")
    add_overrides(parser)
    args = parser.parse_args()
    rows, failures = run(parse_scenarios(args.scenarios), quick=args.quick, params=params_from(args))
    print()
    print(table(rows))
    for name, why in failures.items():
        print(f"{name} failed: {why}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
