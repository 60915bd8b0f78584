// @ts-check
/**
 * AlphaFlow Live: the browser side of the portfolio widget.
 *
 * One plain ES module with no imports: anywidget loads it as it is, through
 * its default export `{ render }` (a named `render` export makes anywidget
 * warn that it is deprecated). The Python side (alphaflow_live/widgets.py)
 * owns these traits (typed as `Traits` below):
 *
 *   component  which parts to show: portfolio | status | badge | positions | account
 *   status, error, status_reason, last_data_ms, live_s, delayed_s   connection and freshness
 *              (status_reason: why the stream is polling or offline, shown in the banner)
 *   rows       the full state {version, positions, orders, account}
 *   delta      one change {version, positions: {upsert, remove}, orders: {...}, account?, fills}
 *   max_rows, title
 *
 * The kernel sends `rows` once (and again after a reload) and then only
 * deltas. Each delta is merged here into the rows trait (model.set, never
 * saved back), so a saved notebook holds the complete state. Every view
 * merges, whatever it shows, so the trait stays complete.
 *
 * The widget is made of parts, each mounted by its own function that builds
 * its nodes and returns `{ update, dispose }` (a `Part`); a part keeps its
 * own state (sort order, animations, timers) and shares nothing but the
 * small `Context` that render hands it:
 *
 *   status     mountStatus    the connection dot and its text      on change:status
 *   title      mountTitle     the title, hidden when empty         on change:title
 *   freshness  mountBadge     Live / Delayed / Stale / Offline     on the freshness traits and every second
 *   banner     mountBanner    the stale / offline / error warning  on the freshness traits and every second
 *   account    mountAccount   equity, day P&L, cash, buying power  once per animation frame
 *   positions  mountPositions the sortable, capped positions table once per animation frame
 *   orders     mountOrders    the newest orders, with status chips once per animation frame
 *   toasts     mountToasts    fills, gone after a few seconds      once per animation frame
 *
 * The data parts (account to toasts) are drawn together in one animation
 * frame, however many deltas arrived, and write only the cells whose text
 * changed: a 10 Hz stream of a 500-position book stays cheap.
 *
 * Freshness is computed here, from the browser's clock, so it keeps moving
 * when the kernel is busy or dead.
 */

// ------------------------------------------------------------------ types

/**
 * A decimal as the kernel sends it ("187.20"); a number reads the same way.
 * @typedef {string | number | null | undefined} Decimal
 */

/**
 * A position, with Alpaca's field names (alphaflow_live/protocol.py).
 * @typedef {object} Position
 * @property {string} [symbol]
 * @property {Decimal} [qty]
 * @property {string} [side]
 * @property {Decimal} [avg_entry_price]
 * @property {Decimal} [current_price]
 * @property {Decimal} [market_value]
 * @property {Decimal} [unrealized_pl]
 * @property {Decimal} [unrealized_plpc]
 * @property {Decimal} [change_today]
 */

/**
 * @typedef {object} Order
 * @property {string} [id]
 * @property {string} [symbol]
 * @property {string} [side]
 * @property {string} [type]
 * @property {Decimal} [qty]
 * @property {Decimal} [filled_qty]
 * @property {Decimal} [filled_avg_price]
 * @property {Decimal} [limit_price]
 * @property {string} [status]
 * @property {string} [updated_at]  ISO 8601
 */

/**
 * @typedef {object} Account
 * @property {Decimal} [equity]
 * @property {Decimal} [last_equity]
 * @property {Decimal} [cash]
 * @property {Decimal} [buying_power]
 * @property {Decimal} [realized_pl_today]
 * @property {string | null} [currency]  ISO 4217, "USD" when absent
 * @property {string} [updated_at]
 */

/**
 * @typedef {object} Fill
 * @property {string} [id]
 * @property {string} [order_id]
 * @property {string} [symbol]
 * @property {string} [side]
 * @property {Decimal} [qty]
 * @property {Decimal} [price]
 */

/**
 * The rows trait as it arrives: the kernel's first value may be `{}`.
 * @typedef {object} RowsTrait
 * @property {number} [version]
 * @property {Record<string, Position>} [positions]  by symbol
 * @property {Record<string, Order>} [orders]  by order id
 * @property {Account | null} [account]
 */

/**
 * The rows as the parts read them (normalizeRows): every field present.
 * @typedef {object} Rows
 * @property {number} version  -Infinity when the trait has none
 * @property {Record<string, Position>} positions
 * @property {Record<string, Order>} orders
 * @property {Account | null} account
 */

/**
 * One keyed change to a map of rows.
 * @template T
 * @typedef {object} MapChange
 * @property {Record<string, T>} [upsert]
 * @property {string[]} [remove]
 */

/**
 * The delta trait: what changed since the previous version. Its first value
 * may be `{}` (no version), which the version check drops.
 * @typedef {object} Delta
 * @property {number | null} [version]
 * @property {MapChange<Position>} [positions]
 * @property {MapChange<Order>} [orders]
 * @property {Account | null} [account]  absent (or null) when unchanged
 * @property {Fill[]} [fills]
 */

