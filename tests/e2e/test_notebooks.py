"""Every notebook runs against a real server and simulator (nbval), and the report exports offline."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.jupyter import launch_chromium

pytestmark = pytest.mark.timeout(300)

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts" / "e2e"


def notebook_env(server, tmp_path: Path) -> dict[str, str]:
    token = (tmp_path / "demo.token").read_text().strip()
    return {
        **os.environ,
        "ALPHAFLOW_URL": f"{server.ws_base}/ws/portfolio",
        "ALPHAFLOW_TOKEN": token,
        "MPLBACKEND": "agg",
        "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
    }


def test_every_notebook_runs_against_the_simulator(start_server, tmp_path: Path) -> None:
    server = start_server("--source", "sim", "--sim-order-rate", "1", users_file=tmp_path / "users.json")
    notebooks = tmp_path / "notebooks"
    shutil.copytree(REPO / "notebooks", notebooks)

    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "--nbval-lax",
            "-p",
            "no:cacheprovider",
            "--rootdir",
            str(tmp_path),
            "-o",
            "addopts=",
            "-o",
            "timeout=240",
            str(notebooks),
        ],
        env=notebook_env(server, tmp_path),
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
        stdin=subprocess.DEVNULL,
        cwd=tmp_path,
    )

    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "failed" not in result.stdout.splitlines()[-1]


def test_the_exported_report_shows_the_snapshot_with_the_network_off(start_server, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    server = start_server("--source", "sim", users_file=tmp_path / "users.json")
    shutil.copy(REPO / "notebooks" / "report.ipynb", tmp_path / "report.ipynb")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "jupyter",
            "nbconvert",
            "--to",
            "html",
            "--execute",
            str(tmp_path / "report.ipynb"),
        ],
        env=notebook_env(server, tmp_path),
        check=True,
        capture_output=True,
        timeout=240,
        stdin=subprocess.DEVNULL,
    )
    page_file = tmp_path / "report.html"
    server.stop()  # nothing behind the page any more

    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        context = browser.new_context(offline=True)
        page = context.new_page()
        page.goto(page_file.as_uri())
        table = page.locator(".afl-snap table")
        table.wait_for(timeout=30_000)
        rows = table.locator("tbody tr").count()
        badge = page.locator(".afl-snap-badge").inner_text()
        as_of = page.locator(".afl-snap-asof").inner_text()
        coloured = page.locator(".afl-snap td.afl-gain, .afl-snap td.afl-loss").count()
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.locator(".afl-snap").screenshot(path=str(ARTIFACTS / "report-offline.png"))
        browser.close()

    assert rows >= 1
    assert badge == "Snapshot" and as_of.startswith("as of 20")
    assert coloured >= 1, "P&L cells carry their colours"
