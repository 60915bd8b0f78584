// @ts-check
/**
 * AlphaFlow Live: the browser side of the portfolio widget.
 *
 * anywidget loads one ES module through its default export `{ render }` (a
 * named `render` export makes it warn that it is deprecated). The source is
 * split into modules under js/src/ (this entry, the shared helpers beside it
 * and the parts in parts/); alphaflow_live/frontend.py joins them into that
 * one module, in import order, and vitest and tsc read them as they are.
 *
 * The Python side (alphaflow_live/widgets.py) owns these traits (`Traits` in
 * types.js):
 *
 *   component  which parts to show: portfolio | status | badge | positions | account
 *   status, error, status_reason, last_data_ms, live_s, delayed_s   connection and freshness
 *              (status_reason: why the stream is polling or offline, shown in the banner)
 *   rows       the full state {version, positions, orders, fills, equity, account}
 *   delta      one change {version, positions: {upsert, remove}, orders: {...}, fills: {...},
 *              equity: [points appended], account?, alerts?}
 *   max_rows, title, done_statuses
 *
 * rows.js keeps the rows trait complete from the deltas. The widget is made
 * of parts, each mounted by its own function that builds its nodes and
 * returns `{ update, dispose }` (a `Part`); a part keeps its own state (sort
 * order, animations, timers) and shares nothing but the small `Context` that
 * render hands it:
 *
 *   status     mountStatus     the connection dot and its text       on change:status
 *   title      mountTitle      the title, hidden when empty          on change:title
 *   freshness  mountBadge      Live / Delayed / Stale / Offline      on the freshness traits and every second
 *   toasts     mountToasts     fills and alerts, a few seconds each  once per animation frame
 *   banner     mountBanner     the stale / offline / error warning   on the freshness traits and every second
 *   account    mountAccount    equity, P&L, cash, exposure, as of    once per animation frame
 *   chart      mountChart      the day's equity curve (SVG)          once per animation frame
 *   positions  mountPositions  the sortable, capped positions table  once per animation frame
 *   orders     mountOrders     the orders blotter, Open / Done / All once per animation frame
 *   fills      mountFills      the fills blotter                     once per animation frame
 *
 * The data parts are drawn together in one animation frame, however many
 * deltas arrived, and write only what changed: a 10 Hz stream of a
 * 500-position book stays cheap.
 */

import { present, h } from "./dom.js";
import { FRESHNESS_TRAITS, classifyFreshness, readFreshness } from "./freshness.js";
import { followRows, mergeDelta, normalizeRows } from "./rows.js";
import { mountAccount } from "./parts/account.js";
import { mountFills, mountOrders } from "./parts/blotters.js";
import { mountChart } from "./parts/chart.js";
import { mountBadge, mountBanner, mountStatus, mountTitle } from "./parts/header.js";
import { mountPositions } from "./parts/positions.js";
import { createToastQueue, mountToasts } from "./parts/toasts.js";

/** @typedef {import("./types.js").Model} Model */
/** @typedef {import("./types.js").Rows} Rows */
/** @typedef {import("./types.js").Frame} Frame */
/** @typedef {import("./types.js").Context} Context */
/**
 * @template [Input=void]
 * @typedef {import("./types.js").Part<Input>} Part
 */
/** @typedef {keyof typeof PARTS} Component */
/**
 * @typedef {"status" | "title" | "freshness" | "toasts" | "banner"
 *   | "account" | "chart" | "positions" | "orders" | "fills"} PartName
 */

/**
 * Which parts each component shows; "portfolio" shows them all.
 * @satisfies {Record<string, PartName[]>}
 */
const PARTS = {
  portfolio: ["status", "title", "freshness", "toasts", "banner", "account", "chart", "positions", "orders", "fills"],
  status: ["status"],
  badge: ["freshness"],
  positions: ["positions"],
  account: ["account"],
};

/**
 * @param {(() => void)} draw
 * @returns {Frame}
 */
function createFrame(draw) {
  let id = 0;
  const cancel = () => {
    if (id) cancelAnimationFrame(id);
    id = 0;
  };
  return {
    schedule() {
      if (id) return;
      id = requestAnimationFrame(() => {
        id = 0;
        draw();
      });
    },
    flush() {
      cancel();
      draw();
    },
    cancel,
  };
}

