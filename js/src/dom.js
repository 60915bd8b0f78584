// @ts-check
/**
 * DOM helpers: building nodes, writers that leave the DOM alone when nothing
 * changed (no mutation, no relayout), timers a part's dispose clears at once,
 * and the reduced-motion setting, followed live.
 */

/**
 * @template {keyof HTMLElementTagNameMap} K
 * @param {K} tag
 * @param {Record<string, string | boolean | null | undefined>} [attrs]  null, undefined and false are left out
 * @param {...(Node | string)} children
 * @returns {HTMLElementTagNameMap[K]}
 */
export function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  setAttrs(node, attrs);
  node.append(...children);
  return node;
}

const SVG_NS = "http://www.w3.org/2000/svg";
/**
 * @template {keyof SVGElementTagNameMap} K
 * @param {K} tag
 * @param {Record<string, string | boolean | null | undefined>} [attrs]
 * @param {...Node} children
 * @returns {SVGElementTagNameMap[K]}
 */
export function s(tag, attrs = {}, ...children) {
  const node = document.createElementNS(SVG_NS, tag);
  setAttrs(node, attrs);
  node.append(...children);
  return node;
}

/**
 * @param {Element} node
 * @param {Record<string, string | boolean | null | undefined>} attrs
 */
function setAttrs(node, attrs) {
  for (const [name, value] of Object.entries(attrs)) {
    if (value !== null && value !== undefined && value !== false) node.setAttribute(name, value === true ? "" : value);
  }
}

/**
 * @param {Element} node
 * @param {string} text
 */
export function setText(node, text) {
  if (node.textContent !== text) node.textContent = text;
}
/**
 * @param {Element} node
 * @param {string} cls
 * @param {boolean} on
 */
export function setClass(node, cls, on) {
  if (node.classList.contains(cls) !== on) node.classList.toggle(cls, on);
}
/**
 * @param {HTMLElement} node
 * @param {boolean} hidden
 */
export function setHidden(node, hidden) {
  if (node.hidden !== hidden) node.hidden = hidden;
}
/**
 * @param {Element} node
 * @param {string} name
 * @param {string | null} value  null removes the attribute
 */
export function setAttr(node, name, value) {
  if (value === null) {
    if (node.hasAttribute(name)) node.removeAttribute(name);
  } else if (node.getAttribute(name) !== value) {
    node.setAttribute(name, value);
  }
}
/**
 * @param {Element} node
 * @param {"gain" | "loss" | null} tone
 */
export function setTone(node, tone) {
  setClass(node, "afl-gain", tone === "gain");
  setClass(node, "afl-loss", tone === "loss");
}

/** Timeouts that a part's dispose can clear all at once. */
export function createTimers() {
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
 * The system's "reduce motion" setting: read once, then followed live.
 * @returns {{ readonly reduced: boolean, dispose: () => void }}
 */
export function followReducedMotion() {
  const query = window.matchMedia ? window.matchMedia("(prefers-reduced-motion: reduce)") : null; // jsdom has none
  let reduced = Boolean(query?.matches);
  /** @param {{ matches: boolean }} event */
  const onChange = (event) => (reduced = event.matches);
  query?.addEventListener("change", onChange);
  return {
    get reduced() {
      return reduced;
    },
    dispose: () => query?.removeEventListener("change", onChange),
  };
}

/**
 * The items that are there (the parts that this view mounted).
 * @template T
 * @param {(T | null)[]} items
 * @returns {T[]}
 */
export function present(items) {
  return /** @type {T[]} */ (items.filter((item) => item !== null));
}
