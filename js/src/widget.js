/**
 * AlphaFlow Live: the browser side of the portfolio widget.
 *
 * One plain ES module with no imports: anywidget loads it as it is. The
 * Python side (alphaflow_live/widgets.py) owns these traits:
 *
 *   component  which part to show: portfolio | status | badge | positions | account
 *   status, error, last_data_ms, live_s, delayed_s   connection and freshness
 *   rows       the full state {version, positions, orders, account}
 *   delta      one change {version, positions: {upsert, remove}, orders: {...}, account?, fills}
 *   max_rows, title
 *
 * The kernel sends `rows` once (and again after a reload) and then only
 * deltas. Each delta is merged here into the rows trait (model.set, never
 * saved back), so a saved notebook holds the complete state. DOM work is
 * batched into one animation frame and writes only the cells whose text
 * changed: a 10 Hz stream of a 500-position book stays cheap.
 *
 * Freshness (Live / Delayed / Stale / Offline) is computed here, from the
 * browser's clock, so it keeps moving when the kernel is busy or dead.
 */

const FRESHNESS_TEXT = { live: "Live", delayed: "Delayed", stale: "Stale", offline: "Offline" };
// Connection status -> [text beside the dot, dot colour].
const STATUS = {
  connecting: ["Connecting…", "warn"],
  live: ["Streaming", "live"],
  reconnecting: ["Reconnecting…", "warn"],
  polling: ["Polling (stream unavailable)", "warn"],
  offline: ["Offline", "offline"],
  closed: ["Closed", "offline"],
};
const statusText = (status) => STATUS[status]?.[0] ?? status;
// Statuses in which nothing reaches the kernel at all (as in freshness.py).
const DISCONNECTED = new Set(["offline", "closed"]);

// Which parts each component shows; "portfolio" shows them all.
const PARTS = {
  portfolio: ["status", "title", "freshness", "banner", "account", "positions", "orders", "toasts"],
  status: ["status"],
  badge: ["freshness"],
  positions: ["positions"],
  account: ["account"],
};

const ACCOUNT_FIELDS = [
  ["equity", "Equity"],
  ["day_pl", "Day P&L"],
  ["cash", "Cash"],
  ["buying_power", "Buying power"],
];

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

/** Decimal strings ("187.20") and numbers to a number; missing values to NaN. */
function num(value) {
  return value === null || value === undefined || value === "" ? NaN : Number(value);
}

function fmt(formatter, value) {
  const n = num(value);
  return Number.isFinite(n) ? formatter.format(n) : DASH;
}

/** Gain or loss by the sign actually shown, so "-0.001" (shown "0.00") has no colour. */
function toneOf(text) {
  return text.startsWith("+") ? "gain" : text.startsWith("-") ? "loss" : null;
}

const currencyFormats = new Map();
function currencyFormat(currency, signed) {
  const key = `${currency}|${signed}`;
  if (!currencyFormats.has(key)) {
    const signDisplay = signed ? "exceptZero" : "auto";
    let format = signed ? signedMoney : money; // for a currency that is not an ISO 4217 code
    try {
      format = new Intl.NumberFormat("en-US", { style: "currency", currency, signDisplay });
    } catch {
      // keep the plain number format
    }
    currencyFormats.set(key, format);
  }
  return currencyFormats.get(key);
}

function formatAge(seconds) {
  const s = Math.floor(seconds);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
  return `${Math.floor(s / 86400)}d`;
}

const atPrice = (price) => (price != null && price !== "" ? ` @ ${fmt(money, price)}` : "");
const upper = (value) => String(value ?? DASH).toUpperCase();
const slug = (value) => `${value}`.toLowerCase().replace(/[^a-z0-9_-]+/g, "-");

// ------------------------------------------------------------------ pure rules

