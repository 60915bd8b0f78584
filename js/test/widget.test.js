import { describe, expect, test, vi } from "vitest";
import * as widgetModule from "../src/widget.js";
import widget, { classifyFreshness, mergeDelta } from "../src/widget.js";
import { account, createFakeModel, fill, order, position, rowsOf, stubReducedMotion, upserting } from "./fake-model.js";
import { NOW, mount, mountView, nextFrame, useWidgetHarness } from "./harness.js";

// anywidget calls render through the default export; a named `render` export would make it warn.
const { render } = widget;

useWidgetHarness();

const plCell = (el, symbol) => el.querySelector(`tr[data-symbol="${symbol}"] td[data-col="unrealized_pl"]`);
const cell = (el, symbol, col) => el.querySelector(`tr[data-symbol="${symbol}"] td[data-col="${col}"]`);
const symbols = (el) =>
  [...el.querySelectorAll('table[aria-label="Positions"] tbody tr')].map((tr) => tr.dataset.symbol);
const header = (el, label) =>
  [...el.querySelectorAll('table[aria-label="Positions"] thead th')].find((th) => th.textContent === label);

function deltaUpserting(version, positions, extra = {}) {
  return {
    version,
    positions: { upsert: Object.fromEntries(positions.map((p) => [p.symbol, p])), remove: [] },
    orders: { upsert: {}, remove: [] },
    fills: { upsert: {}, remove: [] },
    equity: [],
    ...extra,
  };
}

describe("module shape", () => {
  test("exports render as default.render", () => {
    expect(widget.render).toBe(render);
  });

  test("has no named render export, which anywidget reports as deprecated", () => {
    expect(Object.keys(widgetModule)).not.toContain("render");
    expect(typeof widget.render).toBe("function");
  });

  test("root carries afl-root and the component class", () => {
    const { el } = mount({ component: "positions" });
    const root = el.firstElementChild;
    expect(root.className).toBe("afl-root afl-component-positions");
    expect(el.querySelector('table[aria-label="Positions"]')).not.toBeNull();
    expect(el.querySelector(".afl-badge")).toBeNull();
    expect(el.querySelector(".afl-dot")).toBeNull();
  });

  test("status component shows only the dot and status text, labelled for screen readers", () => {
    const { el, model } = mount({ component: "status", status: "reconnecting" });
    const dot = el.querySelector(".afl-dot");
    expect(dot.getAttribute("role")).toBe("img");
    expect(dot.getAttribute("aria-label")).toBe("Connection: reconnecting");
    expect(dot.classList.contains("afl-dot--warn")).toBe(true);
    expect(el.querySelector("table")).toBeNull();

    model.set("status", "live");
    expect(dot.getAttribute("aria-label")).toBe("Connection: live");
    expect(dot.classList.contains("afl-dot--live")).toBe(true);
    expect(dot.classList.contains("afl-dot--warn")).toBe(false);
    model.set("status", "closed");
    expect(dot.classList.contains("afl-dot--offline")).toBe(true);
  });
});

