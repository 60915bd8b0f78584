import { describe, expect, test } from "vitest";
import { account, position, rowsOf } from "./fake-model.js";
import { NOW, mount, nextFrame, useWidgetHarness } from "./harness.js";

useWidgetHarness();

const field = (el, name) => el.querySelector(`[data-field="${name}"]`);
const labelOf = (el, name) => field(el, name).previousElementSibling.textContent;

describe("account summary", () => {
  test("shows Equity, Day P&L, Realized today, Cash and Buying power under those labels", () => {
    const { el } = mount({
      component: "account",
      rows: rowsOf([], { account: account({ realized_pl_today: "-125.5" }) }),
    });
    const labels = [...el.querySelectorAll('dl[aria-label="Account"] dt')].map((dt) => dt.textContent);
    expect(labels).toEqual(["Equity", "Day P&L", "Realized today", "Cash", "Buying power"]);
    expect(field(el, "equity").textContent).toBe("$100,000.00");
    expect(field(el, "realized_pl_today").textContent).toBe("-$125.50");
    expect(field(el, "realized_pl_today").classList.contains("afl-loss")).toBe(true);
    expect(field(el, "cash").textContent).toBe("$25,000.00");
    expect(field(el, "buying_power").textContent).toBe("$50,000.00");
  });

  test("exposure: Long, Short, Gross and Net, in money and as a share of equity", () => {
    const { el } = mount({
      component: "account",
      rows: rowsOf([], { account: account({ long_market_value: "60000.00", short_market_value: "-20000.00" }) }),
    });
    const labels = ["long", "short", "gross", "net"].map((name) => labelOf(el, name));
    expect(labels).toEqual(["Long", "Short", "Gross", "Net"]);
    expect(field(el, "long").textContent).toBe("$60,000.00 (60.00%)");
    expect(field(el, "short").textContent).toBe("-$20,000.00 (-20.00%)");
    expect(field(el, "gross").textContent).toBe("$80,000.00 (80.00%)");
    expect(field(el, "net").textContent).toBe("$40,000.00 (40.00%)");
  });

  test("exposure follows the account as it changes", () => {
    const { el, model } = mount({ component: "account", rows: rowsOf([], { account: account() }) });
    expect(field(el, "gross").textContent).toBe("$0.00 (0.00%)");
    model.sendDelta({
      version: 2,
      account: account({ equity: "50000.00", long_market_value: "10000.00", short_market_value: "-5000.00" }),
    });
    nextFrame();
    expect(field(el, "gross").textContent).toBe("$15,000.00 (30.00%)");
    expect(field(el, "net").textContent).toBe("$5,000.00 (10.00%)");
  });

  test("exposure is summed from the positions when the account does not carry it", () => {
    const { el } = mount({
      component: "account",
      rows: rowsOf([position("AAPL", { market_value: "3000" }), position("TSLA", { market_value: "-1000" })], {
        account: account({ long_market_value: null, short_market_value: null }),
      }),
    });
    expect(field(el, "long").textContent).toBe("$3,000.00 (3.00%)");
    expect(field(el, "short").textContent).toBe("-$1,000.00 (-1.00%)");
    expect(field(el, "gross").textContent).toBe("$4,000.00 (4.00%)");
    expect(field(el, "net").textContent).toBe("$2,000.00 (2.00%)");
  });

  test("before any data every figure is a dash", () => {
    const { el } = mount({ component: "account", last_data_ms: null });
    for (const name of ["equity", "day_pl", "realized_pl_today", "long", "gross", "net"]) {
      expect(field(el, name).textContent).toBe("—");
    }
    expect(el.querySelector(".afl-asof").textContent).toBe("as of —");
  });

  test("'as of' is the state's last update on the local clock, hh:mm:ss, and follows it", () => {
    const { el, model } = mount({ component: "account", rows: rowsOf([], { account: account() }) });
    const asOf = el.querySelector(".afl-asof");
    // 15:00:00 UTC is 10:00:00 in New York, the zone the tests run in.
    expect(asOf.textContent).toBe("as of 10:00:00");
    expect(asOf.querySelector("time").getAttribute("datetime")).toBe("2025-01-02T15:00:00.000Z");

    model.set("last_data_ms", NOW + 83_000); // a heartbeat: the data is current as of then
    nextFrame();
    expect(asOf.textContent).toBe("as of 10:01:23");
  });
});
