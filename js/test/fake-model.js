// A stand-in for the anywidget model: get/set/on/off with change events, as
// the real (Backbone) model fires them, synchronously inside set().

export const DEFAULT_TRAITS = {
  component: "portfolio",
  status: "live",
  error: "",
  last_data_ms: null,
  live_s: 5,
  delayed_s: 30,
  max_rows: 50,
  title: "",
  done_statuses: ["canceled", "expired", "filled", "rejected", "replaced"],
  rows: { version: 0, positions: {}, orders: {}, fills: {}, equity: [], account: null },
  delta: { version: 0 },
};

export function createFakeModel(traits = {}) {
  const state = { ...DEFAULT_TRAITS, ...traits };
  const listeners = new Map(); // event name -> Set of callbacks

  const model = {
    get: (name) => state[name],
    set(name, value) {
      if (Object.is(state[name], value)) return;
      state[name] = value;
      for (const callback of [...(listeners.get(`change:${name}`) ?? [])]) callback(model, value);
    },
    on(event, callback) {
      if (!listeners.has(event)) listeners.set(event, new Set());
      listeners.get(event).add(callback);
    },
    off(event, callback) {
      listeners.get(event)?.delete(callback);
    },
    /** Total callbacks still registered, over all events. */
    listenerCount: () => [...listeners.values()].reduce((n, set) => n + set.size, 0),
    /** What the kernel does: a trait change arriving from Python. */
    sendDelta(delta) {
      model.set("delta", delta);
    },
  };
  return model;
}

/** A Position as the Python side sends it: numeric fields are decimal strings. */
export function position(symbol, fields = {}) {
  return {
    symbol,
    qty: "10",
    side: "long",
    avg_entry_price: "100.00",
    current_price: "100.00",
    market_value: "1000.00",
    unrealized_pl: "0.00",
    unrealized_plpc: "0",
    unrealized_intraday_pl: "0.00",
    change_today: "0",
    ...fields,
  };
}

export function order(id, fields = {}) {
  return {
    id,
    symbol: "AAPL",
    side: "buy",
    type: "market",
    qty: "10",
    filled_qty: "0",
    filled_avg_price: null,
    limit_price: null,
    stop_price: null,
    status: "new",
    submitted_at: "2025-01-02T15:00:00Z",
    updated_at: "2025-01-02T15:00:00Z",
    ...fields,
  };
}

export function account(fields = {}) {
  return {
    equity: "100000.00",
    last_equity: "99000.00",
    cash: "25000.00",
    buying_power: "50000.00",
    long_market_value: "0.00",
    short_market_value: "0.00",
    realized_pl_today: "0",
    currency: "USD",
    updated_at: "2025-01-02T15:00:00Z",
    ...fields,
  };
}

/** A Fill as the Python side sends it. */
export function fill(id, fields = {}) {
  return {
    id,
    order_id: `o-${id}`,
    symbol: "AAPL",
    side: "buy",
    qty: "10",
    price: "187.20",
    position_qty: "10",
    timestamp: "2025-01-02T15:00:00Z",
    ...fields,
  };
}

/** A row-keyed change upserting the given rows (keyed by `key`) and removing `remove`. */
export function upserting(items, key = "id", remove = []) {
  return { upsert: Object.fromEntries(items.map((item) => [item[key], item])), remove };
}

/** Rows trait holding the given positions (and optionally orders, fills, equity, account). */
export function rowsOf(positions, { version = 1, orders = {}, fills = {}, equity = [], account: acct = null } = {}) {
  return {
    version,
    positions: Object.fromEntries(positions.map((p) => [p.symbol, p])),
    orders,
    fills,
    equity,
    account: acct,
  };
}

/** Stubs window.matchMedia; returns a handle to flip the reduced-motion setting. */
export function stubReducedMotion(vi, matches) {
  const listeners = new Set();
  const query = {
    matches,
    media: "(prefers-reduced-motion: reduce)",
    addEventListener: (type, callback) => listeners.add(callback),
    removeEventListener: (type, callback) => listeners.delete(callback),
  };
  vi.stubGlobal(
    "matchMedia",
    vi.fn(() => query),
  );
  return {
    listeners,
    set(value) {
      query.matches = value;
      for (const callback of [...listeners]) callback({ matches: value });
    },
  };
}