/** The same rule as alphaflow_live/freshness.py, with the browser's clock. */
export function classifyFreshness(status, lastDataMs, nowMs, liveS = DEFAULT_LIVE_S, delayedS = DEFAULT_DELAYED_S) {
  if (DISCONNECTED.has(status) || lastDataMs === null || lastDataMs === undefined) return "offline";
  const age = (nowMs - lastDataMs) / 1000;
  if (age <= liveS) return "live";
  if (age <= delayedS) return "delayed";
  return "stale";
}

const versionOf = (rows) => (Number.isFinite(rows?.version) ? rows.version : -Infinity);
const normalizeRows = (rows) => ({
  version: versionOf(rows),
  positions: rows?.positions ?? {},
  orders: rows?.orders ?? {},
  account: rows?.account ?? null,
});

/**
 * Rows after one delta, as a new object (the old one is not mutated: the
 * model compares old and new values to decide whether anything changed).
 */
export function mergeDelta(rows, delta) {
  const base = normalizeRows(rows);
  const mergeMap = (current, change) => {
    const merged = { ...current, ...(change?.upsert ?? {}) };
    for (const key of change?.remove ?? []) delete merged[key];
    return merged;
  };
  return {
    version: delta.version,
    positions: mergeMap(base.positions, delta.positions),
    orders: mergeMap(base.orders, delta.orders),
    // Absent means unchanged; null is read the same way (an account does not vanish mid-session).
    account: delta.account ?? base.account,
  };
}

// ------------------------------------------------------------------ columns

// A column: the field it sorts by, its header, the text of a cell, and flags:
// numeric (right-aligned, sorted as numbers), toned (afl-gain / afl-loss by
// sign), chip (the text sits in a status chip).
const column = (key, label, text, flags = {}) => ({ key, label, text, ...flags });
const NUMERIC = { numeric: true };
const TONED = { numeric: true, toned: true };

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

const fillText = (f) => `Filled: ${upper(f.side)} ${fmt(quantity, f.qty)} ${f.symbol}${atPrice(f.price)}`;
const orderFilledText = (o) =>
  `Filled: ${upper(o.side)} ${fmt(quantity, o.filled_qty ?? o.qty)} ${o.symbol}${atPrice(o.filled_avg_price)}`;

// ------------------------------------------------------------------ DOM helpers

function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value !== null && value !== undefined && value !== false) node.setAttribute(name, value === true ? "" : value);
  }
  node.append(...children);
  return node;
}

// Writers that leave the DOM alone when nothing changed (no mutation, no relayout).
function setText(node, text) {
  if (node.textContent !== text) node.textContent = text;
}
function setClass(node, cls, on) {
  if (node.classList.contains(cls) !== on) node.classList.toggle(cls, on);
}
function setHidden(node, hidden) {
  if (node.hidden !== hidden) node.hidden = hidden;
}
function setAttr(node, name, value) {
  if (node.getAttribute(name) !== value) node.setAttribute(name, value);
}
function setTone(node, tone) {
  setClass(node, "afl-gain", tone === "gain");
  setClass(node, "afl-loss", tone === "loss");
}

function buildTable(label, columns) {
  const headers = columns.map((col) => h("th", { scope: "col", class: col.numeric ? "afl-num" : null }, col.label));
  const tbody = h("tbody");
  const thead = h("thead", {}, h("tr", {}, ...headers));
  const table = h("table", { class: "afl-table", role: "table", "aria-label": label }, thead, tbody);
  return { table, headers, tbody, rows: new Map() };
}

function createRow(columns, keyAttr, key) {
  const cells = columns.map((col) => {
    const td = h("td", { "data-col": col.key, class: col.numeric ? "afl-num" : null });
    if (col.chip) td.append(h("span", { class: "afl-chip" }));
    return td;
  });
  return { tr: h("tr", { [keyAttr]: key }, ...cells), cells, texts: [] };
}

