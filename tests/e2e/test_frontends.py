"""The widget beyond JupyterLab, in Chromium: Notebook 7 (`jupyter notebook`) and `marimo run`."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from tests.support.browser import WIDGET, failure_shot, run_all_cells, shot, wait_for_change
from tests.support.jupyter import Marimo, Notebook7
from tests.support.server import ServerProcess, StartServer

pytestmark = [pytest.mark.timeout(180), pytest.mark.e2e]

REPO = Path(__file__).resolve().parents[2]
FILL_LINE = re.compile(r"filled (buy|sell) \d+ [A-Z]+ @ \d")


def lively_server(start_server: StartServer, tmp_path: Path) -> tuple[ServerProcess, dict[str, str]]:
    """A simulated market that ticks and trades fast, and the environment that reaches it as 'demo'."""
    server = start_server(
        "--source", "sim", "--sim-tick-rate", "60", "--sim-order-rate", "2", "--batch-window-ms", "100",
        users_file=tmp_path / "users.json",
    )  # fmt: skip
    token = (tmp_path / "demo.token").read_text().strip()
    return server, {"ALPHAFLOW_URL": f"{server.ws_base}/ws/portfolio", "ALPHAFLOW_TOKEN": token}


def test_notebook_7_shows_the_widget_moving_and_fills_in_their_own_cell(start_server, tmp_path, page) -> None:
    _, env = lively_server(start_server, tmp_path)
    root = tmp_path / "notebooks"
    shutil.copytree(REPO / "notebooks", root)
    notebook = Notebook7(root, tmp_path / "notebook7", env).start()
    try:
        page.goto(notebook.url("/notebooks/live_portfolio.ipynb"))
        run_all_cells(
            page,
            done=f"{WIDGET} tr[data-symbol]",
            kernel_idle=page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']"),
        )
        before, after = wait_for_change(page, f"{WIDGET} table", timeout_s=20)
        assert before != after
        shot(page, "notebook7")

        # The fill callback writes to the Output its own cell shows, never under the last cell.
        log = page.locator(".jp-CodeCell", has_text="stop_listening").locator(".jp-OutputArea").first
        page.wait_for_function(
            "(log) => /filled (buy|sell) \\d+ [A-Z]+ @ \\d/.test(log.innerText)",
            arg=log.element_handle(),
            timeout=30_000,
        )
        last_cell = page.locator(".jp-CodeCell").last.locator(".jp-OutputArea").first
        assert not FILL_LINE.search(last_cell.inner_text()), "a fill line landed under the last cell"
        assert FILL_LINE.search(log.inner_text())
    except Exception:
        failure_shot(page, "notebook7-failure")
        raise
    finally:
        notebook.stop()


def test_a_marimo_app_shows_the_widget_moving(start_server, tmp_path, page) -> None:
    _, env = lively_server(start_server, tmp_path)
    app_file = tmp_path / "live_marimo.py"
    shutil.copy(REPO / "notebooks" / "live_marimo.py", app_file)
    app = Marimo(app_file, tmp_path / "marimo", env).start()
    try:
        page.goto(app.url("/"))
        page.locator(f"{WIDGET} tr[data-symbol]").first.wait_for(timeout=60_000)
        before, after = wait_for_change(page, f"{WIDGET} table", timeout_s=20)
        assert before != after
        page.locator(f"{WIDGET} .afl-badge", has_text="Live").wait_for(timeout=20_000)
        shot(page, "marimo")
    except Exception:
        failure_shot(page, "marimo-failure")
        raise
    finally:
        app.stop()
