// @ts-check
/**
 * Freshness from the browser's clock, so the badge and the banner keep
 * moving when the kernel is busy or dead: the same rule as
 * alphaflow_live/freshness.py.
 */

import { num } from "./format.js";

/** @typedef {import("./types.js").Freshness} Freshness */
/** @typedef {import("./types.js").FreshnessReading} FreshnessReading */
/** @typedef {import("./types.js").Model} Model */

/** @type {Record<Freshness, string>} */
export const FRESHNESS_TEXT = { live: "Live", delayed: "Delayed", stale: "Stale", offline: "Offline" };
/**
 * Connection status -> [text beside the dot, dot colour].
 * @type {Record<string, readonly [string, string]>}
 */
export const STATUS = {
  connecting: ["Connecting…", "warn"],
  live: ["Streaming", "live"],
  reconnecting: ["Reconnecting…", "warn"],
  polling: ["Polling (stream unavailable)", "warn"],
  offline: ["Offline", "offline"],
  closed: ["Closed", "offline"],
};
/** @param {string} status */
export const statusText = (status) => STATUS[status]?.[0] ?? status;
// Statuses in which nothing reaches the kernel at all (as in freshness.py).
export const DISCONNECTED = new Set(["offline", "closed"]);
// Statuses whose reason the banner shows (a reconnect after a blip is not worth a warning).
export const REASON_SHOWN = new Set(["polling", "offline"]);

export const FRESHNESS_TRAITS = /** @type {const} */ ([
  "status",
  "error",
  "status_reason",
  "last_data_ms",
  "live_s",
  "delayed_s",
]);
const DEFAULT_LIVE_S = 5;
const DEFAULT_DELAYED_S = 30;

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
export function readFreshness(model, now) {
  const status = String(model.get("status") ?? "connecting");
  const last = model.get("last_data_ms");
  const hasData = last !== null && last !== undefined;
  const state = classifyFreshness(status, last, now, ...thresholds(model));
  // The server's clock may run ahead of the browser's: never show a negative age.
  const age = hasData ? Math.max(0, (now - last) / 1000) : null;
  return { status, state, age };
}
