// Rendering a widget in a test: fake timers and a fixed clock, a fresh element per widget,
// and everything cleaned up after each test. Call useWidgetHarness() at the top of a test file.
import { afterEach, beforeEach, vi } from "vitest";
import widget from "../src/widget.js";
import { createFakeModel } from "./fake-model.js";

export const NOW = Date.UTC(2025, 0, 2, 15, 0, 0); // 10:00:00 in New York (vitest.config.js)

const cleanups = [];

export function useWidgetHarness() {
  beforeEach(() => {
    // Fakes setTimeout/setInterval, Date and requestAnimationFrame alike.
    vi.useFakeTimers();
    vi.setSystemTime(NOW);
  });
  afterEach(() => {
    for (const cleanup of cleanups.splice(0)) cleanup();
    document.body.replaceChildren();
    vi.useRealTimers();
  });
}

/** Renders a widget into a fresh element; returns the model, element and cleanup. */
export function mount(traits = {}) {
  const model = createFakeModel({ last_data_ms: NOW, ...traits });
  const el = document.createElement("div");
  document.body.append(el);
  const cleanup = widget.render({ model, el });
  cleanups.push(cleanup);
  return { model, el, cleanup };
}

/** Renders a second view of a model; cleaned up like the first. */
export function mountView(model) {
  const el = document.createElement("div");
  document.body.append(el);
  cleanups.push(widget.render({ model, el }));
  return el;
}

/** Runs the pending animation frame (where deltas reach the DOM). */
export function nextFrame() {
  vi.advanceTimersToNextFrame();
}

/** The header cell of `table` (its aria-label) whose text is `label`. */
export function header(el, table, label) {
  return [...el.querySelectorAll(`table[aria-label="${table}"] thead th`)].find((th) => th.textContent === label);
}

/** The keys (data-ATTR) of a table's body rows, in the order shown. */
export function keysOf(el, table, attr) {
  return [...el.querySelectorAll(`table[aria-label="${table}"] tbody tr`)].map((tr) => tr.getAttribute(attr));
}

/** Presses a key on an element, as a keyboard does (keydown, bubbling, cancelable). */
export function press(element, key) {
  const event = new KeyboardEvent("keydown", { key, bubbles: true, cancelable: true });
  element.dispatchEvent(event);
  return event;
}