/**
 * @param {{ model: Model, el: HTMLElement }} view
 * @returns {() => void} cleanup: disposes every part, removes every listener and timer
 */
function render({ model, el }) {
  const name = model.get("component");
  /** @type {Component} */
  const component = Object.hasOwn(PARTS, name) ? /** @type {Component} */ (name) : "portfolio";
  /** @type {Set<PartName>} */
  const wanted = new Set(PARTS[component]);
  const root = h("div", { class: `afl-root afl-component-${component}` });
  el.append(root);

  /** @type {Part<Rows>[]} */
  const dataParts = []; // filled below, before anything can draw
  const drawData = () => {
    const rows = normalizeRows(model.get("rows"), model.get("last_data_ms"));
    for (const part of dataParts) part.update(rows);
  };
  /** @type {Context} */
  const ctx = { model, frame: createFrame(drawData), toasts: wanted.has("toasts") ? createToastQueue() : null };

  /**
   * @template T
   * @param {PartName} part
   * @param {() => T} mount
   */
  const want = (part, mount) => (wanted.has(part) ? mount() : null);
  // In the order the page shows them.
  const header = h("div", { class: "afl-header" });
  const status = want("status", () => mountStatus(header, ctx));
  const title = want("title", () => mountTitle(header, ctx));
  const badge = want("freshness", () => mountBadge(header, ctx));
  const toasts = want("toasts", () => mountToasts(header, ctx)); // in the header's free space
  if (header.childElementCount) root.append(header);
  const banner = want("banner", () => mountBanner(root, ctx));
  const overview = h("div", { class: "afl-overview" }); // the account and the chart side by side
  const account = want("account", () => mountAccount(overview, ctx));
  const chart = want("chart", () => mountChart(overview, ctx));
  if (overview.childElementCount) root.append(overview);
  const positions = want("positions", () => mountPositions(root, ctx));
  const orders = want("orders", () => mountOrders(root, ctx));
  const fills = want("fills", () => mountFills(root, ctx));

  dataParts.push(...present([account, chart, positions, orders, fills, toasts]));
  const clocked = present([badge, banner]);
  const refreshFreshness = () => {
    if (!clocked.length) return;
    const reading = readFreshness(model, Date.now());
    for (const part of clocked) part.update(reading);
  };
  const scheduleData = () => {
    if (dataParts.length) ctx.frame.schedule(); // several deltas within one frame cost one DOM update
  };

  status?.update();
  title?.update();
  refreshFreshness();
  drawData();

  /** @type {(() => void)[]} */
  const disposers = [];
  /**
   * @param {string} event
   * @param {() => void} handler
   */
  const listen = (event, handler) => {
    model.on(event, handler);
    disposers.push(() => model.off(event, handler));
  };
  if (status) listen("change:status", () => status.update());
  if (title) listen("change:title", () => title.update());
  if (clocked.length) {
    for (const trait of FRESHNESS_TRAITS) listen(`change:${trait}`, refreshFreshness);
    // "updated Xs ago" and the badge age with the wall clock, not with messages.
    const ticker = setInterval(refreshFreshness, 1000);
    disposers.push(() => clearInterval(ticker));
  }
  listen("change:max_rows", scheduleData);
  if (account) listen("change:last_data_ms", scheduleData); // the "as of" time
  disposers.push(
    followRows(model, (delta) => {
      if (delta && ctx.toasts) {
        const fills = Object.values(delta.fills?.upsert ?? {});
        fills.sort((a, b) => String(a.timestamp ?? "").localeCompare(String(b.timestamp ?? "")));
        for (const fill of fills) ctx.toasts.fill(fill);
        for (const alert of delta.alerts ?? []) ctx.toasts.alert(alert);
      }
      scheduleData();
    }),
  );

  return function cleanup() {
    for (const dispose of disposers.splice(0)) dispose();
    ctx.frame.cancel();
    for (const part of present([status, title, badge, banner, ...dataParts])) part.dispose();
    root.remove();
  };
}

export { classifyFreshness, mergeDelta };
export default { render };