/**
 * The traits that widgets.py syncs.
 * @typedef {object} Traits
 * @property {string} component
 * @property {string} status
 * @property {string} error
 * @property {string} status_reason
 * @property {number | null} last_data_ms  epoch ms of the last data, null before any
 * @property {number} live_s
 * @property {number} delayed_s
 * @property {number} max_rows
 * @property {string} title
 * @property {RowsTrait | null} rows
 * @property {Delta | null} delta
 */

/**
 * The part of anywidget's model that this module uses.
 * @typedef {object} Model
 * @property {<K extends keyof Traits>(name: K) => Traits[K]} get
 * @property {<K extends keyof Traits>(name: K, value: Traits[K]) => void} set  fires change:NAME synchronously
 * @property {(event: string, callback: () => void) => void} on
 * @property {(event: string, callback: () => void) => void} off
 */

/**
 * What a mount function returns. `update` brings the part up to date from its
 * input (nothing, a freshness reading or the merged rows), writing only what
 * changed; `dispose` drops its timers and listeners and takes its nodes out.
 * @template [Input=void]
 * @typedef {object} Part
 * @property {(input: Input) => void} update
 * @property {() => void} dispose
 */

/**
 * Draws every data part from the merged rows, at most once per animation frame.
 * @typedef {object} Frame
 * @property {() => void} schedule  draw at the next frame; more requests before it cost nothing
 * @property {() => void} flush  draw now and drop the pending frame (a click wants its answer at once)
 * @property {() => void} cancel
 */

/**
 * Fill announcements on their way to the toasts part: fills from deltas, and
 * orders that turned filled without one (each order announced once).
 * @typedef {object} ToastQueue
 * @property {(fill: Fill) => void} fill
 * @property {(id: string, order: Order) => void} orderFilled
 * @property {() => string[]} take  the texts waiting, oldest first; empties the queue
 */

/**
 * All that render shares with the parts.
 * @typedef {object} Context
 * @property {Model} model
 * @property {Frame} frame
 * @property {ToastQueue | null} toasts  null when this view shows no toasts
 */

/** @typedef {"live" | "delayed" | "stale" | "offline"} Freshness */

/**
 * Freshness as read once for the badge and the banner, so the two never disagree.
 * @typedef {object} FreshnessReading
 * @property {string} status  the connection status
 * @property {Freshness} state
 * @property {number | null} age  seconds since the last data; null before any
 */

/** @typedef {keyof typeof PARTS} Component */
/** @typedef {"status" | "title" | "freshness" | "banner" | "account" | "positions" | "orders" | "toasts"} PartName */

// ------------------------------------------------------------------ constants

/** @type {Record<Freshness, string>} */
const FRESHNESS_TEXT = { live: "Live", delayed: "Delayed", stale: "Stale", offline: "Offline" };
/**
 * Connection status -> [text beside the dot, dot colour].
 * @type {Record<string, readonly [string, string]>}
 */
const STATUS = {
  connecting: ["Connecting…", "warn"],
  live: ["Streaming", "live"],
  reconnecting: ["Reconnecting…", "warn"],
  polling: ["Polling (stream unavailable)", "warn"],
  offline: ["Offline", "offline"],
  closed: ["Closed", "offline"],
};
/** @param {string} status */
const statusText = (status) => STATUS[status]?.[0] ?? status;
// Statuses in which nothing reaches the kernel at all (as in freshness.py).
const DISCONNECTED = new Set(["offline", "closed"]);
// Statuses whose reason the banner shows (a reconnect after a blip is not worth a warning).
const REASON_SHOWN = new Set(["polling", "offline"]);

/**
 * Which parts each component shows; "portfolio" shows them all.
 * @satisfies {Record<string, PartName[]>}
 */
const PARTS = {
  portfolio: ["status", "title", "freshness", "banner", "account", "positions", "orders", "toasts"],
  status: ["status"],
  badge: ["freshness"],
  positions: ["positions"],
  account: ["account"],
};

/** @type {ReadonlyArray<readonly ["equity" | "day_pl" | "cash" | "buying_power", string]>} */
const ACCOUNT_FIELDS = [
  ["equity", "Equity"],
  ["day_pl", "Day P&L"],
  ["cash", "Cash"],
  ["buying_power", "Buying power"],
];

const FRESHNESS_TRAITS = /** @type {const} */ ([
  "status",
  "error",
  "status_reason",
  "last_data_ms",
  "live_s",
  "delayed_s",
]);
const DEFAULT_LIVE_S = 5;
const DEFAULT_DELAYED_S = 30;
const DEFAULT_MAX_ROWS = 50;
const MAX_ORDERS = 20;
const MAX_TOASTS = 5; // a burst of fills must not bury the notebook
const TOAST_MS = 4000;
const ANIMATION_FALLBACK_MS = 1000; // animationend never fires if the cell is hidden
const ANIMATION_CLASSES = ["afl-flash-gain", "afl-shake-loss", "afl-gain-static", "afl-loss-static"];
const DASH = "—";

