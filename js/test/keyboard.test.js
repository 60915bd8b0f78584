import { describe, expect, test } from "vitest";
import { fill, order, position, rowsOf } from "./fake-model.js";
import { header, keysOf, mount, press, useWidgetHarness } from "./harness.js";

useWidgetHarness();

function book() {
  return rowsOf(
    [
      position("AAPL", { market_value: "900.00" }),
      position("MSFT", { market_value: "10000.00" }),
      position("TSLA", { market_value: "2000.00" }),
    ],
    {
      orders: { o1: order("o1", { status: "new" }) },
      fills: { f1: fill("f1") },
    },
  );
}

describe("sortable headers by keyboard", () => {
  test.each(["Positions", "Orders", "Fills"])("every header of %s is focusable and says how it sorts", (table) => {
    const { el } = mount({ rows: book() });
    const headers = [...el.querySelectorAll(`table[aria-label="${table}"] thead th`)];
    expect(headers.length).toBeGreaterThan(3);
    for (const th of headers) {
      expect(th.getAttribute("tabindex")).toBe("0");
      expect(["ascending", "descending", "none"]).toContain(th.getAttribute("aria-sort"));
    }
    // One column sorts the table at a time.
    expect(headers.filter((th) => th.getAttribute("aria-sort") !== "none")).toHaveLength(1);
  });

  test("Enter sorts ascending, Space reverses, and aria-sort follows", () => {
    const { el } = mount({ rows: book() });
    const th = header(el, "Positions", "Market value");
    expect(th.getAttribute("aria-sort")).toBe("none");

    th.focus();
    expect(document.activeElement).toBe(th);
    press(th, "Enter");
    expect(keysOf(el, "Positions", "data-symbol")).toEqual(["AAPL", "TSLA", "MSFT"]);
    expect(th.getAttribute("aria-sort")).toBe("ascending");
    expect(header(el, "Positions", "Symbol").getAttribute("aria-sort")).toBe("none");

    const space = press(th, " ");
    expect(space.defaultPrevented).toBe(true); // Space sorts instead of scrolling the page
    expect(keysOf(el, "Positions", "data-symbol")).toEqual(["MSFT", "TSLA", "AAPL"]);
    expect(th.getAttribute("aria-sort")).toBe("descending");
  });

  test("other keys leave the order alone", () => {
    const { el } = mount({ rows: book() });
    const th = header(el, "Positions", "Market value");
    const tab = press(th, "Tab");
    expect(tab.defaultPrevented).toBe(false);
    expect(th.getAttribute("aria-sort")).toBe("none");
    expect(keysOf(el, "Positions", "data-symbol")).toEqual(["AAPL", "MSFT", "TSLA"]);
  });

  test("the orders blotter sorts by keyboard too", () => {
    const orders = {
      o1: order("o1", { symbol: "TSLA" }),
      o2: order("o2", { symbol: "AAPL" }),
      o3: order("o3", { symbol: "MSFT" }),
    };
    const { el } = mount({ rows: rowsOf([], { orders }) });
    const th = header(el, "Orders", "Symbol");
    press(th, "Enter");
    expect(keysOf(el, "Orders", "data-order-id")).toEqual(["o2", "o3", "o1"]);
    expect(th.getAttribute("aria-sort")).toBe("ascending");
    expect(header(el, "Orders", "Time").getAttribute("aria-sort")).toBe("none");
  });
});