describe("P&L animation", () => {
  test("flash on gain: unrealized_pl up adds afl-flash-gain to that row's P&L cell", () => {
    const { el, model } = mount({ rows: rowsOf([position("AAPL", { unrealized_pl: "10.00" }), position("MSFT")]) });
    model.sendDelta(deltaUpserting(2, [position("AAPL", { unrealized_pl: "12.50" })]));
    nextFrame();
    expect(plCell(el, "AAPL").classList.contains("afl-flash-gain")).toBe(true);
    expect(plCell(el, "AAPL").classList.contains("afl-shake-loss")).toBe(false);
    expect(plCell(el, "MSFT").classList.contains("afl-flash-gain")).toBe(false);
  });

  test("shake on loss: unrealized_pl down adds afl-shake-loss", () => {
    const { el, model } = mount({ rows: rowsOf([position("AAPL", { unrealized_pl: "10.00" })]) });
    model.sendDelta(deltaUpserting(2, [position("AAPL", { unrealized_pl: "-3.00" })]));
    nextFrame();
    expect(plCell(el, "AAPL").classList.contains("afl-shake-loss")).toBe(true);
    expect(plCell(el, "AAPL").classList.contains("afl-flash-gain")).toBe(false);
  });

  test("animation class is removed on animationend so it can replay", () => {
    const { el, model } = mount({ rows: rowsOf([position("AAPL", { unrealized_pl: "10.00" })]) });
    model.sendDelta(deltaUpserting(2, [position("AAPL", { unrealized_pl: "11.00" })]));
    nextFrame();
    plCell(el, "AAPL").dispatchEvent(new Event("animationend"));
    expect(plCell(el, "AAPL").classList.contains("afl-flash-gain")).toBe(false);
    expect(vi.getTimerCount()).toBe(1); // only the freshness ticker: the fallback timer went too
  });

  test("animation class is removed after the 1 s fallback when animationend never fires", () => {
    const { el, model } = mount({ rows: rowsOf([position("AAPL", { unrealized_pl: "10.00" })]) });
    model.sendDelta(deltaUpserting(2, [position("AAPL", { unrealized_pl: "9.00" })]));
    nextFrame();
    vi.advanceTimersByTime(999);
    expect(plCell(el, "AAPL").classList.contains("afl-shake-loss")).toBe(true);
    vi.advanceTimersByTime(1);
    expect(plCell(el, "AAPL").classList.contains("afl-shake-loss")).toBe(false);
  });

  test("no animation under reduced motion: only the static colour classes", () => {
    stubReducedMotion(vi, true);
    const { el, model } = mount({
      rows: rowsOf([position("AAPL", { unrealized_pl: "10.00" }), position("MSFT", { unrealized_pl: "5.00" })]),
    });
    model.sendDelta(
      deltaUpserting(2, [position("AAPL", { unrealized_pl: "11.00" }), position("MSFT", { unrealized_pl: "4.00" })]),
    );
    nextFrame();
    expect([...plCell(el, "AAPL").classList]).toContain("afl-gain-static");
    expect([...plCell(el, "MSFT").classList]).toContain("afl-loss-static");
    for (const symbol of ["AAPL", "MSFT"]) {
      expect(plCell(el, symbol).classList.contains("afl-flash-gain")).toBe(false);
      expect(plCell(el, symbol).classList.contains("afl-shake-loss")).toBe(false);
    }
  });

  test("reduced motion switched on while rendered takes effect at the next change", () => {
    const motion = stubReducedMotion(vi, false);
    const { el, model } = mount({ rows: rowsOf([position("AAPL", { unrealized_pl: "10.00" })]) });
    motion.set(true);
    model.sendDelta(deltaUpserting(2, [position("AAPL", { unrealized_pl: "11.00" })]));
    nextFrame();
    expect(plCell(el, "AAPL").classList.contains("afl-gain-static")).toBe(true);
    expect(plCell(el, "AAPL").classList.contains("afl-flash-gain")).toBe(false);
  });
});