/** Brings one row up to date, writing only the cells whose text changed. */
function syncRow(row, columns, item) {
  columns.forEach((col, i) => {
    const text = col.text(item);
    if (row.texts[i] === text) return;
    row.texts[i] = text;
    const cell = row.cells[i];
    if (col.chip) {
      cell.firstChild.textContent = text;
      cell.firstChild.className = `afl-chip afl-chip--${slug(text)}`;
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
 */
function reconcile(table, columns, keyAttr, entries, beforeSync) {
  const { tbody, rows } = table;
  const keep = new Set();
  entries.forEach(([key, item], index) => {
    let row = rows.get(key);
    const isNew = !row;
    if (isNew) {
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

// Models whose rows trait a view is writing right now (a delta merge). Shared
// by all views: a model shown twice must not take its sibling's merge for a
// new full state from the kernel.
const writingRows = new WeakSet();

// ------------------------------------------------------------------ render

export function render({ model, el }) {
  const component = PARTS[model.get("component")] ? model.get("component") : "portfolio";
  const parts = new Set(PARTS[component]);
  const disposers = [];
  const timers = new Set();

  // Every timer goes through here so that cleanup can clear them all.
  const later = (fn, ms) => {
    const id = setTimeout(() => {
      timers.delete(id);
      fn();
    }, ms);
    timers.add(id);
    return id;
  };
  const cancel = (id) => {
    clearTimeout(id);
    timers.delete(id);
  };
  const listen = (event, handler) => {
    model.on(event, handler);
    disposers.push(() => model.off(event, handler));
  };

  const root = h("div", { class: `afl-root afl-component-${component}` });
  el.append(root);

  // ---- reduced motion: read once, then follow the system setting live.
  const motionQuery = window.matchMedia ? window.matchMedia("(prefers-reduced-motion: reduce)") : null; // jsdom has none
  let reducedMotion = Boolean(motionQuery?.matches);
  if (motionQuery) {
    const onMotion = (event) => (reducedMotion = event.matches);
    motionQuery.addEventListener("change", onMotion);
    disposers.push(() => motionQuery.removeEventListener("change", onMotion));
  }

  // ---- header: status dot, title, freshness badge
  const header = h("div", { class: "afl-header" });
  let dot, statusLabel, title, badge, ago;
  if (parts.has("status")) {
    dot = h("span", { class: "afl-dot", role: "img" });
    statusLabel = h("span", { class: "afl-status-text" });
    header.append(h("span", { class: "afl-status" }, dot, statusLabel));
  }
  if (parts.has("title")) {
    title = h("span", { class: "afl-title" });
    header.append(title);
  }
  if (parts.has("freshness")) {
    badge = h("span", { class: "afl-badge", role: "status" });
    ago = h("span", { class: "afl-ago" });
    header.append(h("span", { class: "afl-freshness" }, badge, ago));
  }
  if (header.childElementCount) root.append(header);

  let banner, bannerText, bannerError;
  if (parts.has("banner")) {
    bannerText = h("span", { class: "afl-banner-text" });
    bannerError = h("span", { class: "afl-banner-error" });
    banner = h("div", { class: "afl-banner", role: "alert", hidden: true }, bannerText, bannerError);
    root.append(banner);
  }

  // ---- account summary
  const accountFields = {};
  if (parts.has("account")) {
    const summary = h("dl", { class: "afl-account", "aria-label": "Account" });
    for (const [field, label] of ACCOUNT_FIELDS) {
      accountFields[field] = h("dd", { "data-field": field }, DASH);
      summary.append(h("div", { class: "afl-account-item" }, h("dt", {}, label), accountFields[field]));
    }
    root.append(summary);
  }

  // ---- positions table
  let positions, moreButton, positionsEmpty;
  let sort = { column: 0, dir: "asc" }; // by symbol until the user picks a column
  let expanded = false;
  if (parts.has("positions")) {
    positions = buildTable("Positions", POSITION_COLUMNS);
    positions.headers.forEach((th, index) => {
      // The label sits in a button so the header is reachable and operable by keyboard.
      const button = h("button", { type: "button", class: "afl-sort" }, ...th.childNodes);
      th.append(button);
      th.addEventListener("click", () => {
        sort = { column: index, dir: sort.column === index && sort.dir === "asc" ? "desc" : "asc" };
        renderNow();
      });
    });
    moreButton = h("button", { type: "button", class: "afl-more", "aria-expanded": "false", hidden: true });
    moreButton.addEventListener("click", () => {
      expanded = !expanded;
      renderNow();
    });
    positionsEmpty = h("p", { class: "afl-empty", hidden: true }, "No open positions");
    root.append(h("div", { class: "afl-section afl-positions" }, positions.table, positionsEmpty, moreButton));
  }

  // ---- orders blotter
  let orders, ordersEmpty;
  if (parts.has("orders")) {
    orders = buildTable("Orders", ORDER_COLUMNS);
    ordersEmpty = h("p", { class: "afl-empty", hidden: true }, "No orders");
    const heading = h("h4", { class: "afl-section-title" }, "Orders");
    root.append(h("div", { class: "afl-section afl-orders" }, heading, orders.table, ordersEmpty));
  }

  let toasts;
  if (parts.has("toasts")) {
    toasts = h("div", { class: "afl-toasts", "aria-live": "polite" });
    root.append(toasts);
  }

  // ---- status and freshness (not batched: a few nodes, written only on change)

  function renderStatus() {
    if (!dot) return;
    const status = String(model.get("status") ?? "connecting");
    const colour = STATUS[status]?.[1];
    for (const c of ["live", "warn", "offline"]) setClass(dot, `afl-dot--${c}`, c === colour);
    setAttr(dot, "aria-label", `Connection: ${status}`);
    setText(statusLabel, statusText(status));
  }

  function thresholds() {
    const liveS = num(model.get("live_s"));
    const delayedS = num(model.get("delayed_s"));
    const live = liveS > 0 ? liveS : DEFAULT_LIVE_S;
    return [live, delayedS >= live ? delayedS : Math.max(live, DEFAULT_DELAYED_S)];
  }

  function refreshFreshness() {
    if (!badge && !banner) return;
    const status = String(model.get("status") ?? "connecting");
    const last = model.get("last_data_ms");
    const hasData = last !== null && last !== undefined;
    const now = Date.now();
    const state = classifyFreshness(status, last, now, ...thresholds());
    // The server's clock may run ahead of the browser's: never show a negative age.
    const age = hasData ? Math.max(0, (now - last) / 1000) : null;
    if (badge) {
      setText(badge, FRESHNESS_TEXT[state]);
      for (const s of Object.keys(FRESHNESS_TEXT)) setClass(badge, `afl-badge--${s}`, s === state);
      setText(ago, hasData ? `updated ${formatAge(age)} ago` : "no data yet");
    }
    if (banner) {
      const error = String(model.get("error") ?? "");
      let text = "";
      if (state === "stale") text = `Data is stale: last update ${formatAge(age)} ago`;
      else if (state === "offline" && DISCONNECTED.has(status)) text = "Offline: showing the last known state";
      else if (state === "offline") text = `No data yet: ${statusText(status)}`; // still connecting
      setText(bannerText, text);
      setText(bannerError, text && error ? ` — ${error}` : error);
      // An error is worth showing even while data still flows (e.g. fell back to polling).
      setHidden(banner, !(text || error));
    }
  }

  function renderTitle() {
    if (!title) return;
    const text = String(model.get("title") ?? "");
    setText(title, text);
    setHidden(title, !text);
  }

  // ---- data: merged deltas, rendered once per animation frame

  let seenVersion = versionOf(model.get("rows")); // the newest state this view has taken in
  let frame = 0;
  const pendingToasts = [];
  const fillToasted = new Set(); // order ids already announced by a fill toast
  let orderStatuses = null; // id -> status as last rendered; null before the first render
  const cellAnimations = new WeakMap(); // cell -> function that ends its running animation

  function onDelta() {
    const delta = model.get("delta");
    if (!delta || !(num(delta.version) > seenVersion)) return; // stale, replayed or empty
    seenVersion = delta.version;
    const held = model.get("rows");
    // A sibling view of this model may have merged this very delta already.
    if (delta.version > versionOf(held)) {
      writingRows.add(model);
      try {
        model.set("rows", mergeDelta(held, delta)); // local only: the kernel holds its own copy
      } finally {
        writingRows.delete(model);
      }
    }
    if (toasts) {
      for (const fill of delta.fills ?? []) {
        pendingToasts.push(fillText(fill));
        rememberFillToast(fill.order_id);
      }
    }
    scheduleRender();
  }

  function onRows() {
    // A full state from the kernel (not one of our merges) restarts the version count.
    if (!writingRows.has(model)) seenVersion = versionOf(model.get("rows"));
    scheduleRender();
  }

  function rememberFillToast(orderId) {
    fillToasted.add(orderId);
    if (fillToasted.size > 1000) fillToasted.delete(fillToasted.values().next().value);
  }

  // Several deltas within one frame cost one DOM update.
  function scheduleRender() {
    if (frame || !(positions || orders || parts.has("account"))) return;
    frame = requestAnimationFrame(() => {
      frame = 0;
      renderData();
    });
  }

  function renderNow() {
    if (frame) cancelAnimationFrame(frame);
    frame = 0;
    renderData();
  }

  function renderData() {
    const rows = normalizeRows(model.get("rows"));
    if (parts.has("account")) renderAccount(rows.account);
    if (positions) renderPositions(rows.positions);
    if (orders) renderOrders(rows.orders);
    if (toasts) for (const text of pendingToasts.splice(0)) showToast(text);
  }

  function renderAccount(account) {
    const currency = account?.currency || "USD";
    const plain = currencyFormat(currency, false);
    const signed = currencyFormat(currency, true);
    const dayPl = num(account?.equity) - num(account?.last_equity);
    const base = num(account?.last_equity);
    let day = fmt(signed, dayPl);
    if (Number.isFinite(dayPl) && base > 0) day += ` (${signedPercent.format(dayPl / base)})`;
    setText(accountFields.equity, fmt(plain, account?.equity));
    setText(accountFields.day_pl, day);
    setTone(accountFields.day_pl, toneOf(day));
    setText(accountFields.cash, fmt(plain, account?.cash));
    setText(accountFields.buying_power, fmt(plain, account?.buying_power));
  }

  function renderPositions(bySymbol) {
    const column = POSITION_COLUMNS[sort.column];
    const entries = Object.entries(bySymbol).sort(comparePositions(column, sort.dir === "asc" ? 1 : -1));
    const maxRows = model.get("max_rows");
    let cap = Number.isInteger(maxRows) && maxRows > 0 ? maxRows : DEFAULT_MAX_ROWS;
    const hiddenCount = Math.max(0, entries.length - cap);
    if (expanded) cap = entries.length;

    reconcile(positions, POSITION_COLUMNS, "data-symbol", entries.slice(0, cap), (row, position, isNew) => {
      const pl = num(position.unrealized_pl);
      if (!isNew && Number.isFinite(pl) && Number.isFinite(row.pl) && pl !== row.pl) {
        animate(row.cells[PL_COLUMN], pl > row.pl ? "gain" : "loss");
      }
      row.pl = pl;
    });

    positions.headers.forEach((th, i) => {
      setAttr(th, "aria-sort", i === sort.column ? (sort.dir === "asc" ? "ascending" : "descending") : "none");
    });
    setHidden(moreButton, hiddenCount === 0);
    setAttr(moreButton, "aria-expanded", String(expanded));
    setText(moreButton, expanded ? "Show fewer" : `${hiddenCount} more`);
    setHidden(positionsEmpty, entries.length > 0);
  }

  function comparePositions(column, direction) {
    return ([keyA, a], [keyB, b]) => {
      let order = 0;
      if (column.numeric) {
        const x = num(a[column.key]);
        const y = num(b[column.key]);
        // Rows without a value go last whichever way the column is sorted.
        if (Number.isFinite(x) !== Number.isFinite(y)) return Number.isFinite(x) ? -1 : 1;
        order = Number.isFinite(x) ? (x - y) * direction : 0;
      } else {
        order = String(a[column.key] ?? keyA).localeCompare(String(b[column.key] ?? keyB)) * direction;
      }
      return order || (keyA < keyB ? -1 : keyA > keyB ? 1 : 0);
    };
  }

  function renderOrders(byId) {
    const entries = Object.entries(byId);
    // Announce orders that became filled, unless a fill toast already did.
    if (orderStatuses && toasts) {
      for (const [id, order] of entries) {
        if (order.status === "filled" && orderStatuses.get(id) !== "filled" && !fillToasted.has(id)) {
          pendingToasts.push(orderFilledText(order));
          rememberFillToast(id);
        }
      }
    }
    orderStatuses = new Map(entries.map(([id, order]) => [id, order.status]));

    const time = (order) => Date.parse(order.updated_at) || 0;
    entries.sort(([idA, a], [idB, b]) => time(b) - time(a) || (idA < idB ? 1 : idA > idB ? -1 : 0));
    reconcile(orders, ORDER_COLUMNS, "data-order-id", entries.slice(0, MAX_ORDERS));
    setHidden(ordersEmpty, entries.length > 0);
  }

  /** Flashes (gain) or shakes (loss) a P&L cell; only a colour change under reduced motion. */
  function animate(cell, direction) {
    cellAnimations.get(cell)?.(); // end the previous one, so this one replays from the start
    const cls = reducedMotion ? `afl-${direction}-static` : direction === "gain" ? "afl-flash-gain" : "afl-shake-loss";
    cell.classList.remove(...ANIMATION_CLASSES);
    void cell.offsetWidth; // force a style flush: re-adding the class then restarts the keyframes
    cell.classList.add(cls);
    const finish = () => {
      cell.classList.remove(cls);
      cell.removeEventListener("animationend", finish);
      cancel(timer);
      cellAnimations.delete(cell);
    };
    const timer = later(finish, ANIMATION_FALLBACK_MS);
    cell.addEventListener("animationend", finish);
    cellAnimations.set(cell, finish);
  }

  function showToast(text) {
    const toast = h("div", { class: "afl-toast" }, text);
    toasts.append(toast);
    while (toasts.childElementCount > MAX_TOASTS) toasts.firstElementChild.remove();
    later(() => toast.remove(), TOAST_MS);
  }

  // ---- wiring

  renderStatus();
  renderTitle();
  refreshFreshness();
  renderData();

  listen("change:status", () => {
    renderStatus();
    refreshFreshness();
  });
  for (const trait of ["error", "last_data_ms", "live_s", "delayed_s"]) listen(`change:${trait}`, refreshFreshness);
  listen("change:title", renderTitle);
  listen("change:max_rows", scheduleRender);
  // Every view merges deltas, whatever it shows, so the rows trait stays complete.
  listen("change:rows", onRows);
  listen("change:delta", onDelta);

  if (badge || banner) {
    // "updated Xs ago" and the badge age with the wall clock, not with messages.
    const ticker = setInterval(refreshFreshness, 1000);
    disposers.push(() => clearInterval(ticker));
  }

  return function cleanup() {
    for (const dispose of disposers.splice(0)) dispose();
    if (frame) cancelAnimationFrame(frame);
    frame = 0;
    for (const id of timers) clearTimeout(id);
    timers.clear();
    root.remove();
  };
}

export default { render };
