"""The benchmarks run end to end in quick mode: every scenario prints a row and lands in latest.json.

Figures are not checked (benchmarks never assert times); only that each quick scenario ran.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# S7 (the cluster) has its own quick test, test_bench_cluster_quick.py.
QUICK_SCENARIOS = ("client", "S1", "S2", "S4", "S6")


@pytest.mark.timeout(240)
def test_quick_benchmarks_print_a_row_per_scenario_and_write_latest_json() -> None:
    done = subprocess.run(
        [sys.executable, "bench/run.py", "--quick", "--scenarios", ",".join(QUICK_SCENARIOS)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=230,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    table_start = done.stdout.index("scenario | metric")
    table_rows = [
        line.split("|")[0].strip() for line in done.stdout[table_start:].splitlines()[2:] if "|" in line
    ]
    for scenario in QUICK_SCENARIOS:
        assert scenario in table_rows, f"no {scenario} row in the table:\n{done.stdout[table_start:]}"

    report = json.loads((ROOT / "bench" / "results" / "latest.json").read_text())
    assert report["quick"] is True
    assert report["failures"] == {}
    assert {"date", "machine", "cpu_count", "python"} <= report.keys()
    assert set(QUICK_SCENARIOS) <= {r["scenario"] for r in report["rows"]}
    assert set(QUICK_SCENARIOS) <= set(report["scenarios"])
