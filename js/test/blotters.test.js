import { describe, expect, test } from "vitest";
import { fill, order, rowsOf, upserting } from "./fake-model.js";
import { NOW, header, keysOf, mount, nextFrame, useWidgetHarness } from "./harness.js";

useWidgetHarness();

const at = (seconds) => new Date(NOW + seconds * 1000).toISOString();
const orderCell = (el, id, col) => el.querySelector(`tr[data-order-id="${id}"] td[data-col="${col}"]`);
const filterButtons = (el) => [...el.querySelectorAll(".afl-orders .afl-filter")];
const filterButton = (el, label) => filterButtons(el).find((b) => b.textContent === label);
const sectionOf = (el, name) => el.querySelector(`.afl-${name}`);

function mixedOrders() {
  return {
    open1: order("open1", { status: "new", updated_at: at(1) }),
    open2: order("open2", { status: "partially_filled", updated_at: at(3) }),
    done1: order("done1", { status: "filled", updated_at: at(2) }),
    done2: order("done2", { status: "canceled", updated_at: at(4) }),
  };
}

describe("orders blotter", () => {
  test("has a Time column: the order's last update, local hh:mm:ss", () => {
    const orders = { o1: order("o1", { updated_at: "2025-01-02T15:04:05.250Z" }) };
    const { el } = mount({ rows: rowsOf([], { orders }) });
    const labels = [...el.querySelectorAll('table[aria-label="Orders"] thead th')].map((th) => th.textContent);
    expect(labels).toEqual(["Time", "Symbol", "Side", "Type", "Qty", "Limit", "Stop", "Filled", "Status"]);
    expect(orderCell(el, "o1", "updated_at").textContent).toBe("10:04:05"); // New York time
  });

  test("Open, Done and All filter it, Open first", () => {
    const { el } = mount({ rows: rowsOf([], { orders: mixedOrders() }) });
    expect(filterButtons(el).map((b) => b.textContent)).toEqual(["Open", "Done", "All"]);
    expect(filterButton(el, "Open").getAttribute("aria-pressed")).toBe("true");
    expect(keysOf(el, "Orders", "data-order-id")).toEqual(["open2", "open1"]); // newest first

    filterButton(el, "Done").click();
    expect(filterButton(el, "Done").getAttribute("aria-pressed")).toBe("true");
    expect(filterButton(el, "Open").getAttribute("aria-pressed")).toBe("false");
    expect(keysOf(el, "Orders", "data-order-id")).toEqual(["done2", "done1"]);

    filterButton(el, "All").click();
    expect(keysOf(el, "Orders", "data-order-id")).toEqual(["done2", "open2", "done1", "open1"]);
  });

  test("an order that ends leaves the Open view at the next delta", () => {
    const { el, model } = mount({ rows: rowsOf([], { orders: mixedOrders() }) });
    model.sendDelta({ version: 2, orders: upserting([order("open1", { status: "canceled", updated_at: at(9) })]) });
    nextFrame();
    expect(keysOf(el, "Orders", "data-order-id")).toEqual(["open2"]);
  });

  test("says so when a filter has nothing", () => {
    const { el } = mount({ rows: rowsOf([], { orders: { d: order("d", { status: "filled" }) } }) });
    const empty = sectionOf(el, "orders").querySelector(".afl-empty");
    expect(empty.hidden).toBe(false);
    expect(empty.textContent).toBe("No open orders");
    filterButton(el, "Done").click();
    expect(empty.hidden).toBe(true);
  });

  test("every column sorts, both ways", () => {
    const orders = {
      a: order("a", { symbol: "MSFT", qty: "5", limit_price: "10.5", type: "limit", updated_at: at(1) }),
      b: order("b", { symbol: "AAPL", qty: "50", limit_price: "9", type: "limit", updated_at: at(2) }),
      c: order("c", { symbol: "TSLA", qty: "1", limit_price: null, type: "market", updated_at: at(3) }),
    };
    const { el } = mount({ rows: rowsOf([], { orders }) });
    const headers = [...el.querySelectorAll('table[aria-label="Orders"] thead th')];
    for (const th of headers) {
      th.click();
      const ascending = keysOf(el, "Orders", "data-order-id");
      expect(th.getAttribute("aria-sort")).toBe("ascending");
      th.click();
      expect(th.getAttribute("aria-sort")).toBe("descending");
      expect(keysOf(el, "Orders", "data-order-id")).toHaveLength(3);
      if (th.textContent === "Qty") {
        expect(ascending).toEqual(["c", "a", "b"]); // as numbers
        expect(keysOf(el, "Orders", "data-order-id")).toEqual(["b", "a", "c"]);
      }
      if (th.textContent === "Limit") expect(ascending).toEqual(["b", "a", "c"]); // no limit goes last
      if (th.textContent === "Symbol") expect(ascending).toEqual(["b", "a", "c"]);
    }
  });

  test("shows stop and stop-limit prices, with the precision they carry", () => {
    const orders = {
      s: order("s", { type: "stop", stop_price: "180.000000" }),
      sl: order("sl", { type: "stop_limit", stop_price: "0.00012", limit_price: "0.000115" }),
      l: order("l", { type: "limit", limit_price: "187.25" }),
    };
    const { el } = mount({ rows: rowsOf([], { orders }) });
    expect(orderCell(el, "s", "type").textContent).toBe("stop");
    expect(orderCell(el, "s", "stop_price").textContent).toBe("180.00");
    expect(orderCell(el, "s", "limit_price").textContent).toBe("");
    expect(orderCell(el, "sl", "type").textContent).toBe("stop limit");
    expect(orderCell(el, "sl", "stop_price").textContent).toBe("0.00012");
    expect(orderCell(el, "sl", "limit_price").textContent).toBe("0.000115");
    expect(orderCell(el, "l", "limit_price").textContent).toBe("187.25");
    expect(orderCell(el, "l", "stop_price").textContent).toBe("");
  });

  test("shows the newest 20, then 'N more'", () => {
    const orders = {};
    for (let i = 0; i < 27; i++) orders[`o${i}`] = order(`o${i}`, { updated_at: at(i) });
    const { el } = mount({ rows: rowsOf([], { orders }) });
    const more = sectionOf(el, "orders").querySelector(".afl-more");
    expect(keysOf(el, "Orders", "data-order-id")).toHaveLength(20);
    expect(keysOf(el, "Orders", "data-order-id")[0]).toBe("o26");
    expect(more.hidden).toBe(false);
    expect(more.textContent).toBe("7 more");
    expect(more.title).toBe("the first 20 of 27 are shown");
    more.click();
    expect(keysOf(el, "Orders", "data-order-id")).toHaveLength(27);
    expect(more.textContent).toBe("Show fewer");
  });

  test("the Done filter follows the statuses the kernel names", () => {
    const { el } = mount({
      done_statuses: ["filled"],
      rows: rowsOf([], { orders: { c: order("c", { status: "canceled" }), f: order("f", { status: "filled" }) } }),
    });
    expect(keysOf(el, "Orders", "data-order-id")).toEqual(["c"]);
  });
});

