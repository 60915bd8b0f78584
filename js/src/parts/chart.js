// @ts-check
/**
 * The day's equity curve, drawn here in SVG (no chart library): day P&L
 * (equity minus the day's starting equity) over time, with a zero line.
 *
 * Append only: each point is added once to the end of a path and never
 * written again. Coordinates are in data units (seconds since the curve's
 * first point, P&L in money), and one transform on their group maps them to
 * the box, so a wider range rewrites a transform, not the points. The curve
 * is split into paths of CHUNK points so the browser re-reads one short path
 * per append. It starts again (the one full redraw) when a new day begins
 * (the day's starting equity moved) or the kernel sent a whole new history.
 */

import { clockTime, currencyFormat, fullTime } from "../format.js";
import { h, s, setAttr, setClass, setText } from "../dom.js";

/** @typedef {import("../types.js").Context} Context */
/** @typedef {import("../types.js").Rows} Rows */
/** @typedef {import("../types.js").EquityPoint} EquityPoint */
/**
 * @template [Input=void]
 * @typedef {import("../types.js").Part<Input>} Part
 */

const WIDTH = 600; // the box the data is mapped into; the SVG stretches it to the widget's width
const HEIGHT = 120;
const CHUNK = 200; // points per path
const MIN_SECONDS = 60; // the x axis spans at least a minute
const MIN_SPAN = 1; // and the y axis at least one unit of money
const SAME_DAY = 0.005; // starting equities closer than half a cent are the same day's

/** @param {EquityPoint} point */
const baseOf = ([, equity, dayPl]) => equity - dayPl;
/** @param {number} n */
const coord = (n) => String(Math.round(n * 1000) / 1000);

/**
 * @param {HTMLElement} container
 * @param {Context} _ctx
 * @returns {Part<Rows>}
 */
export function mountChart(container, _ctx) {
  const zero = s("line", {
    class: "afl-chart-zero",
    x1: "0",
    y1: "0",
    x2: "0",
    y2: "0",
    "vector-effect": "non-scaling-stroke",
  });
  const plot = s("g", { class: "afl-chart-plot" }, zero);
  const svg = s(
    "svg",
    {
      class: "afl-chart-svg",
      role: "img",
      "aria-label": "Equity: no data yet",
      viewBox: `0 0 ${WIDTH} ${HEIGHT}`,
      preserveAspectRatio: "none",
      "data-points": "0",
    },
    plot,
  );
  const value = h("span", { class: "afl-chart-value" });
  const dayPl = h("span", { class: "afl-chart-pl" });
  const since = h("span", { class: "afl-chart-since" });
  const title = h("span", { class: "afl-chart-title" }, "Equity");
  // What the SVG's label says, for the eye: screen readers read the label.
  const caption = h("div", { class: "afl-chart-caption", "aria-hidden": "true" }, title, value, dayPl, since);
  const node = h("div", { class: "afl-section afl-chart" }, caption, svg);
  container.append(node);

  /** @type {SVGPathElement[]} */
  let paths = [];
  let inPath = 0; // points in the last path
  let count = 0; // points on the curve
  /** @type {EquityPoint | null} */
  let last = null; // the last point drawn, by identity: merged rows keep the same point objects
  let t0 = 0;
  let base = 0;
  let minPl = 0;
  let maxPl = 0;
  let lastX = 0;
  let lastY = 0;

  function reset() {
    for (const path of paths) path.remove();
    paths = [];
    inPath = count = 0;
    last = null;
    minPl = maxPl = 0;
  }

  /** @param {EquityPoint} point */
  function append(point) {
    const [t, equity, pl] = point;
    if (![t, equity, pl].every(Number.isFinite)) return;
    if (count && Math.abs(baseOf(point) - base) > SAME_DAY) reset(); // a new day: a new curve
    if (!count) {
      t0 = t;
      base = baseOf(point);
    }
    const x = Math.max(0, (t - t0) / 1000);
    const y = pl;
    const xy = `${coord(x)} ${coord(y)}`;
    if (!paths.length || inPath >= CHUNK) {
      // A new path starts where the last one ended, so the line stays unbroken.
      const start = paths.length ? `M${coord(lastX)} ${coord(lastY)} L${xy}` : `M${xy}`;
      const path = s("path", { class: "afl-chart-line", d: start, "vector-effect": "non-scaling-stroke" });
      plot.append(path);
      paths.push(path);
      inPath = 1;
    } else {
      const path = paths[paths.length - 1];
      path.setAttribute("d", `${path.getAttribute("d")} L${xy}`);
      inPath += 1;
    }
    count += 1;
    last = point;
    lastX = x;
    lastY = y;
    minPl = Math.min(minPl, y);
    maxPl = Math.max(maxPl, y);
  }

  /**
   * The points to draw: those after the last one drawn, or the whole day's when
   * the history is not the one drawn (a new full state).
   * @param {EquityPoint[]} points
   */
  function fresh(points) {
    const at = last ? points.lastIndexOf(last) : -1;
    if (at >= 0) return points.slice(at + 1);
    reset();
    let start = points.length - 1; // back to the first point of the latest day
    while (start > 0 && Math.abs(baseOf(points[start - 1]) - baseOf(points[points.length - 1])) <= SAME_DAY) start--;
    return points.slice(Math.max(0, start));
  }

  /** The transform from data units to the box; only it changes when the range grows. */
  function fit() {
    const xMax = Math.max(lastX, MIN_SECONDS);
    let lo = Math.min(minPl, 0);
    let hi = Math.max(maxPl, 0);
    if (hi - lo < MIN_SPAN) {
      const pad = (MIN_SPAN - (hi - lo)) / 2;
      lo -= pad;
      hi += pad;
    }
    const margin = (hi - lo) * 0.08;
    lo -= margin;
    hi += margin;
    const sx = WIDTH / xMax;
    const sy = HEIGHT / (hi - lo);
    setAttr(plot, "transform", `matrix(${sx} 0 0 ${-sy} 0 ${hi * sy})`);
    setAttr(zero, "x2", coord(xMax));
  }

  return {
    update({ equity, account }) {
      if (!equity.length) {
        if (count) reset();
      } else {
        for (const point of fresh(equity)) append(point);
      }
      setAttr(svg, "data-points", String(count));
      if (!count || !last) {
        setAttr(svg, "aria-label", "Equity: no data yet");
        for (const span of [value, dayPl, since]) setText(span, "");
        return;
      }
      fit();
      const currency = account?.currency || "USD";
      const equityText = currencyFormat(currency, false).format(last[1]);
      const plText = currencyFormat(currency, true).format(last[2]);
      const start = clockTime(t0);
      setAttr(svg, "aria-label", `Equity ${equityText}, day P&L ${plText} since ${start} (${count} points)`);
      setText(value, equityText);
      setText(dayPl, plText);
      setClass(dayPl, "afl-gain", last[2] > 0);
      setClass(dayPl, "afl-loss", last[2] < 0);
      setText(since, `since ${start}`);
      setAttr(since, "title", fullTime(t0));
      setClass(plot, "afl-chart-plot--loss", last[2] < 0); // the line's colour: up or down on the day
    },
    dispose: () => node.remove(),
  };
}
