// @ts-check
/**
 * The header parts: the connection dot, the title, the freshness badge, and
 * the banner under them that warns of stale or offline data.
 */

import { formatAge } from "../format.js";
import { h, setAttr, setClass, setHidden, setText } from "../dom.js";
import { DISCONNECTED, FRESHNESS_TEXT, REASON_SHOWN, STATUS, statusText } from "../freshness.js";

/** @typedef {import("../types.js").Context} Context */
/** @typedef {import("../types.js").FreshnessReading} FreshnessReading */
/**
 * @template [Input=void]
 * @typedef {import("../types.js").Part<Input>} Part
 */

/**
 * The connection dot (coloured, labelled for screen readers) and its text.
 * @param {HTMLElement} container
 * @param {Context} ctx
 * @returns {Part}
 */
export function mountStatus(container, { model }) {
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
export function mountTitle(container, { model }) {
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
export function mountBadge(container, _ctx) {
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
export function mountBanner(container, { model }) {
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
