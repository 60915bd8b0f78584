// @ts-check
/**
 * The rows trait, kept complete in the browser. The kernel sends `rows` once
 * (and again after a reload) and then only deltas; each delta is merged here
 * into the rows trait (model.set, never saved back), so a saved notebook
 * holds the complete state. Every view merges, whatever it shows, so the
 * trait stays complete.
 */

import { num } from "./format.js";

/** @typedef {import("./types.js").RowsTrait} RowsTrait */
/** @typedef {import("./types.js").Rows} Rows */
/** @typedef {import("./types.js").Delta} Delta */
/** @typedef {import("./types.js").Model} Model */
/** @typedef {import("./types.js").EquityPoint} EquityPoint */
/**
 * @template T
 * @typedef {import("./types.js").MapChange<T>} MapChange
 */

// As many points as the kernel keeps (widgets.py MAX_EQUITY_POINTS): the oldest go first.
export const MAX_EQUITY_POINTS = 10_000;

/** @param {RowsTrait | null | undefined} rows */
export const versionOf = (rows) =>
  Number.isFinite(rows?.version) ? /** @type {number} */ (rows?.version) : -Infinity;

/**
 * @param {RowsTrait | null | undefined} rows
 * @param {number | null} [asOf]  epoch ms the data is current as of
 * @returns {Rows}
 */
export const normalizeRows = (rows, asOf = null) => ({
  version: versionOf(rows),
  positions: rows?.positions ?? {},
  orders: rows?.orders ?? {},
  fills: rows?.fills ?? {},
  equity: Array.isArray(rows?.equity) ? rows.equity : [],
  account: rows?.account ?? null,
  asOf: typeof asOf === "number" && Number.isFinite(asOf) ? asOf : null,
});

/**
 * @template T
 * @param {Record<string, T>} current
 * @param {MapChange<T> | undefined} change
 */
function mergeMap(current, change) {
  if (!change || (!Object.keys(change.upsert ?? {}).length && !change.remove?.length)) return current;
  const merged = { ...current, ...(change.upsert ?? {}) };
  for (const key of change.remove ?? []) delete merged[key];
  return merged;
}

/**
 * Rows after one delta, as a new object (the old one is not mutated: the
 * model compares old and new values to decide whether anything changed).
 * Equity points are appended (the same point objects, so the chart finds
 * where it left off), down to the newest MAX_EQUITY_POINTS.
 * @param {RowsTrait | null | undefined} rows
 * @param {Delta} delta
 * @returns {RowsTrait}
 */
export function mergeDelta(rows, delta) {
  const base = normalizeRows(rows);
  /** @type {EquityPoint[]} */
  let equity = base.equity;
  if (delta.equity?.length) {
    equity = base.equity.concat(delta.equity);
    if (equity.length > MAX_EQUITY_POINTS) equity = equity.slice(equity.length - MAX_EQUITY_POINTS);
  }
  return {
    version: /** @type {number} */ (delta.version),
    positions: mergeMap(base.positions, delta.positions),
    orders: mergeMap(base.orders, delta.orders),
    fills: mergeMap(base.fills, delta.fills),
    equity,
    // Absent means unchanged; null is read the same way (an account does not vanish mid-session).
    account: delta.account ?? base.account,
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
export function followRows(model, changed) {
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