// ------------------------------------------------------------------ formatting

const TWO_DECIMALS = { minimumFractionDigits: 2, maximumFractionDigits: 2 };
const money = new Intl.NumberFormat("en-US", TWO_DECIMALS);
const signedMoney = new Intl.NumberFormat("en-US", { ...TWO_DECIMALS, signDisplay: "exceptZero" });
const signedPercent = new Intl.NumberFormat("en-US", { ...TWO_DECIMALS, style: "percent", signDisplay: "exceptZero" });
const quantity = new Intl.NumberFormat("en-US", { maximumFractionDigits: 6 }); // fractional shares

/**
 * Decimal strings ("187.20") and numbers to a number; missing values to NaN.
 * @param {unknown} value
 */
function num(value) {
  return value === null || value === undefined || value === "" ? NaN : Number(value);
}

/**
 * @param {Intl.NumberFormat} formatter
 * @param {unknown} value
 */
function fmt(formatter, value) {
  const n = num(value);
  return Number.isFinite(n) ? formatter.format(n) : DASH;
}

/**
 * Gain or loss by the sign actually shown, so "-0.001" (shown "0.00") has no colour.
 * @param {string} text
 * @returns {"gain" | "loss" | null}
 */
function toneOf(text) {
  return text.startsWith("+") ? "gain" : text.startsWith("-") ? "loss" : null;
}

/** @type {Map<string, Intl.NumberFormat>} */
const currencyFormats = new Map();
/**
 * @param {string} currency
 * @param {boolean} signed
 */
function currencyFormat(currency, signed) {
  const key = `${currency}|${signed}`;
  let format = currencyFormats.get(key);
  if (!format) {
    const signDisplay = signed ? "exceptZero" : "auto";
    format = signed ? signedMoney : money; // for a currency that is not an ISO 4217 code
    try {
      format = new Intl.NumberFormat("en-US", { style: "currency", currency, signDisplay });
    } catch {
      // keep the plain number format
    }
    currencyFormats.set(key, format);
  }
  return format;
}

/** @param {number} seconds */
function formatAge(seconds) {
  const s = Math.floor(seconds);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
  return `${Math.floor(s / 86400)}d`;
}

/** @param {Decimal} price */
const atPrice = (price) => (price != null && price !== "" ? ` @ ${fmt(money, price)}` : "");
/** @param {unknown} value */
const upper = (value) => String(value ?? DASH).toUpperCase();
/** @param {unknown} value */
const slug = (value) => `${value}`.toLowerCase().replace(/[^a-z0-9_-]+/g, "-");

// ------------------------------------------------------------------ pure rules

/**
 * The same rule as alphaflow_live/freshness.py, with the browser's clock.
 * @param {string} status
 * @param {number | null | undefined} lastDataMs
 * @param {number} nowMs
 * @returns {Freshness}
 */
export function classifyFreshness(status, lastDataMs, nowMs, liveS = DEFAULT_LIVE_S, delayedS = DEFAULT_DELAYED_S) {
  if (DISCONNECTED.has(status) || lastDataMs === null || lastDataMs === undefined) return "offline";
  const age = (nowMs - lastDataMs) / 1000;
  if (age <= liveS) return "live";
  if (age <= delayedS) return "delayed";
  return "stale";
}

/**
 * The live_s / delayed_s traits, made sane (delayed never below live).
 * @param {Model} model
 * @returns {[number, number]}
 */
function thresholds(model) {
  const liveS = num(model.get("live_s"));
  const delayedS = num(model.get("delayed_s"));
  const live = liveS > 0 ? liveS : DEFAULT_LIVE_S;
  return [live, delayedS >= live ? delayedS : Math.max(live, DEFAULT_DELAYED_S)];
}

/**
 * @param {Model} model
 * @param {number} now  epoch ms
 * @returns {FreshnessReading}
 */
function readFreshness(model, now) {
  const status = String(model.get("status") ?? "connecting");
  const last = model.get("last_data_ms");
  const hasData = last !== null && last !== undefined;
  const state = classifyFreshness(status, last, now, ...thresholds(model));
  // The server's clock may run ahead of the browser's: never show a negative age.
  const age = hasData ? Math.max(0, (now - last) / 1000) : null;
  return { status, state, age };
}

/** @param {RowsTrait | null | undefined} rows */
const versionOf = (rows) => (Number.isFinite(rows?.version) ? /** @type {number} */ (rows?.version) : -Infinity);
/**
 * @param {RowsTrait | null | undefined} rows
 * @returns {Rows}
 */
const normalizeRows = (rows) => ({
  version: versionOf(rows),
  positions: rows?.positions ?? {},
  orders: rows?.orders ?? {},
  account: rows?.account ?? null,
});

/**
 * Rows after one delta, as a new object (the old one is not mutated: the
 * model compares old and new values to decide whether anything changed).
 * @param {RowsTrait | null | undefined} rows
 * @param {Delta} delta
 * @returns {RowsTrait}
 */
