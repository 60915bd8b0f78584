// @ts-check
/**
 * Positions sorted by the column the user picked, capped at max_rows with an
 * "N more" button, over a Total row (market value, unrealized and day P&L of
 * every position, shown or not). Weight is a position's share of the gross
 * exposure. An unrealized P&L cell flashes (gain) or shakes (loss) when it
 * moves, a colour change only under reduced motion, and its title says by
 * how much ("+0.42 since last update").
 */

import {
  DASH,
  fmt,
  money,
  num,
  percent,
  price,
  quantity,
  signedChange,
  signedMoney,
  signedPercent,
  toneOf,
} from "../format.js";
import { createTimers, followReducedMotion, h, setHidden, setText, setTone } from "../dom.js";
import { NUMERIC, TONED, column, moreButton, reconcile, sortableTable } from "../table.js";

/** @typedef {import("../types.js").Context} Context */
/** @typedef {import("../types.js").Rows} Rows */
/** @typedef {import("../types.js").Position} Position */
/** @typedef {Position & { weight: number }} PositionRow  a position and its weight */
/**
 * @template [Input=void]
 * @typedef {import("../types.js").Part<Input>} Part
 */

const DEFAULT_MAX_ROWS = 50;
const ANIMATION_FALLBACK_MS = 1000; // animationend never fires if the cell is hidden
const ANIMATION_CLASSES = ["afl-flash-gain", "afl-shake-loss", "afl-gain-static", "afl-loss-static"];

/** @type {import("../table.js").Column<PositionRow>[]} */
export const POSITION_COLUMNS = [
  column("symbol", "Symbol", (p) => String(p.symbol ?? DASH)),
  column("qty", "Qty", (p) => fmt(quantity, p.qty), NUMERIC),
  column("avg_entry_price", "Avg entry", (p) => price(p.avg_entry_price), NUMERIC),
  column("current_price", "Price", (p) => price(p.current_price), NUMERIC),
  column("market_value", "Market value", (p) => fmt(money, p.market_value), NUMERIC),
  column("weight", "Weight", (p) => fmt(percent, p.weight), NUMERIC),
  column("unrealized_pl", "Unrealized P&L", (p) => fmt(signedMoney, p.unrealized_pl), TONED),
  column("unrealized_plpc", "P&L %", (p) => fmt(signedPercent, p.unrealized_plpc), TONED),
  column("unrealized_intraday_pl", "Day P&L", (p) => fmt(signedMoney, p.unrealized_intraday_pl), TONED),
  column("change_today", "Day change", (p) => fmt(signedPercent, p.change_today), TONED),
];
const PL_COLUMN = POSITION_COLUMNS.findIndex((c) => c.key === "unrealized_pl");

/**
 * Sums over every position: market value (net), unrealized P&L, day P&L, and
 * the gross exposure that weights are shares of.
 * @param {Position[]} positions
 */
export function positionTotals(positions) {
  let marketValue = 0;
  let gross = 0;
  let unrealized = 0;
  let day = 0;
  for (const p of positions) {
    const value = num(p.market_value);
    if (Number.isFinite(value)) {
      marketValue += value;
      gross += Math.abs(value);
    }
    unrealized += num(p.unrealized_pl) || 0;
    day += num(p.unrealized_intraday_pl) || 0;
  }
  return { marketValue, gross, unrealized, day };
}

/**
 * @param {HTMLElement} container
 * @param {Context} ctx
 * @returns {Part<Rows>}
 */
export function mountPositions(container, { model, frame }) {
  // By symbol until the user picks a column.
  const table = sortableTable("Positions", POSITION_COLUMNS, { column: 0, dir: "asc" }, () => frame.flush());
  const timers = createTimers();
  const motion = followReducedMotion();
  /** @type {WeakMap<HTMLElement, () => void>} */
  const animations = new WeakMap(); // cell -> ends its running animation

  // The Total row: what adds up (market value, weight, P&L), blank elsewhere.
  /** @type {Record<string, HTMLTableCellElement>} */
  const totalCells = {};
  const totalRow = h(
    "tr",
    { class: "afl-total", "data-total": "" },
    ...POSITION_COLUMNS.map((col, i) => {
      const attrs = { "data-col": col.key, class: col.numeric ? "afl-num" : null };
      const td = i === 0 ? h("th", { ...attrs, scope: "row" }, "Total") : h("td", attrs);
      totalCells[col.key] = td;
      return td;
    }),
  );
  const tfoot = h("tfoot", { hidden: true }, totalRow);
  table.table.append(tfoot);

  const more = moreButton(() => frame.flush());
  const empty = h("p", { class: "afl-empty", hidden: true }, "No open positions");
  const section = h("div", { class: "afl-section afl-positions" }, table.table, empty, more.button);
  container.append(section);

  /**
   * Flashes (gain) or shakes (loss) a P&L cell; only a colour change under
   * reduced motion. The title says the move either way.
   * @param {HTMLElement} cell
   * @param {number} change
   */
  function flash(cell, change) {
    const direction = change > 0 ? "gain" : "loss";
    cell.title = `${signedChange.format(change)} since last update`;
    animations.get(cell)?.(); // end the previous one, so this one replays from the start
    const cls = motion.reduced ? `afl-${direction}-static` : direction === "gain" ? "afl-flash-gain" : "afl-shake-loss";
    cell.classList.remove(...ANIMATION_CLASSES);
    void cell.offsetWidth; // force a style flush: re-adding the class then restarts the keyframes
    cell.classList.add(cls);
    const finish = () => {
      cell.classList.remove(cls);
      cell.removeEventListener("animationend", finish);
      timers.cancel(timer);
      animations.delete(cell);
    };
    const timer = timers.later(finish, ANIMATION_FALLBACK_MS);
    cell.addEventListener("animationend", finish);
    animations.set(cell, finish);
  }

  /**
   * @param {string} key
   * @param {string} text
   * @param {boolean} [toned]
   */
  const showTotal = (key, text, toned = false) => {
    setText(totalCells[key], text);
    if (toned) setTone(totalCells[key], toneOf(text));
  };

  return {
    update({ positions }) {
      const all = Object.values(positions);
      const totals = positionTotals(all);
      /** @type {[string, PositionRow][]} */
      const entries = Object.entries(positions).map(([symbol, p]) => {
        const weight = totals.gross > 0 ? Math.abs(num(p.market_value)) / totals.gross : NaN;
        return [symbol, { ...p, weight }];
      });
      table.order(entries);
      const maxRows = model.get("max_rows");
      const cap = Number.isInteger(maxRows) && maxRows > 0 ? maxRows : DEFAULT_MAX_ROWS;
      const shown = more.shown(entries.length, cap);

      reconcile(table, POSITION_COLUMNS, "data-symbol", entries.slice(0, shown), (row, position, isNew) => {
        const pl = num(position.unrealized_pl);
        if (!isNew && Number.isFinite(pl) && row.pl !== undefined && Number.isFinite(row.pl) && pl !== row.pl) {
          flash(row.cells[PL_COLUMN], pl - row.pl);
        }
        row.pl = pl;
      });

      showTotal("market_value", fmt(money, totals.marketValue));
      showTotal("weight", totals.gross > 0 ? fmt(percent, 1) : "");
      showTotal("unrealized_pl", fmt(signedMoney, totals.unrealized), true);
      showTotal("unrealized_intraday_pl", fmt(signedMoney, totals.day), true);
      setHidden(tfoot, all.length === 0);
      setHidden(empty, all.length > 0);
    },
    dispose() {
      motion.dispose();
      timers.clear();
      section.remove();
    },
  };
}
