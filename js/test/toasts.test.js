import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { describe, expect, test, vi } from "vitest";
import { fill, position, rowsOf, upserting } from "./fake-model.js";
import { mount, nextFrame, useWidgetHarness } from "./harness.js";

useWidgetHarness();

const region = (el) => el.querySelector(".afl-toasts");
const toasts = (el) => [...region(el).children];
const fills = (n, from = 0) =>
  upserting(
    Array.from({ length: n }, (_, i) => fill(`f${from + i}`, { order_id: `o${from + i}`, qty: String(from + i + 1) })),
  );
const alert = (name, message, fired_at = "2025-01-02T15:00:07+00:00") => ({ name, message, fired_at });

describe("toasts", () => {
  test("at most 3 show at once, the newest", () => {
    const { el, model } = mount();
    model.sendDelta({ version: 2, fills: fills(5) });
    nextFrame();
    expect(toasts(el).map((t) => t.textContent)).toEqual([
      "Filled: BUY 3 AAPL @ 187.20",
      "Filled: BUY 4 AAPL @ 187.20",
      "Filled: BUY 5 AAPL @ 187.20",
    ]);
    model.sendDelta({ version: 3, fills: fills(2, 5) });
    nextFrame();
    expect(toasts(el)).toHaveLength(3);
    expect(toasts(el).at(-1).textContent).toBe("Filled: BUY 7 AAPL @ 187.20");
  });

  test("sit in the header, over no header of any table", () => {
    const { el } = mount({ rows: rowsOf([position("AAPL")]) });
    expect(region(el).parentElement.classList.contains("afl-header")).toBe(true);
    expect(region(el).closest(".afl-section, table")).toBeNull();
    // The header comes before every table, in the flow: nothing is laid over a table.
    const positions = el.querySelector('table[aria-label="Positions"]');
    expect(region(el).compareDocumentPosition(positions) & Node.DOCUMENT_POSITION_FOLLOWING).toBeTruthy();
    expect(positions.contains(region(el))).toBe(false);
  });

  test("a fill's toast stays 4 s; its full text is its title", () => {
    const { el, model } = mount();
    model.sendDelta({ version: 2, fills: fills(1) });
    nextFrame();
    expect(toasts(el)[0].title).toBe("Filled: BUY 1 AAPL @ 187.20");
    expect(toasts(el)[0].classList.contains("afl-toast--fill")).toBe(true);
    vi.advanceTimersByTime(4000);
    expect(toasts(el)).toHaveLength(0);
  });

  test("toast and fill prices keep their precision", () => {
    const { el, model } = mount();
    const shib = fill("f", { symbol: "SHIB/USD", qty: "1000000", price: "0.00001234" });
    model.sendDelta({ version: 2, fills: upserting([shib]) });
    nextFrame();
    expect(toasts(el)[0].textContent).toBe("Filled: BUY 1,000,000 SHIB/USD @ 0.00001234");
  });

  test("no animation under prefers-reduced-motion (the toast's slide-in included)", () => {
    const css = readFileSync(join(dirname(fileURLToPath(import.meta.url)), "../src/widget.css"), "utf8");
    expect(css).toMatch(/\.afl-toast\s*\{[^}]*animation:\s*afl-toast-in/);
    const reduced = css.slice(css.indexOf("@media (prefers-reduced-motion: reduce)"));
    expect(reduced).toMatch(/\.afl-root \*[^{]*\{[^}]*animation:\s*none !important/);
  });
});

describe("alert toasts", () => {
  test("an alert in a delta shows as a toast of its own style, with its name and message", () => {
    const { el, model } = mount();
    model.sendDelta({ version: 2, alerts: [alert("drawdown", "Equity fell below $99,000")] });
    nextFrame();
    const [toast] = toasts(el);
    expect(toast.classList.contains("afl-toast--alert")).toBe(true);
    expect(toast.classList.contains("afl-toast--fill")).toBe(false);
    expect(toast.textContent).toBe("Alert drawdown: Equity fell below $99,000");
    expect(toast.title).toMatch(/^drawdown: Equity fell below \$99,000 — fired at 10:00:07 /);
    expect(region(el).getAttribute("aria-live")).toBe("polite");
  });

  test("an alert stays 8 s", () => {
    const { el, model } = mount();
    model.sendDelta({ version: 2, alerts: [alert("a", "m")] });
    nextFrame();
    vi.advanceTimersByTime(7999);
    expect(toasts(el)).toHaveLength(1);
    vi.advanceTimersByTime(1);
    expect(toasts(el)).toHaveLength(0);
  });

  test("a burst of fills pushes out fills first, not the alert", () => {
    const { el, model } = mount();
    model.sendDelta({ version: 2, alerts: [alert("limit", "Gross above 2x")] });
    nextFrame();
    model.sendDelta({ version: 3, fills: fills(4) });
    nextFrame();
    const shown = toasts(el);
    expect(shown).toHaveLength(3);
    expect(shown[0].textContent).toBe("Alert limit: Gross above 2x");
    expect(shown.slice(1).map((t) => t.textContent)).toEqual([
      "Filled: BUY 3 AAPL @ 187.20",
      "Filled: BUY 4 AAPL @ 187.20",
    ]);
  });

  test("an alert with only a message (or a name) reads it alone", () => {
    const { el, model } = mount();
    model.sendDelta({ version: 2, alerts: [{ name: "", message: "VIX spiked" }, { name: "quiet", message: "" }] });
    nextFrame();
    expect(toasts(el).map((t) => t.textContent)).toEqual(["Alert VIX spiked", "Alert quiet"]);
  });

  test("a replayed delta shows its alert no second time", () => {
    const { el, model } = mount();
    const delta = { version: 2, alerts: [alert("a", "once")] };
    model.sendDelta(delta);
    model.sendDelta({ ...delta });
    nextFrame();
    expect(toasts(el)).toHaveLength(1);
  });

  test("views without toasts ignore alerts", () => {
    const { el, model } = mount({ component: "positions" });
    model.sendDelta({ version: 2, alerts: [alert("a", "m")] });
    nextFrame();
    expect(region(el)).toBeNull();
  });
});