export function mergeDelta(rows, delta) {
  const base = normalizeRows(rows);
  /**
   * @template T
   * @param {Record<string, T>} current
   * @param {MapChange<T> | undefined} change
   */
  const mergeMap = (current, change) => {
    const merged = { ...current, ...(change?.upsert ?? {}) };
    for (const key of change?.remove ?? []) delete merged[key];
    return merged;
  };
  return {
    version: /** @type {number} */ (delta.version),
    positions: mergeMap(base.positions, delta.positions),
    orders: mergeMap(base.orders, delta.orders),
    // Absent means unchanged; null is read the same way (an account does not vanish mid-session).
    account: delta.account ?? base.account,
  };
}

// ------------------------------------------------------------------ columns

/**
 * A column: the field it sorts by (and the cell's data-col), its header, the
 * text of a cell, and flags: numeric (right-aligned, sorted as numbers), toned
 * (afl-gain / afl-loss by sign), chip (the text sits in a status chip).
 * @template T
 * @typedef {object} Column
 * @property {string} key
 * @property {string} label
 * @property {(item: T) => string} text
 * @property {boolean} [numeric]
 * @property {boolean} [toned]
 * @property {boolean} [chip]
 */

/**
 * @template T
 * @param {string} key
 * @param {string} label
 * @param {(item: T) => string} text
 * @param {{ numeric?: boolean, toned?: boolean, chip?: boolean }} [flags]
 * @returns {Column<T>}
 */
const column = (key, label, text, flags = {}) => ({ key, label, text, ...flags });
const NUMERIC = { numeric: true };
const TONED = { numeric: true, toned: true };

/** @type {Column<Position>[]} */
const POSITION_COLUMNS = [
  column("symbol", "Symbol", (p) => String(p.symbol ?? DASH)),
  column("qty", "Qty", (p) => fmt(quantity, p.qty), NUMERIC),
  column("avg_entry_price", "Avg entry", (p) => fmt(money, p.avg_entry_price), NUMERIC),
  column("current_price", "Price", (p) => fmt(money, p.current_price), NUMERIC),
  column("market_value", "Market value", (p) => fmt(money, p.market_value), NUMERIC),
  column("unrealized_pl", "Unrealized P&L", (p) => fmt(signedMoney, p.unrealized_pl), TONED),
  column("unrealized_plpc", "P&L %", (p) => fmt(signedPercent, p.unrealized_plpc), TONED),
  column("change_today", "Day change", (p) => fmt(signedPercent, p.change_today), TONED),
];
const PL_COLUMN = POSITION_COLUMNS.findIndex((c) => c.key === "unrealized_pl");

/** @type {Column<Order>[]} */
const ORDER_COLUMNS = [
  column("symbol", "Symbol", (o) => String(o.symbol ?? DASH)),
  column("side", "Side", (o) => upper(o.side)),
  column(
    "type",
    "Type",
    (o) => String(o.type ?? DASH) + (o.limit_price != null ? ` ${fmt(money, o.limit_price)}` : ""),
  ),
  column("qty", "Qty", (o) => fmt(quantity, o.qty), NUMERIC),
  column("filled", "Filled", (o) => fmt(quantity, o.filled_qty ?? 0) + atPrice(o.filled_avg_price), NUMERIC),
  column("status", "Status", (o) => String(o.status ?? "unknown"), { chip: true }),
];

/** @param {Fill} f */
const fillText = (f) => `Filled: ${upper(f.side)} ${fmt(quantity, f.qty)} ${f.symbol}${atPrice(f.price)}`;
/** @param {Order} o */
const orderFilledText = (o) =>
  `Filled: ${upper(o.side)} ${fmt(quantity, o.filled_qty ?? o.qty)} ${o.symbol}${atPrice(o.filled_avg_price)}`;

// ------------------------------------------------------------------ DOM helpers

/**
 * @template {keyof HTMLElementTagNameMap} K
 * @param {K} tag
 * @param {Record<string, string | boolean | null | undefined>} [attrs]  null, undefined and false are left out
 * @param {...(Node | string)} children
 * @returns {HTMLElementTagNameMap[K]}
 */
function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value !== null && value !== undefined && value !== false) node.setAttribute(name, value === true ? "" : value);
  }
  node.append(...children);
  return node;
}

// Writers that leave the DOM alone when nothing changed (no mutation, no relayout).
/**
 * @param {Element} node
 * @param {string} text
 */
function setText(node, text) {
  if (node.textContent !== text) node.textContent = text;
}
/**
 * @param {Element} node
 * @param {string} cls
 * @param {boolean} on
 */
function setClass(node, cls, on) {
  if (node.classList.contains(cls) !== on) node.classList.toggle(cls, on);
}
/**
 * @param {HTMLElement} node
 * @param {boolean} hidden
 */
function setHidden(node, hidden) {
  if (node.hidden !== hidden) node.hidden = hidden;
}
/**
 * @param {Element} node
 * @param {string} name
 * @param {string} value
 */
