import { describe, expect, test } from "vitest";
import { account, rowsOf } from "./fake-model.js";
import { NOW, mount, nextFrame, useWidgetHarness } from "./harness.js";

useWidgetHarness();

// [epoch ms, equity, day P&L] with the day starting at 100,000.
const BASE = 100_000;
const point = (seconds, dayPl, base = BASE) => [NOW + seconds * 1000, base + dayPl, dayPl];
const points = (from, to, dayPlOf = (i) => i % 7) => {
  const out = [];
  for (let i = from; i < to; i++) out.push(point(i, dayPlOf(i)));
  return out;
};

const svgOf = (el) => el.querySelector(".afl-chart svg");
const paths = (el) => [...el.querySelectorAll(".afl-chart path.afl-chart-line")];
const ds = (el) => paths(el).map((p) => p.getAttribute("d"));
/** Coordinate pairs in a path's d, with the move that starts a continued path counted once. */
const pairs = (d) => d.match(/[ML]/g).length;
const drawn = (el) => Number(svgOf(el).getAttribute("data-points"));

function append(model, version, newPoints) {
  model.sendDelta({ version, equity: newPoints });
  nextFrame();
}

describe("equity chart", () => {
  test("is an SVG image labelled Equity, with a zero line for the day's P&L", () => {
    const { el } = mount({
      rows: rowsOf([], { equity: [point(0, 0), point(30, 120.5), point(60, -40)], account: account() }),
    });
    const svg = svgOf(el);
    expect(svg.namespaceURI).toBe("http://www.w3.org/2000/svg");
    expect(svg.getAttribute("role")).toBe("img");
    expect(svg.getAttribute("aria-label")).toBe("Equity $99,960.00, day P&L -$40.00 since 10:00:00 (3 points)");
    const zero = svg.querySelector("line.afl-chart-zero");
    expect(zero.getAttribute("y1")).toBe("0");
    expect(zero.getAttribute("y2")).toBe("0");
    expect(ds(el)).toEqual(["M0 0 L30 120.5 L60 -40"]); // seconds since the first point, P&L
    expect(el.querySelector(".afl-chart-pl").classList.contains("afl-loss")).toBe(true);
  });

  test("says there is no data yet before the first point", () => {
    const { el } = mount();
    expect(svgOf(el).getAttribute("aria-label")).toBe("Equity: no data yet");
    expect(paths(el)).toHaveLength(0);
  });

  test("new points are appended: the count grows and the points drawn before are unchanged", () => {
    const { el, model } = mount({ rows: rowsOf([], { equity: points(0, 10) }) });
    const path = paths(el)[0];
    const before = path.getAttribute("d");
    expect(drawn(el)).toBe(10);
    expect(pairs(before)).toBe(10);

    append(model, 2, [point(10, 3.25), point(11, 4)]);

    expect(paths(el)[0]).toBe(path); // the same node, not a redraw
    const after = path.getAttribute("d");
    expect(after.startsWith(before)).toBe(true);
    expect(after.slice(before.length)).toBe(" L10 3.25 L11 4");
    expect(drawn(el)).toBe(12);
    expect(pairs(after)).toBe(12);
  });

  test("a wider range rewrites the transform, never the points", () => {
    const { el, model } = mount({ rows: rowsOf([], { equity: [point(0, 0), point(10, 5)] }) });
    const plot = el.querySelector(".afl-chart-plot");
    const transform = plot.getAttribute("transform");
    const before = ds(el)[0];

    append(model, 2, [point(600, 5000)]); // ten minutes later, far above

    expect(plot.getAttribute("transform")).not.toBe(transform);
    expect(ds(el)[0]).toBe(`${before} L600 5000`);
    expect(el.querySelector(".afl-chart-zero").getAttribute("x2")).toBe("600");
  });

  test("a long day is drawn in paths of 200 points, each left alone once full", () => {
    const { el, model } = mount({ rows: rowsOf([], { equity: points(0, 150) }) });
    let version = 1;
    const firstPath = paths(el)[0];
    const history = [];
    for (let from = 150; from < 450; from += 50) {
      append(model, ++version, points(from, from + 50));
      history.push(ds(el));
    }
    expect(drawn(el)).toBe(450);
    expect(paths(el)).toHaveLength(3);
    expect(paths(el)[0]).toBe(firstPath);
    // Once the first path held 200 points, later appends never touched it.
    const full = history.findIndex((d) => d.length > 1);
    for (const d of history.slice(full)) expect(d[0]).toBe(history[full][0]);
    // The next path carries on from the last point of the one before.
    expect(ds(el)[1].startsWith(`M199 ${199 % 7} L200 ${200 % 7}`)).toBe(true);
    expect(ds(el).reduce((n, d, i) => n + pairs(d) - (i ? 1 : 0), 0)).toBe(450);
  });

  test("appends within the kernel's budget: several deltas in one frame cost one draw", () => {
    const { el, model } = mount({ rows: rowsOf([], { equity: points(0, 2) }) });
    const path = paths(el)[0];
    model.sendDelta({ version: 2, equity: [point(2, 1)] });
    model.sendDelta({ version: 3, equity: [point(3, 2)] });
    expect(drawn(el)).toBe(2); // nothing drawn before the frame
    nextFrame();
    expect(drawn(el)).toBe(4);
    expect(path.getAttribute("d").endsWith(" L2 1 L3 2")).toBe(true);
  });

  test("shows the latest day only, and starts again when a new day begins", () => {
    const yesterday = [point(-86400, 10, 99_000), point(-86300, 20, 99_000)];
    const { el, model } = mount({ rows: rowsOf([], { equity: [...yesterday, point(0, 0), point(5, 1)] }) });
    expect(drawn(el)).toBe(2);
    expect(ds(el)).toEqual(["M0 0 L5 1"]);

    append(model, 2, [point(10, 0, 101_000)]); // the day's starting equity moved: a new day
    expect(drawn(el)).toBe(1);
    expect(ds(el)).toEqual(["M0 0"]);
  });

  test("a whole new history from the kernel is drawn afresh", () => {
    const { el, model } = mount({ rows: rowsOf([], { equity: points(0, 5) }) });
    model.set("rows", rowsOf([], { version: 1, equity: [point(100, 7), point(101, 8)] }));
    nextFrame();
    expect(drawn(el)).toBe(2);
    expect(ds(el)).toEqual(["M0 7 L1 8"]);
  });

  test("the merged rows keep the kernel's cap of 10,000 points", () => {
    const { model } = mount({ rows: rowsOf([], { equity: points(0, 9_999) }) });
    append(model, 2, [point(9_999, 1), point(10_000, 2)]);
    const held = model.get("rows").equity;
    expect(held).toHaveLength(10_000);
    expect(held[0][0]).toBe(NOW + 1000);
    expect(held.at(-1)[0]).toBe(NOW + 10_000_000);
  });
});