describe("freshness", () => {
  test("badge moves Live → Delayed → Stale as time passes without data", () => {
    const { el } = mount({ component: "badge" });
    const badge = el.querySelector(".afl-badge");
    expect(badge.getAttribute("role")).toBe("status");
    expect(badge.textContent).toBe("Live");
    expect(badge.classList.contains("afl-badge--live")).toBe(true);
    expect(el.querySelector(".afl-ago").textContent).toBe("updated 0s ago");

    vi.advanceTimersByTime(6000);
    expect(badge.textContent).toBe("Delayed");
    expect(badge.classList.contains("afl-badge--delayed")).toBe(true);
    expect(badge.classList.contains("afl-badge--live")).toBe(false);
    expect(el.querySelector(".afl-ago").textContent).toBe("updated 6s ago");

    vi.advanceTimersByTime(25000);
    expect(badge.textContent).toBe("Stale");
    expect(badge.classList.contains("afl-badge--stale")).toBe(true);
  });

  test("badge is Offline when the status is offline, whatever the age", () => {
    const { el, model } = mount({ component: "badge" });
    model.set("status", "offline");
    const badge = el.querySelector(".afl-badge");
    expect(badge.textContent).toBe("Offline");
    expect(badge.classList.contains("afl-badge--offline")).toBe(true);
  });

  test("badge is Offline with no data yet when last_data_ms is null", () => {
    const { el } = mount({ component: "badge", status: "connecting", last_data_ms: null });
    expect(el.querySelector(".afl-badge").textContent).toBe("Offline");
    expect(el.querySelector(".afl-ago").textContent).toBe("no data yet");
  });

  test("badge follows the live_s and delayed_s thresholds", () => {
    const { el } = mount({ component: "badge", live_s: 1, delayed_s: 2 });
    vi.advanceTimersByTime(2000);
    expect(el.querySelector(".afl-badge").textContent).toBe("Delayed");
    vi.advanceTimersByTime(1000);
    expect(el.querySelector(".afl-badge").textContent).toBe("Stale");
  });

  test("banner shows when stale and hides when live again", () => {
    const { el, model } = mount();
    const banner = el.querySelector(".afl-banner");
    expect(banner.getAttribute("role")).toBe("alert");
    expect(banner.hidden).toBe(true);

    vi.advanceTimersByTime(42000);
    expect(banner.hidden).toBe(false);
    expect(banner.textContent).toBe("Data is stale: last update 42s ago");

    model.set("last_data_ms", Date.now()); // a heartbeat arrives
    expect(banner.hidden).toBe(true);
    expect(el.querySelector(".afl-badge").textContent).toBe("Live");
  });

  test("banner says offline and carries the error", () => {
    const { el, model } = mount();
    model.set("error", "the server refused the token (HTTP 401)");
    model.set("status", "offline");
    const banner = el.querySelector(".afl-banner");
    expect(banner.hidden).toBe(false);
    expect(banner.textContent).toBe("Offline: showing the last known state — the server refused the token (HTTP 401)");
  });

  test("banner says why the stream fell back to polling, and hides once it is live again", () => {
    const { el, model } = mount();
    const reason = "the server refused the stream (HTTP 429): user 'alice' already has 5 connections";
    model.set("status_reason", reason);
    model.set("status", "polling");
    const banner = el.querySelector(".afl-banner");
    expect(banner.hidden).toBe(false);
    expect(banner.textContent).toBe(`Polling the snapshot — ${reason}`);

    model.set("status_reason", "");
    model.set("status", "live");
    expect(banner.hidden).toBe(true);
  });

  test("banner keeps quiet about the reason of a brief reconnect", () => {
    const { el, model } = mount();
    model.set("status_reason", "cannot connect to ws://127.0.0.1:8765/ws/portfolio");
    model.set("status", "reconnecting");
    expect(el.querySelector(".afl-banner").hidden).toBe(true);
  });

  test("classifyFreshness matches the Python rule at the boundaries", () => {
    expect(classifyFreshness("live", NOW, NOW + 5000)).toBe("live");
    expect(classifyFreshness("live", NOW, NOW + 5001)).toBe("delayed");
    expect(classifyFreshness("polling", NOW, NOW + 30000)).toBe("delayed");
    expect(classifyFreshness("live", NOW, NOW + 30001)).toBe("stale");
    expect(classifyFreshness("closed", NOW, NOW)).toBe("offline");
    expect(classifyFreshness("live", null, NOW)).toBe("offline");
  });
});

