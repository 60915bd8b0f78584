// @ts-check
/**
 * The shapes the widget's modules share, for tsc only: this module holds no
 * code, and nothing imports it at run time (the others name its types with
 * `import("./types.js")` in JSDoc), so the shipped widget does not carry it.
 *
 * Row fields are Alpaca's, as alphaflow_live/protocol.py declares them; the
 * kernel sends decimals as strings ("187.20").
 */

/**
 * A decimal as the kernel sends it ("187.20"); a number reads the same way.
 * @typedef {string | number | null | undefined} Decimal
 */

/**
 * @typedef {object} Position
 * @property {string} [symbol]
 * @property {Decimal} [qty]
 * @property {string} [side]
 * @property {Decimal} [avg_entry_price]
 * @property {Decimal} [current_price]
 * @property {Decimal} [market_value]
 * @property {Decimal} [unrealized_pl]
 * @property {Decimal} [unrealized_plpc]
 * @property {Decimal} [unrealized_intraday_pl]  P&L since the start of the day
 * @property {Decimal} [change_today]
 */

/**
 * @typedef {object} Order
 * @property {string} [id]
 * @property {string} [symbol]
 * @property {string} [side]
 * @property {string} [type]  market | limit | stop | stop_limit
 * @property {Decimal} [qty]
 * @property {Decimal} [filled_qty]
 * @property {Decimal} [filled_avg_price]
 * @property {Decimal} [limit_price]
 * @property {Decimal} [stop_price]
 * @property {string} [status]
 * @property {string} [submitted_at]  ISO 8601
 * @property {string} [updated_at]  ISO 8601
 */

/**
 * @typedef {object} Account
 * @property {Decimal} [equity]
 * @property {Decimal} [last_equity]
 * @property {Decimal} [cash]
 * @property {Decimal} [buying_power]
 * @property {Decimal} [long_market_value]
 * @property {Decimal} [short_market_value]  negative (or zero)
 * @property {Decimal} [realized_pl_today]
 * @property {string | null} [currency]  ISO 4217, "USD" when absent
 * @property {string} [updated_at]
 */

/**
 * @typedef {object} Fill
 * @property {string} [id]
 * @property {string} [order_id]
 * @property {string} [symbol]
 * @property {string} [side]
 * @property {Decimal} [qty]
 * @property {Decimal} [price]
 * @property {string} [timestamp]  ISO 8601
 */

/**
 * One point of the day's equity curve: [epoch ms, equity, day P&L].
 * @typedef {[number, number, number]} EquityPoint
 */

/**
 * An alert that fired in the kernel (`live.alert(...)`).
 * @typedef {object} AlertNote
 * @property {string} [name]
 * @property {string} [message]
 * @property {string | null} [fired_at]  ISO 8601
 */

/**
 * The rows trait as it arrives: the kernel's first value may be `{}`.
 * @typedef {object} RowsTrait
 * @property {number} [version]
 * @property {Record<string, Position>} [positions]  by symbol
 * @property {Record<string, Order>} [orders]  by order id
 * @property {Record<string, Fill>} [fills]  by fill id, the newest the kernel keeps
 * @property {EquityPoint[]} [equity]  oldest first
 * @property {Account | null} [account]
 */

/**
 * The rows as the parts read them (normalizeRows): every field present.
 * @typedef {object} Rows
 * @property {number} version  -Infinity when the trait has none
 * @property {Record<string, Position>} positions
 * @property {Record<string, Order>} orders
 * @property {Record<string, Fill>} fills
 * @property {EquityPoint[]} equity
 * @property {Account | null} account
 * @property {number | null} asOf  epoch ms the data is current as of (last_data_ms), null before any
 */

/**
 * One keyed change to a map of rows.
 * @template T
 * @typedef {object} MapChange
 * @property {Record<string, T>} [upsert]
 * @property {string[]} [remove]
 */

/**
 * The delta trait: what changed since the previous version. Its first value
 * may be `{}` (no version), which the version check drops.
 * @typedef {object} Delta
 * @property {number | null} [version]
 * @property {MapChange<Position>} [positions]
 * @property {MapChange<Order>} [orders]
 * @property {MapChange<Fill>} [fills]
 * @property {EquityPoint[]} [equity]  points appended since the previous delta
 * @property {Account | null} [account]  absent (or null) when unchanged
 * @property {AlertNote[]} [alerts]  alerts fired since the previous delta (shown, not kept)
 */

/**
 * The traits that widgets.py syncs.
 * @typedef {object} Traits
 * @property {string} component
 * @property {string} status
 * @property {string} error
 * @property {string} status_reason
 * @property {number | null} last_data_ms  epoch ms of the last data, null before any
 * @property {number} live_s
 * @property {number} delayed_s
 * @property {number} max_rows
 * @property {string} title
 * @property {string[]} done_statuses  the order statuses that end an order (protocol.py)
 * @property {RowsTrait | null} rows
 * @property {Delta | null} delta
 */

/**
 * The part of anywidget's model that the widget uses.
 * @typedef {object} Model
 * @property {<K extends keyof Traits>(name: K) => Traits[K]} get
 * @property {<K extends keyof Traits>(name: K, value: Traits[K]) => void} set  fires change:NAME synchronously
 * @property {(event: string, callback: () => void) => void} on
 * @property {(event: string, callback: () => void) => void} off
 */

/**
 * What a mount function returns. `update` brings the part up to date from its
 * input (nothing, a freshness reading or the merged rows), writing only what
 * changed; `dispose` drops its timers and listeners and takes its nodes out.
 * @template [Input=void]
 * @typedef {object} Part
 * @property {(input: Input) => void} update
 * @property {() => void} dispose
 */

/**
 * Draws every data part from the merged rows, at most once per animation frame.
 * @typedef {object} Frame
 * @property {() => void} schedule  draw at the next frame; more requests before it cost nothing
 * @property {() => void} flush  draw now and drop the pending frame (a click wants its answer at once)
 * @property {() => void} cancel
 */

/**
 * One toast waiting to be shown.
 * @typedef {object} ToastNote
 * @property {"fill" | "alert"} kind
 * @property {string} text
 * @property {string} [title]  the tooltip (an alert's time)
 */

/**
 * Announcements on their way to the toasts part: fills from deltas, orders
 * that turned filled without one (each order announced once), and alerts.
 * @typedef {object} ToastQueue
 * @property {(fill: Fill) => void} fill
 * @property {(id: string, order: Order) => void} orderFilled
 * @property {(alert: AlertNote) => void} alert
 * @property {() => ToastNote[]} take  the toasts waiting, oldest first; empties the queue
 */

/**
 * All that render shares with the parts.
 * @typedef {object} Context
 * @property {Model} model
 * @property {Frame} frame
 * @property {ToastQueue | null} toasts  null when this view shows no toasts
 */

/** @typedef {"live" | "delayed" | "stale" | "offline"} Freshness */

/**
 * Freshness as read once for the badge and the banner, so the two never disagree.
 * @typedef {object} FreshnessReading
 * @property {string} status  the connection status
 * @property {Freshness} state
 * @property {number | null} age  seconds since the last data; null before any
 */

export {};
