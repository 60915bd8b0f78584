"""The product as a quant meets it: JupyterLab in Chromium running live_portfolio.ipynb."""

from __future__ import annotations

import shutil
import signal
from pathlib import Path

import pytest

from tests.support.browser import failure_shot, run_all_cells, shot
from tests.support.jupyter import JupyterLab

pytestmark = [pytest.mark.timeout(300), pytest.mark.e2e]

REPO = Path(__file__).resolve().parents[2]
BADGE_IS_LIVE = "document.querySelector('.afl-component-portfolio .afl-badge')?.textContent.trim() === 'Live'"


# The lowest contrast ratio (WCAG) between a text element's colour and the background it is drawn
# on (the nearest ancestor with an opaque one), over the widget's visible text, flashing cells aside.
WORST_CONTRAST = """(root) => {
  const rgb = (c) => (c.match(/[\\d.]+/g) || []).map(Number);
  const lum = ([r, g, b]) => [r, g, b].map((v) => { v /= 255; return v <= 0.03928 ? v / 12.92
    : ((v + 0.055) / 1.055) ** 2.4; }).reduce((a, v, i) => a + v * [0.2126, 0.7152, 0.0722][i], 0);
  const background = (el) => { for (; el; el = el.parentElement) { const c = rgb(getComputedStyle(el)
    .backgroundColor); if (c.length === 3 || (c.length === 4 && c[3] > 0.5)) return c.slice(0, 3); }
    return [255, 255, 255]; };
  let worst = { ratio: 99, text: '' };
  for (const el of document.querySelector(root).querySelectorAll('*')) {
    const own = [...el.childNodes].some((n) => n.nodeType === 3 && n.textContent.trim());
    // A flashing cell's tint lasts a moment; the text is judged against the table once it fades.
    const flashing = el.closest('.afl-flash-gain, .afl-shake-loss, .afl-gain-static, .afl-loss-static');
    if (!own || flashing || !el.getClientRects().length) continue;
    const [a, b] = [lum(rgb(getComputedStyle(el).color).slice(0, 3)), lum(background(el))];
    const ratio = (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
    if (ratio < worst.ratio) worst = { ratio, text: el.textContent.trim().slice(0, 40), cls: el.className };
  }
  return worst;
}"""


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

        # In JupyterLab Dark every part stays readable: text against what it is drawn on.
        page.locator(".lm-MenuBar-itemLabel", has_text="Settings").first.click()
        page.locator(".lm-Menu-itemLabel", has_text="Theme").first.hover()
        page.locator(".lm-Menu-itemLabel", has_text="JupyterLab Dark").first.click()
        page.wait_for_function("() => document.body.dataset.jpThemeLight === 'false'", timeout=30_000)
        page.wait_for_timeout(500)  # the theme's stylesheet is applied after the attribute moves
        worst = page.evaluate(WORST_CONTRAST, ".afl-component-portfolio")
        shot(page, "6-dark")
        assert worst["ratio"] >= 4.5, f"unreadable in the dark theme: {worst}"

        deprecations = [m for m in console if "deprecated" in m.lower() and "render" in m.lower()]
        assert not deprecations, (
            f"expected no anywidget deprecation warning in the console, got: {deprecations}"
        )
    except Exception:
        failure_shot(page)
        raise
    finally:
        lab.stop()
