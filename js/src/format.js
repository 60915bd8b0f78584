// @ts-check
/**
 * How numbers, prices and times read. Money has two decimals; a price keeps
 * the decimals it carries, between 2 and 8, so a sub-penny, FX or crypto
 * price never reads 0.00; times are the browser's local wall clock.
 */

export const DASH = "—";

const TWO_DECIMALS = { minimumFractionDigits: 2, maximumFractionDigits: 2 };
export const money = new Intl.NumberFormat("en-US", TWO_DECIMALS);
export const signedMoney = new Intl.NumberFormat("en-US", { ...TWO_DECIMALS, signDisplay: "exceptZero" });
export const percent = new Intl.NumberFormat("en-US", { ...TWO_DECIMALS, style: "percent" });
export const signedPercent = new Intl.NumberFormat("en-US", {
  ...TWO_DECIMALS,
  style: "percent",
  signDisplay: "exceptZero",
});
export const quantity = new Intl.NumberFormat("en-US", { maximumFractionDigits: 6 }); // fractional shares
// At least 2 decimals, at most 8; trailing zeros past the second go (the engine pads prices to 6).
export const priceFormat = new Intl.NumberFormat("en-US", { minimumFractionDigits: 2, maximumFractionDigits: 8 });
// A change, however small, keeps its sign: "+0.0004", never "0.00".
export const signedChange = new Intl.NumberFormat("en-US", {
  minimumFractionDigits: 2,
  maximumFractionDigits: 4,
  signDisplay: "always",
});

/**
 * Decimal strings ("187.20") and numbers to a number; missing values to NaN.
 * @param {unknown} value
 */
export function num(value) {
  return value === null || value === undefined || value === "" ? NaN : Number(value);
}

/**
 * @param {Intl.NumberFormat} formatter
 * @param {unknown} value
 */
export function fmt(formatter, value) {
  const n = num(value);
  return Number.isFinite(n) ? formatter.format(n) : DASH;
}

/**
 * A price with the precision it carries (2 to 8 decimals).
 * @param {unknown} value
 */
export const price = (value) => fmt(priceFormat, value);

/**
 * Gain or loss by the sign actually shown, so "-0.001" (shown "0.00") has no colour.
 * @param {string} text
 * @returns {"gain" | "loss" | null}
 */
export function toneOf(text) {
  return text.startsWith("+") ? "gain" : text.startsWith("-") ? "loss" : null;
}

/** @type {Map<string, Intl.NumberFormat>} */
const currencyFormats = new Map();
/**
 * @param {string} currency
 * @param {boolean} signed
 */
export function currencyFormat(currency, signed) {
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
export function formatAge(seconds) {
  const s = Math.floor(seconds);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
  return `${Math.floor(s / 86400)}d`;
}

/**
 * Epoch ms of an ISO 8601 string or a number of ms; NaN when there is none.
 * @param {unknown} value
 */
export function timeMs(value) {
  if (typeof value === "number") return value;
  if (typeof value !== "string" || !value) return NaN;
  return Date.parse(value);
}

/** @param {number} n */
const pad = (n) => String(n).padStart(2, "0");

/**
 * hh:mm:ss on the browser's clock (24 h), from an ISO string or epoch ms.
 * @param {unknown} value
 */
export function clockTime(value) {
  const ms = timeMs(value);
  if (!Number.isFinite(ms)) return DASH;
  const d = new Date(ms);
  return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

/**
 * The local date and time in full, for a tooltip.
 * @param {unknown} value
 */
export function fullTime(value) {
  const ms = timeMs(value);
  return Number.isFinite(ms) ? new Date(ms).toString() : "";
}

/** @param {Decimal} value */
export const atPrice = (value) => (value != null && value !== "" ? ` @ ${price(value)}` : "");
/** @param {unknown} value */
export const upper = (value) => String(value ?? DASH).toUpperCase();
/** @param {unknown} value */
export const slug = (value) => `${value}`.toLowerCase().replace(/[^a-z0-9_-]+/g, "-");

/** @typedef {import("./types.js").Decimal} Decimal */