describe("positions table", () => {
  test("formats numbers with thousands separators, signs and gain/loss classes", () => {
    const { el } = mount({
      rows: rowsOf([
        position("AAPL", {
          market_value: "18720.5",
          unrealized_pl: "1234.5",
          unrealized_plpc: "0.015237",
          change_today: "-0.0042",
        }),
      ]),
    });
    expect(cell(el, "AAPL", "market_value").textContent).toBe("18,720.50");
    expect(cell(el, "AAPL", "unrealized_pl").textContent).toBe("+1,234.50");
    expect(cell(el, "AAPL", "unrealized_plpc").textContent).toBe("+1.52%");
    expect(cell(el, "AAPL", "change_today").textContent).toBe("-0.42%");
    expect(cell(el, "AAPL", "unrealized_pl").classList.contains("afl-gain")).toBe(true);
    expect(cell(el, "AAPL", "change_today").classList.contains("afl-loss")).toBe(true);
  });

  test("sorting by a numeric column both ways sets aria-sort", () => {
    const { el } = mount({
      rows: rowsOf([
        position("AAPL", { market_value: "900.00" }),
        position("MSFT", { market_value: "10000.00" }),
        position("TSLA", { market_value: "2000.00" }),
      ]),
    });
    const th = header(el, "Market value");
    expect(th.getAttribute("aria-sort")).toBe("none");

    th.click();
    expect(symbols(el)).toEqual(["AAPL", "TSLA", "MSFT"]); // numeric, not "10000" < "2000" < "900"
    expect(th.getAttribute("aria-sort")).toBe("ascending");
    expect(header(el, "Symbol").getAttribute("aria-sort")).toBe("none");

    th.click();
    expect(symbols(el)).toEqual(["MSFT", "TSLA", "AAPL"]);
    expect(th.getAttribute("aria-sort")).toBe("descending");
  });

  test("row cap shows max_rows rows and an 'N more' button that expands and collapses", () => {
    const many = Array.from({ length: 7 }, (_, i) => position(`S${i}`));
    const { el } = mount({ max_rows: 5, rows: rowsOf(many) });
    const more = el.querySelector(".afl-more");
    expect(symbols(el)).toHaveLength(5);
    expect(more.hidden).toBe(false);
    expect(more.textContent).toBe("2 more");

    more.click();
    expect(symbols(el)).toHaveLength(7);
    expect(more.textContent).toBe("Show fewer");
    expect(more.getAttribute("aria-expanded")).toBe("true");

    more.click();
    expect(symbols(el)).toHaveLength(5);
    expect(more.textContent).toBe("2 more");
  });

  test("no 'more' button when the positions fit under max_rows", () => {
    const { el } = mount({ max_rows: 5, rows: rowsOf([position("AAPL")]) });
    expect(el.querySelector(".afl-more").hidden).toBe(true);
  });
});

