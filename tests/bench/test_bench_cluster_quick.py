"""S7, the cluster benchmark, runs end to end in quick mode: its rows print and land in the report.

As test_bench_quick.py, figures are not checked (benchmarks never assert times); only that S7
ran each of its four parts against a redis-server and nodes of its own, and left none running.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# A metric of each part of S7: latency across nodes, CPU per event, Redis cost per event, resume.
PARTS = (
    "fill → client latency p50, cluster",
    "node CPU per 1,000 committed events, 2-node cluster",
    "Redis commands per committed event",
    "resume: subscribe → last recovered batch, cluster node with no stream",
)


def processes_mentioning(text: str) -> list[str]:
    """Command lines of running processes that mention ``text`` (the run's own directory)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in args:
            found.append(args)
    return found


@pytest.mark.timeout(180)
def test_quick_cluster_benchmark_prints_every_part_and_leaves_no_process(tmp_path: Path) -> None:
    output = tmp_path / "latest.json"
    done = subprocess.run(
        [sys.executable, "bench/run.py", "--quick", "--scenarios", "S7", "--output", str(output)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=170,
        check=False,
        # The run's directory (Redis's files, the nodes' users file) is made under tmp_path.
        env={**os.environ, "TMPDIR": str(tmp_path)},
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    table_start = done.stdout.index("scenario | metric")
    table_rows = [line for line in done.stdout[table_start:].splitlines()[2:] if "|" in line]
    assert table_rows, f"no rows in the table:\n{done.stdout[table_start:]}"
    assert {line.split("|")[0].strip() for line in table_rows} == {"S7"}
    for part in PARTS:
        assert any(part in line for line in table_rows), f"no {part!r} row:\n{done.stdout[table_start:]}"

    report = json.loads(output.read_text())
    assert report["quick"] is True
    assert report["failures"] == {}
    assert report["scenarios"] == ["S7"]
    rows = report["rows"]
    assert {r["scenario"] for r in rows} == {"S7"}
    assert [r["metric"] for r in rows if r["value"] is None] == [], "every figure was measured"
    assert processes_mentioning(str(tmp_path)) == [], "Redis or a node of the run is still running"
