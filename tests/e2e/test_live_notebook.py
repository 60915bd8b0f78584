"""The product as a quant meets it: JupyterLab in Chromium running live_portfolio.ipynb."""

from __future__ import annotations

import shutil
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.jupyter import JupyterLab, launch_chromium

pytestmark = [pytest.mark.timeout(300), pytest.mark.e2e]

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts" / "e2e"
BADGE_IS_LIVE = "document.querySelector('.afl-component-portfolio .afl-badge')?.textContent.trim() === 'Live'"


@pytest.fixture
def page(tmp_path: Path) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        yield page
        browser.close()


def shot(page: Any, name: str) -> None:
    """The page with the widget in view, and the widget alone."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    widget = page.locator(".afl-component-portfolio").first
    widget.scroll_into_view_if_needed()
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"))
    widget.screenshot(path=str(ARTIFACTS / f"{name}-widget.png"))


def run_all_cells(page: Any, done: str) -> None:
    """Run → Run All Cells until ``done`` (a selector) shows up.

    A click that lands while the kernel session is still settling can be lost,
    or raise a "Select Kernel" dialog that drops the queued cells; then accept
    the default kernel and run again.
    """
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    page.get_by_text("Python 3 (ipykernel) | Idle").first.wait_for(timeout=60_000)
    for _ in range(4):
        accept_kernel_dialog(page)
        page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
        page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()
        try:
            page.locator(done).first.wait_for(timeout=20_000)
            return
        except PlaywrightTimeout:
            page.keyboard.press("Escape")
    raise AssertionError(f"Run All Cells never produced {done}")


def accept_kernel_dialog(page: Any) -> None:
    """A click that lands while the session starts can raise "Select Kernel": take the default."""
    dialog = page.locator(".jp-Dialog", has_text="Select Kernel")
    if dialog.count():
        dialog.locator(".jp-mod-accept").click()


def test_the_live_notebook_streams_animates_and_survives_a_server_restart(
    start_server, tmp_path, page
) -> None:
    users_file = tmp_path / "users.json"
    server = start_server(
        "--source", "sim", "--sim-tick-rate", "60", "--batch-window-ms", "100", users_file=users_file
    )
    token = (tmp_path / "demo.token").read_text().strip()
    root = tmp_path / "notebooks"
    shutil.copytree(REPO / "notebooks", root)
    lab = JupyterLab(
        root, tmp_path / "lab", {"ALPHAFLOW_URL": f"{server.ws_base}/ws/portfolio", "ALPHAFLOW_TOKEN": token}
    ).start()
    # anywidget warns in the console when a widget module exports `render` by name.
    console: list[str] = []
    page.on("console", lambda message: console.append(message.text))
    try:
        page.goto(lab.url("/lab/tree/live_portfolio.ipynb"))

        # Position rows appear and the badge says Live.
        run_all_cells(page, done=".afl-component-portfolio tr[data-symbol]")
        badge = page.locator(".afl-component-portfolio .afl-badge")
        page.wait_for_function(f"() => {BADGE_IS_LIVE}", timeout=30_000)
        shot(page, "1-live")

        # A P&L cell animates when a price moves.
        page.locator(".afl-flash-gain, .afl-shake-loss, .afl-gain-static, .afl-loss-static").first.wait_for(
            timeout=30_000
        )
        shot(page, "2-animated")

        # While a later cell is busy, the table still updates.
        busy = page.locator(".jp-Notebook .jp-Cell").last
        busy.click()
        page.keyboard.press("Escape")
        page.keyboard.press("b")  # a new cell below
        page.keyboard.press("Enter")
        page.keyboard.type("import time\ntime.sleep(12)")
        page.keyboard.press("Shift+Enter")
        page.locator(".jp-Notebook-ExecutionIndicator[data-status='busy']").wait_for(timeout=10_000)
        before = page.locator(".afl-component-portfolio table").first.inner_text()
        page.wait_for_function(
            "(before) => document.querySelector('.afl-component-portfolio table').innerText !== before",
            arg=before,
            timeout=10_000,
        )
        assert page.locator(".jp-Notebook-ExecutionIndicator[data-status='busy']").count() == 1
        shot(page, "3-busy-cell-still-updating")

        # The server stops: the status turns red and the staleness warning appears.
        server.stop(signal.SIGTERM)
        page.locator(".afl-component-portfolio .afl-dot--offline").wait_for(timeout=60_000)
        page.locator(".afl-component-portfolio .afl-banner:not([hidden])").wait_for(timeout=30_000)
        shot(page, "4-offline")

        # It comes back: Live again, with no reload.
        server.start()
        page.wait_for_function(
            f"() => {BADGE_IS_LIVE} && document.querySelector('.afl-component-portfolio .afl-dot--live')",
            timeout=90_000,
        )
        assert page.locator(".afl-component-portfolio .afl-banner[hidden]").count() == 1
        assert badge.inner_text().strip() == "Live"
        shot(page, "5-live-again")

        deprecations = [m for m in console if "deprecated" in m.lower() and "render" in m.lower()]
        assert not deprecations, (
            f"expected no anywidget deprecation warning in the console, got: {deprecations}"
        )
    except Exception:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "failure.png"))
        raise
    finally:
        lab.stop()