describe("deltas", () => {
  test("a delta is merged into rows with model.set and its version", () => {
    const { model } = mount({
      rows: rowsOf([position("AAPL"), position("MSFT")], { version: 4, orders: { o1: order("o1") } }),
    });
    model.sendDelta({
      version: 5,
      positions: { upsert: { TSLA: position("TSLA") }, remove: ["MSFT"] },
      orders: { upsert: { o2: order("o2") }, remove: ["o1"] },
      account: account(),
      fills: { upsert: {}, remove: [] },
    });
    const rows = model.get("rows");
    expect(rows.version).toBe(5);
    expect(Object.keys(rows.positions).sort()).toEqual(["AAPL", "TSLA"]);
    expect(Object.keys(rows.orders)).toEqual(["o2"]);
    expect(rows.account.equity).toBe("100000.00");
  });

  test("a delta without an account key keeps the account", () => {
    const merged = mergeDelta(rowsOf([], { account: account() }), {
      version: 2,
      positions: { upsert: {}, remove: [] },
    });
    expect(merged.account.equity).toBe("100000.00");
  });

  test("fills merge by id, and equity points are appended as the same objects", () => {
    const first = [NOW, 100000, 0];
    const rows = rowsOf([], { fills: { f1: fill("f1"), f2: fill("f2") }, equity: [first] });
    const next = [NOW + 1000, 100010, 10];
    const merged = mergeDelta(rows, { version: 2, fills: upserting([fill("f3")], "id", ["f1"]), equity: [next] });
    expect(Object.keys(merged.fills)).toEqual(["f2", "f3"]);
    expect(merged.equity).toEqual([first, next]);
    expect(merged.equity[0]).toBe(first); // the chart finds where it left off by identity
    expect(rows.equity).toEqual([first]); // the old rows are left as they were
    expect(mergeDelta(rows, { version: 3 }).fills).toBe(rows.fills); // unchanged maps are not copied
  });

  test("a stale delta (version <= held) is ignored", () => {
    const rows = rowsOf([position("AAPL", { unrealized_pl: "10.00" })], { version: 7 });
    const { el, model } = mount({ rows });
    model.sendDelta(
      deltaUpserting(7, [position("AAPL", { unrealized_pl: "99.00" })], {
        fills: upserting([fill("f", { qty: "1", price: "1" })]),
      }),
    );
    model.sendDelta(deltaUpserting(3, [position("AAPL", { unrealized_pl: "98.00" })]));
    vi.advanceTimersByTime(100);
    expect(model.get("rows")).toBe(rows);
    expect(plCell(el, "AAPL").textContent).toBe("+10.00");
    expect(el.querySelector(".afl-toasts").childElementCount).toBe(0);
  });

  test("DOM updates wait for the animation frame and coalesce several deltas", () => {
    const { el, model } = mount({ rows: rowsOf([position("AAPL", { current_price: "100.00" })]) });
    model.sendDelta(deltaUpserting(2, [position("AAPL", { current_price: "101.00" })]));
    model.sendDelta(deltaUpserting(3, [position("AAPL", { current_price: "102.00" })]));
    expect(cell(el, "AAPL", "current_price").textContent).toBe("100.00");
    nextFrame();
    expect(cell(el, "AAPL", "current_price").textContent).toBe("102.00");
    expect(model.get("rows").version).toBe(3);
  });

  test("only changed cells are touched: the unchanged row is the same node and sees no mutation", async () => {
    const { el, model } = mount({
      rows: rowsOf([position("AAPL", { current_price: "100.00" }), position("MSFT", { current_price: "300.00" })]),
    });
    const msftRow = el.querySelector('tr[data-symbol="MSFT"]');
    const msftPrice = cell(el, "MSFT", "current_price");
    const aaplQty = cell(el, "AAPL", "qty");
    const mutations = [];
    const observer = new MutationObserver((records) => mutations.push(...records));
    observer.observe(el, { subtree: true, childList: true, characterData: true, attributes: true });

    model.sendDelta(
      deltaUpserting(2, [position("AAPL", { current_price: "101.00" }), position("MSFT", { current_price: "300.00" })]),
    );
    nextFrame();
    await Promise.resolve(); // MutationObserver delivers in a microtask
    observer.disconnect();

    expect(el.querySelector('tr[data-symbol="MSFT"]')).toBe(msftRow);
    expect(cell(el, "MSFT", "current_price")).toBe(msftPrice);
    expect(msftPrice.textContent).toBe("300.00");
    expect(mutations.filter((m) => msftRow.contains(m.target))).toEqual([]);
    // In the changed row, only the price cell was written.
    const where = (node) => {
      const element = node.nodeType === Node.ELEMENT_NODE ? node : node.parentElement;
      const td = element.closest("td");
      return td ? `${td.parentElement.dataset.symbol}.${td.dataset.col}` : element.className;
    };
    expect([...new Set(mutations.map((m) => where(m.target)))]).toEqual(["AAPL.current_price"]);
    expect(cell(el, "AAPL", "qty")).toBe(aaplQty);
  });

  test("a full rows change re-renders the tables", () => {
    const { el, model } = mount({ rows: rowsOf([position("AAPL")], { version: 9 }) });
    model.set("rows", rowsOf([position("NVDA"), position("AMD")], { version: 1 }));
    nextFrame();
    expect(symbols(el)).toEqual(["AMD", "NVDA"]);
    // The version count restarted with the full state: version 2 is news again.
    model.sendDelta(deltaUpserting(2, [position("INTC")]));
    nextFrame();
    expect(symbols(el)).toEqual(["AMD", "INTC", "NVDA"]);
  });

  test("a second view of the same model shows a delta the first view merged", () => {
    const { model } = mount({ rows: rowsOf([position("AAPL", { current_price: "100.00" })]) });
    const second = mountView(model);
    model.sendDelta(
      deltaUpserting(2, [position("AAPL", { current_price: "105.00" })], {
        fills: upserting([fill("f1", { order_id: "o1", qty: "1", price: "105" })]),
      }),
    );
    nextFrame();
    expect(cell(second, "AAPL", "current_price").textContent).toBe("105.00");
    expect(second.querySelector(".afl-toasts").textContent).toBe("Filled: BUY 1 AAPL @ 105.00");
  });
});

