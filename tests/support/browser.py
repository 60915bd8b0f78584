"""Driving notebook front ends in Chromium (Playwright): run the cells, wait for values to move, shots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .wait import wait_until

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts" / "e2e"
WIDGET = ".afl-component-portfolio"
# Requests a page may make with the network off: its own file and inline data.
LOCAL_SCHEMES = ("file:", "data:", "blob:", "about:")


def shot(page: Any, name: str) -> None:
    """The page with the widget in view, and the widget alone (in test-artifacts/e2e/)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    widget = page.locator(WIDGET).first
    widget.scroll_into_view_if_needed()
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"))
    widget.screenshot(path=str(ARTIFACTS / f"{name}-widget.png"))


def failure_shot(page: Any, name: str = "failure") -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"))


def run_all_cells(page: Any, done: str, *, kernel_idle: Any = None) -> None:
    """Run → Run All Cells until ``done`` (a selector) shows up.

    ``kernel_idle`` is the locator that says the kernel is ready (JupyterLab's
    status bar by default). A click that lands while the kernel session is
    still settling can be lost, or raise a "Select Kernel" dialog that drops
    the queued cells; then accept the default kernel and run again.
    """
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    idle = kernel_idle if kernel_idle is not None else page.get_by_text("Python 3 (ipykernel) | Idle").first
    idle.wait_for(timeout=60_000)
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


def wait_for_change(page: Any, selector: str, *, timeout_s: float) -> tuple[str, str]:
    """Wait until the text of ``selector`` differs from what it is now; (before, after).

    Read through Playwright's locators, which see into shadow roots (marimo renders widgets in one).
    """
    element = page.locator(selector).first
    before: str = element.inner_text()
    after: str = wait_until(
        lambda: (text := element.inner_text()) != before and text,
        timeout=timeout_s,
        what=f"the text of {selector} to change from {before[:200]!r}",
        interval=0.2,
    )
    return before, after


def external_requests(requests: list[str]) -> list[str]:
    """The requests that would have left the machine."""
    return [url for url in requests if not url.startswith(LOCAL_SCHEMES)]