function setAttr(node, name, value) {
  if (node.getAttribute(name) !== value) node.setAttribute(name, value);
}
/**
 * @param {Element} node
 * @param {"gain" | "loss" | null} tone
 */
function setTone(node, tone) {
  setClass(node, "afl-gain", tone === "gain");
  setClass(node, "afl-loss", tone === "loss");
}

/**
 * One table row as drawn: its cells and the text each shows.
 * @typedef {object} Row
 * @property {HTMLTableRowElement} tr
 * @property {HTMLTableCellElement[]} cells
 * @property {string[]} texts
 * @property {number} [pl]  the unrealized P&L drawn last (positions: a change animates)
 */

/**
 * @typedef {object} Table
 * @property {HTMLTableElement} table
 * @property {HTMLTableCellElement[]} headers
 * @property {HTMLTableSectionElement} tbody
 * @property {Map<string, Row>} rows  by key, in no particular order
 */

/**
 * @param {string} label
 * @param {Column<any>[]} columns
 * @returns {Table}
 */
function buildTable(label, columns) {
  const headers = columns.map((col) => h("th", { scope: "col", class: col.numeric ? "afl-num" : null }, col.label));
  const tbody = h("tbody");
  const thead = h("thead", {}, h("tr", {}, ...headers));
  const table = h("table", { class: "afl-table", role: "table", "aria-label": label }, thead, tbody);
  return { table, headers, tbody, rows: new Map() };
}

/**
 * @param {Column<any>[]} columns
 * @param {string} keyAttr
 * @param {string} key
 * @returns {Row}
 */
function createRow(columns, keyAttr, key) {
  const cells = columns.map((col) => {
    const td = h("td", { "data-col": col.key, class: col.numeric ? "afl-num" : null });
    if (col.chip) td.append(h("span", { class: "afl-chip" }));
    return td;
  });
  return { tr: h("tr", { [keyAttr]: key }, ...cells), cells, texts: [] };
}

/**
 * Brings one row up to date, writing only the cells whose text changed.
 * @template T
 * @param {Row} row
 * @param {Column<T>[]} columns
 * @param {T} item
 */
function syncRow(row, columns, item) {
  columns.forEach((col, i) => {
    const text = col.text(item);
    if (row.texts[i] === text) return;
    row.texts[i] = text;
    const cell = row.cells[i];
    if (col.chip) {
      const chip = /** @type {HTMLElement} */ (cell.firstElementChild);
      chip.textContent = text;
      chip.className = `afl-chip afl-chip--${slug(text)}`;
    } else {
      cell.textContent = text;
    }
    if (col.toned) setTone(cell, toneOf(text));
  });
}

/**
 * Keyed reconciliation: rows are reused by key, moved only when out of place
 * and dropped when their key is gone. `beforeSync(row, item, isNew)` runs
 * while the row still shows its previous values.
 * @template T
 * @param {Table} table
 * @param {Column<T>[]} columns
 * @param {string} keyAttr
 * @param {[string, T][]} entries  in the order to show
 * @param {(row: Row, item: T, isNew: boolean) => void} [beforeSync]
 */
function reconcile(table, columns, keyAttr, entries, beforeSync) {
  const { tbody, rows } = table;
  const keep = new Set();
  entries.forEach(([key, item], index) => {
    let row = rows.get(key);
    const isNew = !row;
    if (!row) {
      row = createRow(columns, keyAttr, key);
      rows.set(key, row);
    }
    beforeSync?.(row, item, isNew);
    syncRow(row, columns, item);
    keep.add(key);
    const here = tbody.children[index];
    if (here !== row.tr) tbody.insertBefore(row.tr, here ?? null);
  });
  for (const [key, row] of rows) {
    if (!keep.has(key)) {
      row.tr.remove();
      rows.delete(key);
    }
  }
}

/** Timeouts that a part's dispose can clear all at once. */
function createTimers() {
  /** @type {Set<ReturnType<typeof setTimeout>>} */
  const ids = new Set();
  return {
    /**
     * @param {() => void} fn
     * @param {number} ms
     */
    later(fn, ms) {
      const id = setTimeout(() => {
        ids.delete(id);
        fn();
      }, ms);
      ids.add(id);
      return id;
    },
    /** @param {ReturnType<typeof setTimeout>} id */
    cancel(id) {
      clearTimeout(id);
      ids.delete(id);
    },
    clear() {
      for (const id of ids) clearTimeout(id);
      ids.clear();
    },
  };
}

/**
 * The parts that this view mounted.
 * @template T
 * @param {(T | null)[]} items
 * @returns {T[]}
 */
function present(items) {
  return /** @type {T[]} */ (items.filter((item) => item !== null));
}

// ------------------------------------------------------------------ parts: header

/**
 * The connection dot (coloured, labelled for screen readers) and its text.
 * @param {HTMLElement} container
 * @param {Context} ctx
 * @returns {Part}
 */
