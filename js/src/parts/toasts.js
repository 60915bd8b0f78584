// @ts-check
/**
 * Toasts: fills (an order that turned filled without a fill counts too) and
 * alerts, read out by screen readers (aria-live). At most MAX_TOASTS show at
 * once, side by side in the header's free space, so they cover no header
 * and no table; a fill's stays TOAST_MS, an alert's ALERT_MS. A burst pushes
 * out the oldest fill first, so an alert is not lost under fills. They slide
 * in, except under reduced motion (widget.css).
 */

import { clockTime, fmt, fullTime, quantity, atPrice, upper } from "../format.js";
import { createTimers, h } from "../dom.js";

/** @typedef {import("../types.js").Context} Context */
/** @typedef {import("../types.js").Rows} Rows */
/** @typedef {import("../types.js").Fill} Fill */
/** @typedef {import("../types.js").Order} Order */
/** @typedef {import("../types.js").AlertNote} AlertNote */
/** @typedef {import("../types.js").ToastNote} ToastNote */
/** @typedef {import("../types.js").ToastQueue} ToastQueue */
/**
 * @template [Input=void]
 * @typedef {import("../types.js").Part<Input>} Part
 */

export const MAX_TOASTS = 3;
export const TOAST_MS = 4000;
export const ALERT_MS = 8000;

/** @param {Fill} f */
const fillText = (f) => `Filled: ${upper(f.side)} ${fmt(quantity, f.qty)} ${f.symbol}${atPrice(f.price)}`;
/** @param {Order} o */
const orderFilledText = (o) =>
  `Filled: ${upper(o.side)} ${fmt(quantity, o.filled_qty ?? o.qty)} ${o.symbol}${atPrice(o.filled_avg_price)}`;
/** @param {AlertNote} a */
const alertText = (a) => {
  const name = String(a.name ?? "");
  const message = String(a.message ?? "");
  return name && message && name !== message ? `${name}: ${message}` : message || name;
};

/** @returns {ToastQueue} */
export function createToastQueue() {
  /** @type {ToastNote[]} */
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
      pending.push({ kind: "fill", text: fillText(fill) });
      remember(fill.order_id);
    },
    orderFilled(id, order) {
      if (announced.has(id)) return;
      pending.push({ kind: "fill", text: orderFilledText(order) });
      remember(id);
    },
    alert(alert) {
      const at = alert.fired_at ?? "";
      const title = at ? `fired at ${clockTime(at)} (${fullTime(at)})` : "";
      pending.push({ kind: "alert", text: alertText(alert), title });
    },
    take: () => pending.splice(0),
  };
}

/**
 * @param {HTMLElement} container
 * @param {Context} ctx
 * @returns {Part<Rows>}
 */
export function mountToasts(container, { toasts: queue }) {
  const region = h("div", { class: "afl-toasts", "aria-live": "polite" });
  container.append(region);
  const timers = createTimers();

  /** Down to MAX_TOASTS: the oldest fill goes first, then the oldest alert. */
  const trim = () => {
    while (region.childElementCount > MAX_TOASTS) {
      const oldest = region.querySelector(".afl-toast--fill") ?? region.firstElementChild;
      oldest?.remove();
    }
  };

  return {
    update() {
      for (const note of queue?.take() ?? []) {
        const kind = note.kind === "alert" ? [h("span", { class: "afl-toast-kind" }, "Alert"), " "] : [];
        const title = [note.text, note.title].filter(Boolean).join(" — ");
        const toast = h("div", { class: `afl-toast afl-toast--${note.kind}`, title }, ...kind, note.text);
        region.append(toast);
        trim();
        timers.later(() => toast.remove(), note.kind === "alert" ? ALERT_MS : TOAST_MS);
      }
    },
    dispose() {
      timers.clear();
      region.remove();
    },
  };
}