describe("orders and toasts", () => {
  test("orders blotter is newest first, capped at 20, with a status chip", () => {
    const orders = {};
    for (let i = 0; i < 25; i++) {
      orders[`o${i}`] = order(`o${i}`, {
        updated_at: new Date(NOW + i * 1000).toISOString(),
        status: i === 24 ? "partially_filled" : "new",
      });
    }
    const { el } = mount({ rows: rowsOf([], { orders }) });
    const trs = el.querySelectorAll('table[aria-label="Orders"] tbody tr');
    expect(trs).toHaveLength(20);
    expect(trs[0].dataset.orderId).toBe("o24");
    expect(trs[19].dataset.orderId).toBe("o5");
    const chip = trs[0].querySelector('td[data-col="status"] span');
    expect(chip.className).toBe("afl-chip afl-chip--partially_filled");
    expect(chip.textContent).toBe("partially_filled");
  });

  test("toast on fill, in an aria-live region, gone after 4 s", () => {
    const { el, model } = mount();
    const region = el.querySelector(".afl-toasts");
    expect(region.getAttribute("aria-live")).toBe("polite");
    model.sendDelta({ version: 2, fills: upserting([fill("f1", { order_id: "o1", price: "187.2" })]) });
    nextFrame();
    expect(region.textContent).toBe("Filled: BUY 10 AAPL @ 187.20");
    vi.advanceTimersByTime(3999);
    expect(region.childElementCount).toBe(1);
    vi.advanceTimersByTime(1);
    expect(region.childElementCount).toBe(0);
  });

  test("toast when an order's status becomes filled without a fill in the delta", () => {
    const { el, model } = mount({ rows: rowsOf([], { orders: { o1: order("o1") } }) });
    model.sendDelta({
      version: 2,
      orders: {
        upsert: { o1: order("o1", { status: "filled", filled_qty: "10", filled_avg_price: "187.2" }) },
        remove: [],
      },
    });
    nextFrame();
    expect(el.querySelector(".afl-toasts").textContent).toBe("Filled: BUY 10 AAPL @ 187.20");
  });

  test("a fill and its order turning filled make one toast, not two", () => {
    const { el, model } = mount({ rows: rowsOf([], { orders: { o1: order("o1") } }) });
    model.sendDelta({
      version: 2,
      orders: {
        upsert: { o1: order("o1", { status: "filled", filled_qty: "10", filled_avg_price: "187.2" }) },
        remove: [],
      },
      fills: upserting([fill("f1", { order_id: "o1", price: "187.2" })]),
    });
    nextFrame();
    expect(el.querySelector(".afl-toasts").childElementCount).toBe(1);
  });

  test("account summary shows day P&L as equity minus last equity, signed and coloured", () => {
    const { el, model } = mount({ component: "account", rows: rowsOf([], { account: account() }) });
    const day = el.querySelector('[data-field="day_pl"]');
    expect(el.querySelector('[data-field="equity"]').textContent).toBe("$100,000.00");
    expect(day.textContent).toBe("+$1,000.00 (+1.01%)");
    expect(day.classList.contains("afl-gain")).toBe(true);
    model.sendDelta({ version: 2, account: account({ equity: "98500.00" }) });
    nextFrame();
    expect(day.textContent).toBe("-$500.00 (-0.51%)");
    expect(day.classList.contains("afl-loss")).toBe(true);
  });
});

describe("cleanup", () => {
  test("cleanup clears every timer, frame, model listener and media-query listener", () => {
    const motion = stubReducedMotion(vi, false);
    const model = createFakeModel({ last_data_ms: NOW, rows: rowsOf([position("AAPL", { unrealized_pl: "1.00" })]) });
    const el = document.createElement("div");
    const cleanup = render({ model, el });
    model.sendDelta(
      deltaUpserting(2, [position("AAPL", { unrealized_pl: "2.00" })], {
        fills: upserting([fill("f1", { order_id: "o1", qty: "1", price: "2" })]),
      }),
    );
    nextFrame(); // starts an animation fallback timer and a toast timer
    model.sendDelta(deltaUpserting(3, [position("AAPL", { unrealized_pl: "3.00" })])); // leaves a frame pending
    expect(vi.getTimerCount()).toBeGreaterThan(2);
    expect(model.listenerCount()).toBeGreaterThan(0);
    expect(motion.listeners.size).toBe(1);

    cleanup();

    expect(vi.getTimerCount()).toBe(0);
    expect(model.listenerCount()).toBe(0);
    expect(motion.listeners.size).toBe(0);
    expect(el.childElementCount).toBe(0);
  });
});