function mountStatus(container, { model }) {
  const dot = h("span", { class: "afl-dot", role: "img" });
  const label = h("span", { class: "afl-status-text" });
  const node = h("span", { class: "afl-status" }, dot, label);
  container.append(node);
  return {
    update() {
      const status = String(model.get("status") ?? "connecting");
      const colour = STATUS[status]?.[1];
      for (const c of ["live", "warn", "offline"]) setClass(dot, `afl-dot--${c}`, c === colour);
      setAttr(dot, "aria-label", `Connection: ${status}`);
      setText(label, statusText(status));
    },
    dispose: () => node.remove(),
  };
}

/**
 * @param {HTMLElement} container
 * @param {Context} ctx
 * @returns {Part}
 */
function mountTitle(container, { model }) {
  const title = h("span", { class: "afl-title" });
  container.append(title);
  return {
    update() {
      const text = String(model.get("title") ?? "");
      setText(title, text);
      setHidden(title, !text);
    },
    dispose: () => title.remove(),
  };
}

/**
 * The freshness badge and "updated Xs ago".
 * @param {HTMLElement} container
 * @param {Context} _ctx
 * @returns {Part<FreshnessReading>}
 */
function mountBadge(container, _ctx) {
  const badge = h("span", { class: "afl-badge", role: "status" });
  const ago = h("span", { class: "afl-ago" });
  const node = h("span", { class: "afl-freshness" }, badge, ago);
  container.append(node);
  return {
    update({ state, age }) {
      setText(badge, FRESHNESS_TEXT[state]);
      for (const s of Object.keys(FRESHNESS_TEXT)) setClass(badge, `afl-badge--${s}`, s === state);
      setText(ago, age !== null ? `updated ${formatAge(age)} ago` : "no data yet");
    },
    dispose: () => node.remove(),
  };
}

/**
 * The warning under the header: stale or offline data, and the error trait.
 * @param {HTMLElement} container
 * @param {Context} ctx
 * @returns {Part<FreshnessReading>}
 */
function mountBanner(container, { model }) {
  const bannerText = h("span", { class: "afl-banner-text" });
  const bannerError = h("span", { class: "afl-banner-error" });
  const banner = h("div", { class: "afl-banner", role: "alert", hidden: true }, bannerText, bannerError);
  container.append(banner);
  return {
    update({ status, state, age }) {
      // A fatal error says it all; otherwise why the stream is away (polling, a connection limit).
      const reason = REASON_SHOWN.has(status) ? model.get("status_reason") : "";
      const error = String(model.get("error") || reason || "");
      let text = "";
      if (state === "stale") text = `Data is stale: last update ${formatAge(age ?? 0)} ago`;
      else if (state === "offline" && DISCONNECTED.has(status)) text = "Offline: showing the last known state";
      else if (state === "offline") text = `No data yet: ${statusText(status)}`; // still connecting
      else if (status === "polling") text = "Polling the snapshot";
      setText(bannerText, text);
      setText(bannerError, text && error ? ` — ${error}` : error);
      // An error is worth showing even while data still flows (e.g. fell back to polling).
      setHidden(banner, !(text || error));
    },
    dispose: () => banner.remove(),
  };
}

// ------------------------------------------------------------------ parts: data

/**
 * Equity, day P&L (equity minus last equity), cash and buying power.
 * @param {HTMLElement} container
 * @param {Context} _ctx
 * @returns {Part<Rows>}
 */
function mountAccount(container, _ctx) {
  const summary = h("dl", { class: "afl-account", "aria-label": "Account" });
  /** @type {Record<string, HTMLElement>} */
  const fields = {};
  for (const [field, label] of ACCOUNT_FIELDS) {
    fields[field] = h("dd", { "data-field": field }, DASH);
    summary.append(h("div", { class: "afl-account-item" }, h("dt", {}, label), fields[field]));
  }
  container.append(summary);
  return {
    update({ account }) {
      const currency = account?.currency || "USD";
      const plain = currencyFormat(currency, false);
      const signed = currencyFormat(currency, true);
      const dayPl = num(account?.equity) - num(account?.last_equity);
      const base = num(account?.last_equity);
      let day = fmt(signed, dayPl);
      if (Number.isFinite(dayPl) && base > 0) day += ` (${signedPercent.format(dayPl / base)})`;
      setText(fields.equity, fmt(plain, account?.equity));
      setText(fields.day_pl, day);
      setTone(fields.day_pl, toneOf(day));
      setText(fields.cash, fmt(plain, account?.cash));
      setText(fields.buying_power, fmt(plain, account?.buying_power));
    },
    dispose: () => summary.remove(),
  };
}

/**
 * Positions sorted by the column the user picked, capped at max_rows with an
 * "N more" button; a P&L cell flashes (gain) or shakes (loss) when it moves.
 * @param {HTMLElement} container
 * @param {Context} ctx
 * @returns {Part<Rows>}
 */
