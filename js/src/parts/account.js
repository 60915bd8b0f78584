// @ts-check
/**
 * The account summary: equity, day P&L, realized today, cash, buying power;
 * the exposure (long, short, gross, net, in money and as a share of equity);
 * and the time the data is current as of, on the browser's clock.
 */

import {
  DASH,
  clockTime,
  currencyFormat,
  fmt,
  fullTime,
  num,
  percent,
  signedPercent,
  timeMs,
  toneOf,
} from "../format.js";
import { h, setAttr, setText, setTone } from "../dom.js";

/** @typedef {import("../types.js").Context} Context */
/** @typedef {import("../types.js").Rows} Rows */
/** @typedef {import("../types.js").Account} Account */
/** @typedef {import("../types.js").Position} Position */
/**
 * @template [Input=void]
 * @typedef {import("../types.js").Part<Input>} Part
 */

/** @type {ReadonlyArray<readonly [string, string]>} */
const SUMMARY_FIELDS = [
  ["equity", "Equity"],
  ["day_pl", "Day P&L"],
  ["realized_pl_today", "Realized today"],
  ["cash", "Cash"],
  ["buying_power", "Buying power"],
];
/** @type {ReadonlyArray<readonly [string, string]>} */
const EXPOSURE_FIELDS = [
  ["long", "Long"],
  ["short", "Short"],
  ["gross", "Gross"],
  ["net", "Net"],
];

/**
 * Long, short (negative), gross and net market value: the account's own
 * figures, or the positions' sums when the account has none.
 * @param {Account | null} account
 * @param {Record<string, Position>} positions
 */
export function exposure(account, positions) {
  let long = num(account?.long_market_value);
  let short = num(account?.short_market_value);
  if (!Number.isFinite(long) || !Number.isFinite(short)) {
    long = 0;
    short = 0;
    for (const p of Object.values(positions)) {
      const value = num(p.market_value);
      if (value > 0) long += value;
      else if (value < 0) short += value;
    }
  }
  return { long, short, gross: long - short, net: long + short };
}

/**
 * @param {HTMLElement} container
 * @param {string} label
 * @param {ReadonlyArray<readonly [string, string]>} fields
 * @param {Record<string, HTMLElement>} into  the value nodes, by field
 */
function summary(container, label, fields, into) {
  const list = h("dl", { class: "afl-account", "aria-label": label });
  for (const [field, text] of fields) {
    into[field] = h("dd", { "data-field": field }, DASH);
    list.append(h("div", { class: "afl-account-item" }, h("dt", {}, text), into[field]));
  }
  container.append(list);
}

/**
 * @param {HTMLElement} container
 * @param {Context} _ctx
 * @returns {Part<Rows>}
 */
export function mountAccount(container, _ctx) {
  const node = h("div", { class: "afl-account-part" });
  /** @type {Record<string, HTMLElement>} */
  const fields = {};
  summary(node, "Account", SUMMARY_FIELDS, fields);
  summary(node, "Exposure", EXPOSURE_FIELDS, fields);
  const asOf = h("p", { class: "afl-asof" }, "as of ", h("time", {}, DASH));
  const asOfTime = /** @type {HTMLElement} */ (asOf.lastElementChild);
  node.append(asOf);
  container.append(node);

  return {
    update({ account, positions, asOf: asOfMs }) {
      const currency = account?.currency || "USD";
      const plain = currencyFormat(currency, false);
      const signed = currencyFormat(currency, true);
      const equity = num(account?.equity);
      /**
       * @param {number} value
       * @param {Intl.NumberFormat} format
       * @param {Intl.NumberFormat} share  formats value / base
       * @param {number} base
       */
      const withShare = (value, format, share, base) => {
        const text = fmt(format, value);
        return Number.isFinite(value) && base > 0 ? `${text} (${share.format(value / base)})` : text;
      };
      /**
       * @param {string} field
       * @param {string} text
       * @param {boolean} [toned]
       */
      const show = (field, text, toned = false) => {
        setText(fields[field], text);
        if (toned) setTone(fields[field], toneOf(text));
      };

      show("equity", fmt(plain, account?.equity));
      const dayPl = equity - num(account?.last_equity);
      show("day_pl", withShare(dayPl, signed, signedPercent, num(account?.last_equity)), true);
      show("realized_pl_today", fmt(signed, account?.realized_pl_today), true);
      show("cash", fmt(plain, account?.cash));
      show("buying_power", fmt(plain, account?.buying_power));

      const { long, short, gross, net } = exposure(account, positions);
      const noBook = account === null && Object.keys(positions).length === 0;
      show("long", noBook ? DASH : withShare(long, plain, percent, equity));
      show("short", noBook ? DASH : withShare(short, plain, percent, equity));
      show("gross", noBook ? DASH : withShare(gross, plain, percent, equity));
      show("net", noBook ? DASH : withShare(net, plain, percent, equity));

      const at = timeMs(asOfMs ?? account?.updated_at);
      setText(asOfTime, clockTime(at));
      setAttr(asOfTime, "datetime", Number.isFinite(at) ? new Date(at).toISOString() : null);
      setAttr(asOfTime, "title", fullTime(at) || null);
    },
    dispose: () => node.remove(),
  };
}
