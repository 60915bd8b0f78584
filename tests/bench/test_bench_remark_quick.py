"""The re-mark driver runs end to end in quick mode and reports both figures (no time is asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(120)
def test_the_remark_driver_reports_remarks_per_cpu_second_beside_its_baseline() -> None:
    done = subprocess.run(
        [sys.executable, "bench/bench_remark.py", "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["users"] == 100 and report["rounds"] > 0
    assert report["remarks_per_cpu_s"] > 0 and report["derive_only_remarks_per_cpu_s"] > 0