function mountPositions(container, { model, frame }) {
  const table = buildTable("Positions", POSITION_COLUMNS);
  /** @type {{ column: number, dir: "asc" | "desc" }} */
  let sort = { column: 0, dir: "asc" }; // by symbol until the user picks a column
  let expanded = false;
  const timers = createTimers();
  /** @type {WeakMap<HTMLElement, () => void>} */
  const animations = new WeakMap(); // cell -> ends its running animation

  // Reduced motion: read once, then follow the system setting live.
  const motionQuery = window.matchMedia ? window.matchMedia("(prefers-reduced-motion: reduce)") : null; // jsdom has none
  let reducedMotion = Boolean(motionQuery?.matches);
  /** @param {{ matches: boolean }} event */
  const onMotion = (event) => (reducedMotion = event.matches);
  motionQuery?.addEventListener("change", onMotion);

  table.headers.forEach((th, index) => {
    // The label sits in a button so the header is reachable and operable by keyboard.
    const button = h("button", { type: "button", class: "afl-sort" }, ...th.childNodes);
    th.append(button);
    th.addEventListener("click", () => {
      sort = { column: index, dir: sort.column === index && sort.dir === "asc" ? "desc" : "asc" };
      frame.flush();
    });
  });
  const moreButton = h("button", { type: "button", class: "afl-more", "aria-expanded": "false", hidden: true });
  moreButton.addEventListener("click", () => {
    expanded = !expanded;
    frame.flush();
  });
  const empty = h("p", { class: "afl-empty", hidden: true }, "No open positions");
  const section = h("div", { class: "afl-section afl-positions" }, table.table, empty, moreButton);
  container.append(section);

  /**
   * Flashes (gain) or shakes (loss) a P&L cell; only a colour change under reduced motion.
   * @param {HTMLElement} cell
   * @param {"gain" | "loss"} direction
   */
  function animate(cell, direction) {
    animations.get(cell)?.(); // end the previous one, so this one replays from the start
    const cls = reducedMotion ? `afl-${direction}-static` : direction === "gain" ? "afl-flash-gain" : "afl-shake-loss";
    cell.classList.remove(...ANIMATION_CLASSES);
    void cell.offsetWidth; // force a style flush: re-adding the class then restarts the keyframes
    cell.classList.add(cls);
    const finish = () => {
      cell.classList.remove(cls);
      cell.removeEventListener("animationend", finish);
      timers.cancel(timer);
      animations.delete(cell);
    };
    const timer = timers.later(finish, ANIMATION_FALLBACK_MS);
    cell.addEventListener("animationend", finish);
    animations.set(cell, finish);
  }

  return {
    update({ positions }) {
      const col = POSITION_COLUMNS[sort.column];
      const entries = Object.entries(positions).sort(comparePositions(col, sort.dir === "asc" ? 1 : -1));
      const maxRows = model.get("max_rows");
      let cap = Number.isInteger(maxRows) && maxRows > 0 ? maxRows : DEFAULT_MAX_ROWS;
      const hiddenCount = Math.max(0, entries.length - cap);
      if (expanded) cap = entries.length;

      reconcile(table, POSITION_COLUMNS, "data-symbol", entries.slice(0, cap), (row, position, isNew) => {
        const pl = num(position.unrealized_pl);
        if (!isNew && Number.isFinite(pl) && row.pl !== undefined && Number.isFinite(row.pl) && pl !== row.pl) {
          animate(row.cells[PL_COLUMN], pl > row.pl ? "gain" : "loss");
        }
        row.pl = pl;
      });

      table.headers.forEach((th, i) => {
        setAttr(th, "aria-sort", i === sort.column ? (sort.dir === "asc" ? "ascending" : "descending") : "none");
      });
      setHidden(moreButton, hiddenCount === 0);
      setAttr(moreButton, "aria-expanded", String(expanded));
      setText(moreButton, expanded ? "Show fewer" : `${hiddenCount} more`);
      setHidden(empty, entries.length > 0);
    },
    dispose() {
      motionQuery?.removeEventListener("change", onMotion);
      timers.clear();
      section.remove();
    },
  };
}

/**
 * @param {Column<Position>} col
 * @param {1 | -1} direction
 * @returns {(a: [string, Position], b: [string, Position]) => number}
 */
function comparePositions(col, direction) {
  return ([keyA, a], [keyB, b]) => {
    const valueA = /** @type {Record<string, unknown>} */ (a)[col.key];
    const valueB = /** @type {Record<string, unknown>} */ (b)[col.key];
    let order = 0;
    if (col.numeric) {
      const x = num(valueA);
      const y = num(valueB);
      // Rows without a value go last whichever way the column is sorted.
      if (Number.isFinite(x) !== Number.isFinite(y)) return Number.isFinite(x) ? -1 : 1;
      order = Number.isFinite(x) ? (x - y) * direction : 0;
    } else {
      order = String(valueA ?? keyA).localeCompare(String(valueB ?? keyB)) * direction;
    }
    return order || (keyA < keyB ? -1 : keyA > keyB ? 1 : 0);
  };
}

/**
 * The newest orders first, with a status chip; announces orders that became
 * filled (the toast queue drops those a fill already announced).
 * @param {HTMLElement} container
 * @param {Context} ctx
 * @returns {Part<Rows>}
 */
