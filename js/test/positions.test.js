import { describe, expect, test, vi } from "vitest";
import { position, rowsOf, stubReducedMotion } from "./fake-model.js";
import { keysOf, mount, nextFrame, useWidgetHarness } from "./harness.js";

useWidgetHarness();

const cell = (el, symbol, col) => el.querySelector(`tr[data-symbol="${symbol}"] td[data-col="${col}"]`);
const total = (el, col) => el.querySelector(`table[aria-label="Positions"] tfoot [data-col="${col}"]`);
const upsert = (version, positions) => ({
  version,
  positions: { upsert: Object.fromEntries(positions.map((p) => [p.symbol, p])), remove: [] },
});

describe("Total row", () => {
  test("sums market value, unrealized P&L and day P&L of every position, shown or not", () => {
    const book = [
      position("AAPL", { market_value: "6000.00", unrealized_pl: "120.50", unrealized_intraday_pl: "30.25" }),
      position("MSFT", { market_value: "2000.00", unrealized_pl: "-20.00", unrealized_intraday_pl: "-5.00" }),
      position("TSLA", { market_value: "-2000.00", unrealized_pl: "-300.00", unrealized_intraday_pl: "10.00" }),
    ];
    const { el } = mount({ component: "positions", max_rows: 2, rows: rowsOf(book) });
    expect(keysOf(el, "Positions", "data-symbol")).toHaveLength(2); // one hidden behind "1 more"

    expect(total(el, "symbol").textContent).toBe("Total");
    expect(total(el, "market_value").textContent).toBe("6,000.00"); // net: 6000 + 2000 - 2000
    expect(total(el, "unrealized_pl").textContent).toBe("-199.50");
    expect(total(el, "unrealized_pl").classList.contains("afl-loss")).toBe(true);
    expect(total(el, "unrealized_intraday_pl").textContent).toBe("+35.25");
    expect(total(el, "unrealized_intraday_pl").classList.contains("afl-gain")).toBe(true);
    expect(total(el, "weight").textContent).toBe("100.00%");
    expect(total(el, "qty").textContent).toBe("");
  });

  test("follows the deltas, and hides with the last position", () => {
    const { el, model } = mount({ component: "positions", rows: rowsOf([position("AAPL", { market_value: "100" })]) });
    model.sendDelta(upsert(2, [position("MSFT", { market_value: "250.5" })]));
    nextFrame();
    expect(total(el, "market_value").textContent).toBe("350.50");

    model.sendDelta({ version: 3, positions: { upsert: {}, remove: ["AAPL", "MSFT"] } });
    nextFrame();
    expect(el.querySelector('table[aria-label="Positions"] tfoot').hidden).toBe(true);
    expect(el.querySelector(".afl-empty").hidden).toBe(false);
  });
});

describe("Weight", () => {
  test("is each position's share of the gross exposure, shorts counted by size", () => {
    const { el } = mount({
      component: "positions",
      rows: rowsOf([
        position("AAPL", { market_value: "6000" }),
        position("MSFT", { market_value: "2000" }),
        position("TSLA", { market_value: "-2000" }),
      ]),
    });
    const weightHeader = el.querySelector('table[aria-label="Positions"] thead th[data-col="weight"]');
    expect(weightHeader.textContent).toBe("Weight");
    expect(cell(el, "AAPL", "weight").textContent).toBe("60.00%");
    expect(cell(el, "MSFT", "weight").textContent).toBe("20.00%");
    expect(cell(el, "TSLA", "weight").textContent).toBe("20.00%");
  });

  test("sorts like any number", () => {
    const { el } = mount({
      component: "positions",
      rows: rowsOf([
        position("AAPL", { market_value: "100" }),
        position("MSFT", { market_value: "-500" }),
        position("TSLA", { market_value: "300" }),
      ]),
    });
    el.querySelector('th[data-col="weight"]').click();
    expect(keysOf(el, "Positions", "data-symbol")).toEqual(["AAPL", "TSLA", "MSFT"]);
  });
});

describe("price precision", () => {
  test.each([
    ["187.200000", "187.20"], // the engine pads prices to 6 decimals
    ["187.2", "187.20"],
    ["43250.5", "43,250.50"],
    ["1.08345", "1.08345"], // FX
    ["0.0042", "0.0042"], // a sub-penny stock
    ["0.00001234", "0.00001234"], // crypto
    ["0.123456789", "0.12345679"], // at most 8 decimals
  ])("a price of %s reads %s, never 0.00", (value, shown) => {
    const { el } = mount({
      component: "positions",
      rows: rowsOf([position("X", { current_price: value, avg_entry_price: value })]),
    });
    expect(cell(el, "X", "current_price").textContent).toBe(shown);
    expect(cell(el, "X", "avg_entry_price").textContent).toBe(shown);
  });

  test("money keeps two decimals", () => {
    const { el } = mount({ component: "positions", rows: rowsOf([position("X", { market_value: "0.0042" })]) });
    expect(cell(el, "X", "market_value").textContent).toBe("0.00");
  });
});

describe("flash", () => {
  test("a gain flashes and its title says by how much, since the last update", () => {
    const { el, model } = mount({ rows: rowsOf([position("AAPL", { unrealized_pl: "10.00" })]) });
    model.sendDelta(upsert(2, [position("AAPL", { unrealized_pl: "10.42" })]));
    nextFrame();
    const pl = cell(el, "AAPL", "unrealized_pl");
    expect(pl.classList.contains("afl-flash-gain")).toBe(true);
    expect(pl.title).toBe("+0.42 since last update");
  });

  test("a loss shakes and its title carries the minus sign", () => {
    const { el, model } = mount({ rows: rowsOf([position("AAPL", { unrealized_pl: "10.00" })]) });
    model.sendDelta(upsert(2, [position("AAPL", { unrealized_pl: "7.00" })]));
    nextFrame();
    const pl = cell(el, "AAPL", "unrealized_pl");
    expect(pl.classList.contains("afl-shake-loss")).toBe(true);
    expect(pl.title).toBe("-3.00 since last update");
  });

  test("a move too small for the cell still says its direction", () => {
    const { el, model } = mount({ rows: rowsOf([position("AAPL", { unrealized_pl: "10.0000" })]) });
    model.sendDelta(upsert(2, [position("AAPL", { unrealized_pl: "9.9999" })]));
    nextFrame();
    expect(cell(el, "AAPL", "unrealized_pl").title).toBe("-0.0001 since last update");
  });

  test("under reduced motion the colour change carries the same title", () => {
    stubReducedMotion(vi, true);
    const { el, model } = mount({ rows: rowsOf([position("AAPL", { unrealized_pl: "10.00" })]) });
    model.sendDelta(upsert(2, [position("AAPL", { unrealized_pl: "12.00" })]));
    nextFrame();
    const pl = cell(el, "AAPL", "unrealized_pl");
    expect(pl.classList.contains("afl-gain-static")).toBe(true);
    expect(pl.title).toBe("+2.00 since last update");
  });
});
