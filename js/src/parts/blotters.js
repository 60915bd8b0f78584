// @ts-check
/**
 * The blotters: orders (filtered Open / Done / All, Open first) and fills.
 * Both are newest first until the user sorts by another column (every column
 * sorts), and show the first ORDER_ROWS (FILL_ROWS) and an "N more" button
 * for the rest.
 * Times are the browser's local wall clock, hh:mm:ss. The orders part also
 * announces orders that became filled (the toast queue drops those a fill
 * already announced).
 */

import { DASH, atPrice, clockTime, fmt, price, quantity, timeMs, upper } from "../format.js";
import { h, setAttr, setHidden, setText } from "../dom.js";
import { NUMERIC, column, moreButton, reconcile, sortableTable } from "../table.js";

/** @typedef {import("../types.js").Context} Context */
/** @typedef {import("../types.js").Rows} Rows */
/** @typedef {import("../types.js").Order} Order */
/** @typedef {import("../types.js").Fill} Fill */
/**
 * @template [Input=void]
 * @typedef {import("../types.js").Part<Input>} Part
 */

export const ORDER_ROWS = 20;
export const FILL_ROWS = 10;
// An order in one of these is done (protocol.py's TERMINAL_ORDER_STATUSES; the kernel sends its own).
const DONE_STATUSES = ["filled", "canceled", "expired", "rejected", "replaced"];

/** @type {ReadonlyArray<readonly ["open" | "done" | "all", string, string]>} [filter, button, text when empty] */
const FILTERS = [
  ["open", "Open", "No open orders"],
  ["done", "Done", "No finished orders"],
  ["all", "All", "No orders"],
];

/** @type {import("../table.js").Column<Order>[]} */
export const ORDER_COLUMNS = [
  column("updated_at", "Time", (o) => clockTime(o.updated_at), { byNumber: true, value: (o) => timeMs(o.updated_at) }),
  column("symbol", "Symbol", (o) => String(o.symbol ?? DASH)),
  column("side", "Side", (o) => upper(o.side)),
  column("type", "Type", (o) => String(o.type ?? DASH).replace(/_/g, " ")),
  column("qty", "Qty", (o) => fmt(quantity, o.qty), NUMERIC),
  column("limit_price", "Limit", (o) => (o.limit_price == null ? "" : price(o.limit_price)), NUMERIC),
  column("stop_price", "Stop", (o) => (o.stop_price == null ? "" : price(o.stop_price)), NUMERIC),
  column("filled_qty", "Filled", (o) => fmt(quantity, o.filled_qty ?? 0) + atPrice(o.filled_avg_price), NUMERIC),
  column("status", "Status", (o) => String(o.status ?? "unknown"), { chip: true }),
];

/** @type {import("../table.js").Column<Fill>[]} */
export const FILL_COLUMNS = [
  column("timestamp", "Time", (f) => clockTime(f.timestamp), { byNumber: true, value: (f) => timeMs(f.timestamp) }),
  column("symbol", "Symbol", (f) => String(f.symbol ?? DASH)),
  column("side", "Side", (f) => upper(f.side)),
  column("qty", "Qty", (f) => fmt(quantity, f.qty), NUMERIC),
  column("price", "Price", (f) => price(f.price), NUMERIC),
];

/**
 * @param {string} title
 * @param {...Node} extra  beside the heading (the filter buttons)
 */
const sectionHead = (title, ...extra) =>
  h("div", { class: "afl-section-head" }, h("h4", { class: "afl-section-title" }, title), ...extra);

/**
 * @param {HTMLElement} container
 * @param {Context} ctx
 * @returns {Part<Rows>}
 */
export function mountOrders(container, { model, frame, toasts }) {
  const table = sortableTable("Orders", ORDER_COLUMNS, { column: 0, dir: "desc" }, () => frame.flush());
  /** @type {"open" | "done" | "all"} */
  let filter = "open";
  const buttons = FILTERS.map(([key, label]) => {
    const button = h("button", { type: "button", class: "afl-filter", "data-filter": key }, label);
    button.addEventListener("click", () => {
      filter = key;
      frame.flush();
    });
    return button;
  });
  const filters = h("div", { class: "afl-filters", role: "group", "aria-label": "Show orders" }, ...buttons);
  const more = moreButton(() => frame.flush());
  const empty = h("p", { class: "afl-empty", hidden: true });
  const head = sectionHead("Orders", filters);
  const section = h("div", { class: "afl-section afl-orders" }, head, table.table, empty, more.button);
  container.append(section);
  /** @type {Map<string, string | undefined> | null} */
  let statuses = null; // id -> status as last drawn; null before the first draw, which announces nothing

  return {
    update({ orders }) {
      const all = Object.entries(orders);
      if (statuses && toasts) {
        for (const [id, order] of all) {
          if (order.status === "filled" && statuses.get(id) !== "filled") toasts.orderFilled(id, order);
        }
      }
      statuses = new Map(all.map(([id, order]) => [id, order.status]));

      const sent = model.get("done_statuses");
      const done = new Set(Array.isArray(sent) && sent.length ? sent : DONE_STATUSES);
      const entries = all.filter(([, o]) => filter === "all" || (filter === "done") === done.has(String(o.status)));
      table.order(entries);
      reconcile(table, ORDER_COLUMNS, "data-order-id", entries.slice(0, more.shown(entries.length, ORDER_ROWS)));
      for (const button of buttons) setAttr(button, "aria-pressed", String(button.dataset.filter === filter));
      setText(empty, FILTERS.find(([key]) => key === filter)?.[2] ?? "");
      setHidden(empty, entries.length > 0);
    },
    dispose: () => section.remove(),
  };
}

/**
 * @param {HTMLElement} container
 * @param {Context} ctx
 * @returns {Part<Rows>}
 */
export function mountFills(container, { frame }) {
  const table = sortableTable("Fills", FILL_COLUMNS, { column: 0, dir: "desc" }, () => frame.flush());
  const more = moreButton(() => frame.flush());
  const empty = h("p", { class: "afl-empty", hidden: true }, "No fills yet");
  const section = h("div", { class: "afl-section afl-fills" }, sectionHead("Fills"), table.table, empty, more.button);
  container.append(section);
  return {
    update({ fills }) {
      const entries = table.order(Object.entries(fills));
      reconcile(table, FILL_COLUMNS, "data-fill-id", entries.slice(0, more.shown(entries.length, FILL_ROWS)));
      setHidden(empty, entries.length > 0);
    },
    dispose: () => section.remove(),
  };
}