function mountOrders(container, { toasts }) {
  const table = buildTable("Orders", ORDER_COLUMNS);
  const empty = h("p", { class: "afl-empty", hidden: true }, "No orders");
  const heading = h("h4", { class: "afl-section-title" }, "Orders");
  const section = h("div", { class: "afl-section afl-orders" }, heading, table.table, empty);
  container.append(section);
  /** @type {Map<string, string | undefined> | null} */
  let statuses = null; // id -> status as last drawn; null before the first draw, which announces nothing

  return {
    update({ orders }) {
      const entries = Object.entries(orders);
      if (statuses && toasts) {
        for (const [id, order] of entries) {
          if (order.status === "filled" && statuses.get(id) !== "filled") toasts.orderFilled(id, order);
        }
      }
      statuses = new Map(entries.map(([id, order]) => [id, order.status]));

      /** @param {Order} order */
      const time = (order) => Date.parse(order.updated_at ?? "") || 0;
      entries.sort(([idA, a], [idB, b]) => time(b) - time(a) || (idA < idB ? 1 : idA > idB ? -1 : 0));
      reconcile(table, ORDER_COLUMNS, "data-order-id", entries.slice(0, MAX_ORDERS));
      setHidden(empty, entries.length > 0);
    },
    dispose: () => section.remove(),
  };
}

/** @returns {ToastQueue} */
function createToastQueue() {
  /** @type {string[]} */
  const pending = [];
  /** @type {Set<string | undefined>} */
  const announced = new Set(); // order ids, oldest first
  /** @param {string | undefined} orderId */
  const remember = (orderId) => {
    announced.add(orderId);
    if (announced.size > 1000) announced.delete(announced.values().next().value);
  };
  return {
    fill(fill) {
      pending.push(fillText(fill));
      remember(fill.order_id);
    },
    orderFilled(id, order) {
      if (announced.has(id)) return;
      pending.push(orderFilledText(order));
      remember(id);
    },
    take: () => pending.splice(0),
  };
}

/**
 * Shows what the toast queue holds, in an aria-live region, each for a few seconds.
 * @param {HTMLElement} container
 * @param {Context} ctx
 * @returns {Part<Rows>}
 */
function mountToasts(container, { toasts: queue }) {
  const region = h("div", { class: "afl-toasts", "aria-live": "polite" });
  container.append(region);
  const timers = createTimers();
  return {
    update() {
      for (const text of queue?.take() ?? []) {
        const toast = h("div", { class: "afl-toast" }, text);
        region.append(toast);
        while (region.childElementCount > MAX_TOASTS) region.firstElementChild?.remove();
        timers.later(() => toast.remove(), TOAST_MS);
      }
    },
    dispose() {
      timers.clear();
      region.remove();
    },
  };
}

// ------------------------------------------------------------------ render

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

// Models whose rows trait a view is writing right now (a delta merge). Shared
// by all views: a model shown twice must not take its sibling's merge for a
// new full state from the kernel.
const writingRows = new WeakSet();

/**
 * Keeps the model's rows trait complete: merges each new delta into it, and
 * restarts the version count when the kernel sends a full state.
 * @param {Model} model
 * @param {(delta: Delta | null) => void} changed  after a new delta (given) or a new full state (null)
 * @returns {() => void} stops following
 */
function followRows(model, changed) {
  let seenVersion = versionOf(model.get("rows")); // the newest state this view has taken in

  const onRows = () => {
    // A full state from the kernel (not one of our merges) restarts the version count.
    if (!writingRows.has(model)) seenVersion = versionOf(model.get("rows"));
    changed(null);
  };
  const onDelta = () => {
    const delta = model.get("delta");
    const version = delta?.version;
    if (!delta || version == null || !(num(version) > seenVersion)) return; // stale, replayed or empty
    seenVersion = version;
    const held = model.get("rows");
    // A sibling view of this model may have merged this very delta already.
    if (version > versionOf(held)) {
      writingRows.add(model);
      try {
        model.set("rows", mergeDelta(held, delta)); // local only: the kernel holds its own copy
      } finally {
        writingRows.delete(model);
      }
    }
    changed(delta);
  };
  model.on("change:rows", onRows);
  model.on("change:delta", onDelta);
  return () => {
    model.off("change:rows", onRows);
    model.off("change:delta", onDelta);
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
    const rows = normalizeRows(model.get("rows"));
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
  if (header.childElementCount) root.append(header);
  const banner = want("banner", () => mountBanner(root, ctx));
  const account = want("account", () => mountAccount(root, ctx));
  const positions = want("positions", () => mountPositions(root, ctx));
  const orders = want("orders", () => mountOrders(root, ctx));
  const toasts = want("toasts", () => mountToasts(root, ctx));

  dataParts.push(...present([account, positions, orders, toasts]));
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
  disposers.push(
    followRows(model, (delta) => {
      if (delta && ctx.toasts) for (const fill of delta.fills ?? []) ctx.toasts.fill(fill);
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

export default { render };