describe("fills blotter", () => {
  test("is headed Fills: time, symbol, side, qty, price, newest first", () => {
    const fills = {
      f1: fill("f1", { timestamp: at(1), symbol: "AAPL", side: "buy", qty: "10", price: "187.2" }),
      f2: fill("f2", { timestamp: at(5), symbol: "BTC/USD", side: "sell", qty: "0.015", price: "43250.123456" }),
      f3: fill("f3", { timestamp: at(3), symbol: "EUR/USD", side: "buy", qty: "1000", price: "1.08345" }),
    };
    const { el } = mount({ rows: rowsOf([], { fills }) });
    const section = sectionOf(el, "fills");
    expect(section.querySelector(".afl-section-title").textContent).toBe("Fills");
    const labels = [...section.querySelectorAll("thead th")].map((th) => th.textContent);
    expect(labels).toEqual(["Time", "Symbol", "Side", "Qty", "Price"]);
    expect(keysOf(el, "Fills", "data-fill-id")).toEqual(["f2", "f3", "f1"]);
    const texts = [...section.querySelectorAll('tr[data-fill-id="f2"] td')].map((td) => td.textContent);
    expect(texts).toEqual(["10:00:05", "BTC/USD", "SELL", "0.015", "43,250.123456"]);
    expect(section.querySelector('tr[data-fill-id="f3"] td[data-col="price"]').textContent).toBe("1.08345");
  });

  test("takes fills as row-keyed deltas: new ones upserted, old ones removed", () => {
    const { el, model } = mount({ rows: rowsOf([], { fills: { f1: fill("f1", { timestamp: at(1) }) } }) });
    model.sendDelta({ version: 2, fills: upserting([fill("f2", { timestamp: at(2) })], "id", ["f1"]) });
    nextFrame();
    expect(keysOf(el, "Fills", "data-fill-id")).toEqual(["f2"]);
    expect(Object.keys(model.get("rows").fills)).toEqual(["f2"]);
  });

  test("shows the newest 10, then 'N more'", () => {
    const fills = {};
    for (let i = 0; i < 13; i++) fills[`f${i}`] = fill(`f${i}`, { timestamp: at(i) });
    const { el } = mount({ rows: rowsOf([], { fills }) });
    const more = sectionOf(el, "fills").querySelector(".afl-more");
    expect(keysOf(el, "Fills", "data-fill-id")).toHaveLength(10);
    expect(keysOf(el, "Fills", "data-fill-id")[0]).toBe("f12");
    expect(more.textContent).toBe("3 more");
    expect(more.title).toBe("the first 10 of 13 are shown");
    more.click();
    expect(keysOf(el, "Fills", "data-fill-id")).toHaveLength(13);
  });

  test("says so before the first fill", () => {
    const { el } = mount();
    expect(sectionOf(el, "fills").querySelector(".afl-empty").textContent).toBe("No fills yet");
    expect(header(el, "Fills", "Time").getAttribute("aria-sort")).toBe("descending");
  });
});
