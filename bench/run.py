"""Every benchmark in one table: the kernel-side figures and the server scenarios.

Runs ``bench/bench_client.py`` (a subprocess), ``bench/bench_server.py``'s scenarios and
``bench/bench_cluster.py``'s (S7, a cluster over Redis: needs redis-server), prints
one table (scenario | metric | value | baseline | ratio; ratio = value ÷ baseline) and writes
``bench/results/latest.json`` with the machine it ran on (a full run also
``bench/results/full-<date>.json``, kept in git). Figures only: nothing here passes or
fails on a time; the exit code is 1 only when a benchmark could not run.

    .venv/bin/python bench/run.py --quick                  # about a minute on 2 cores
    .venv/bin/python bench/run.py --scenarios S1,S2        # full mode of those two
    .venv/bin/python bench/run.py --scenarios S7           # the cluster against one node (minutes)
    .venv/bin/python bench/run.py                          # everything, full mode (long: S3, S6 soak)

Scenarios: client (bench_client.py), S1 fill latency, S2 tick fan-out, S3 connection scale
(full mode only unless named), S4 bandwidth, S6 memory, S7 cluster (latency across nodes, CPU
per event, Redis cost per event, resume from Redis).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import bench_cluster
import bench_server
from harness import row, table

BENCH_DIR = Path(__file__).resolve().parent
RESULTS = BENCH_DIR / "results"
CLIENT_ROW = re.compile(
    r"^(?P<name>\S.*?|\s+baseline:.*?)\s+(?P<median>\d+\.\d+)\s+(?P<p95>\d+\.\d+)(?:\s+(?P<ratio>[\d.]+)x)?\s*$"
)


def client_rows(output: str) -> list[dict[str, Any]]:
    """Rows from bench_client.py's table (median ms; a row's baseline is the 'baseline:' row after it)."""
    parsed = []
    for line in output.splitlines():
        match = CLIENT_ROW.match(line)
        if match:
            parsed.append(
                (match["name"].strip(), float(match["median"]), float(match["p95"]), match["ratio"])
            )
    rows = []
    for i, (name, median, p95, has_ratio) in enumerate(parsed):
        baseline = None
        if has_ratio and i + 1 < len(parsed) and parsed[i + 1][0].startswith("baseline"):
            baseline = parsed[i + 1]
        r = row(
            "client",
            f"{name} (median)",
            median,
            "ms",
            baseline[0].removeprefix("baseline:").strip() if baseline else None,
            baseline[1] if baseline else None,
        )
        r["p95"] = p95
        rows.append(r)
    return rows


def widget_rows(output: str) -> list[dict[str, Any]]:
    """Rows from bench_client.py's ``widget: name | value | unit | baseline | baseline value`` lines."""
    rows = []
    for line in output.splitlines():
        if line.startswith("widget: "):
            name, value, unit, baseline, baseline_value = (p.strip() for p in line[8:].split("|"))
            rows.append(row("client", f"widget: {name}", float(value), unit, baseline, float(baseline_value)))
    return rows


def run_client(quick: bool) -> tuple[list[dict[str, Any]], str]:
    command = [sys.executable, str(BENCH_DIR / "bench_client.py"), *(["--quick"] if quick else [])]
    done = subprocess.run(command, capture_output=True, text=True, timeout=900, check=False)
    print(done.stdout, end="", flush=True)
    if done.returncode != 0:
        raise RuntimeError(f"bench_client.py exited {done.returncode}: {done.stderr[-1000:]}")
    rows = client_rows(done.stdout) + widget_rows(done.stdout)
    if not rows:
        raise RuntimeError("bench_client.py printed no rows")
    return rows, done.stdout


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small loads and short spans (about a minute)")
    parser.add_argument(
        "--scenarios", help="comma-separated from client,S1,S2,S3,S4,S6,S7 (default: all of the mode)"
    )
    parser.add_argument("--output", type=Path, default=RESULTS / "latest.json")
    bench_server.add_overrides(parser)
    args = parser.parse_args()

    if args.scenarios:
        chosen = [s.strip() for s in args.scenarios.split(",") if s.strip()]
        chosen = ["client" if s.lower() == "client" else s.upper() for s in chosen]
        known = {"client", *bench_server.SCENARIOS, *bench_cluster.SCENARIOS}
        unknown = [s for s in chosen if s not in known]
        if unknown:
            parser.error(f"unknown scenarios {unknown}")
    else:
        server = bench_server.QUICK_SCENARIOS if args.quick else bench_server.FULL_SCENARIOS
        chosen = ["client", *server, *bench_cluster.SCENARIOS]

    started = time.monotonic()
    rows: list[dict[str, Any]] = []
    failures: dict[str, str] = {}
    client_output = ""
    if "client" in chosen:
        print("client: running bench_client.py", flush=True)
        try:
            client, client_output = run_client(args.quick)
            rows += client
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            failures["client"] = str(exc)
            print(f"client: FAILED {exc}", file=sys.stderr)
    server_scenarios = [s for s in chosen if s in bench_server.SCENARIOS]
    if server_scenarios:
        server_rows, server_failures = bench_server.run(
            server_scenarios, quick=args.quick, params=bench_server.params_from(args)
        )
        rows += server_rows
        failures.update(server_failures)
    cluster_scenarios = [s for s in chosen if s in bench_cluster.SCENARIOS]
    if cluster_scenarios:
        cluster_rows, cluster_failures = bench_cluster.run(cluster_scenarios, quick=args.quick)
        rows += cluster_rows
        failures.update(cluster_failures)

    elapsed = time.monotonic() - started
    print()
    print(f"AlphaFlow Live benchmarks ({'quick' if args.quick else 'full'}; ratio = value ÷ baseline)")
    print(table(rows))
    print(f"\n{len(rows)} rows in {elapsed:.1f} s; results in {args.output}")
    for name, why in failures.items():
        print(f"{name} failed: {why}", file=sys.stderr)

    args.output.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": platform.machine(),  # uname -m
        "system": platform.platform(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "quick": args.quick,
        "scenarios": chosen,
        "elapsed_s": round(elapsed, 1),
        "failures": failures,
        "rows": rows,
        "client_output": client_output,
    }
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    if not args.quick and not args.scenarios:
        # A full run is kept under its date too (and in git: the README's table comes from it);
        # quick runs, such as make test's, only ever replace latest.json.
        archive = RESULTS / f"full-{report['date'][:10]}.json"
        archive.write_text(json.dumps(report, indent=2) + "\n")
        print(f"full run archived in {archive}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
