// @ts-check
/**
 * Tables: columns, sortable headers (mouse and keyboard), keyed rows that are
 * reused and written cell by cell, and the "N more" button past a cap.
 *
 * Every header of a sortable table is focusable (tabindex 0); a click, Enter
 * or Space sorts by it (again to reverse), and `aria-sort` says how each
 * column is sorted (ascending, descending or none).
 */

import { num, slug, toneOf } from "./format.js";
import { h, setAttr, setHidden, setText, setTone } from "./dom.js";

/**
 * A column: the field it sorts by (and the cell's data-col), its header, the
 * text of a cell, and flags: numeric (right-aligned, sorted as numbers), toned
 * (afl-gain / afl-loss by sign), chip (the text sits in a status chip),
 * byNumber (sorted as numbers, shown as text: a time). `value` is what it
 * sorts by, the field itself unless given.
 * @template T
 * @typedef {object} Column
 * @property {string} key
 * @property {string} label
 * @property {(item: T) => string} text
 * @property {(item: T) => unknown} [value]
 * @property {boolean} [numeric]
 * @property {boolean} [byNumber]
 * @property {boolean} [toned]
 * @property {boolean} [chip]
 */

/**
 * @template T
 * @param {string} key
 * @param {string} label
 * @param {(item: T) => string} text
 * @param {Partial<Pick<Column<T>, "numeric" | "byNumber" | "toned" | "chip" | "value">>} [flags]
 * @returns {Column<T>}
 */
export const column = (key, label, text, flags = {}) => ({ key, label, text, ...flags });
export const NUMERIC = { numeric: true };
export const TONED = { numeric: true, toned: true };

/** @typedef {{ column: number, dir: "asc" | "desc" }} Sort */

/**
 * One table row as drawn: its cells and the text each shows.
 * @typedef {object} Row
 * @property {HTMLTableRowElement} tr
 * @property {HTMLTableCellElement[]} cells
 * @property {string[]} texts
 * @property {number} [pl]  the unrealized P&L drawn last (positions: a change flashes)
 */

/**
 * @typedef {object} Table
 * @property {HTMLTableElement} table
 * @property {HTMLTableCellElement[]} headers
 * @property {HTMLTableSectionElement} tbody
 * @property {Map<string, Row>} rows  by key, in no particular order
 */

/**
 * @param {string} label
 * @param {Column<any>[]} columns
 * @returns {Table}
 */
export function buildTable(label, columns) {
  const headers = columns.map((col) =>
    h("th", { scope: "col", class: col.numeric ? "afl-num" : null, "data-col": col.key }, col.label),
  );
  const tbody = h("tbody");
  const thead = h("thead", {}, h("tr", {}, ...headers));
  const table = h("table", { class: "afl-table", role: "table", "aria-label": label }, thead, tbody);
  return { table, headers, tbody, rows: new Map() };
}

/**
 * @template T
 * @typedef {Table & { sort: () => Sort, order: (entries: [string, T][]) => [string, T][] }} SortableTable
 */

/**
 * A table whose every header sorts it: by click, Enter or Space, with aria-sort.
 * @template T
 * @param {string} label
 * @param {Column<T>[]} columns
 * @param {Sort} initial
 * @param {() => void} onSort  after the order changed (the part redraws)
 * @returns {SortableTable<T>}
 */
export function sortableTable(label, columns, initial, onSort) {
  const table = buildTable(label, columns);
  let sort = { ...initial };
  const showSort = () =>
    table.headers.forEach((th, i) => {
      setAttr(th, "aria-sort", i === sort.column ? (sort.dir === "asc" ? "ascending" : "descending") : "none");
    });
  /** @param {number} index */
  const sortBy = (index) => {
    sort = { column: index, dir: sort.column === index && sort.dir === "asc" ? "desc" : "asc" };
    showSort();
    onSort();
  };
  table.headers.forEach((th, index) => {
    th.classList.add("afl-sortable");
    th.tabIndex = 0;
    const label = h("span", { class: "afl-sort-label" }, ...th.childNodes);
    th.append(label);
    th.addEventListener("click", () => sortBy(index));
    th.addEventListener("keydown", (event) => {
      if (event.key !== "Enter" && event.key !== " " && event.key !== "Spacebar") return;
      event.preventDefault(); // Space would scroll the page
      sortBy(index);
    });
  });
  showSort();
  return {
    ...table,
    sort: () => sort,
    order: (entries) => entries.sort(compareBy(columns[sort.column], sort.dir === "asc" ? 1 : -1)),
  };
}

/**
 * @template T
 * @param {Column<T>} col
 * @param {1 | -1} direction
 * @returns {(a: [string, T], b: [string, T]) => number}
 */
export function compareBy(col, direction) {
  /** @param {T} item */
  const valueOf = (item) => (col.value ? col.value(item) : /** @type {Record<string, unknown>} */ (item)[col.key]);
  return ([keyA, a], [keyB, b]) => {
    const valueA = valueOf(a);
    const valueB = valueOf(b);
    let order = 0;
    if (col.numeric || col.byNumber) {
      const x = num(valueA);
      const y = num(valueB);
      // Rows without a value go last whichever way the column is sorted.
      if (Number.isFinite(x) !== Number.isFinite(y)) return Number.isFinite(x) ? -1 : 1;
      order = Number.isFinite(x) ? (x - y) * direction : 0;
    } else {
      order = String(valueA ?? keyA).localeCompare(String(valueB ?? keyB)) * direction;
    }
    return order || (keyA < keyB ? -1 : keyA > keyB ? 1 : 0);
  };
}

/**
 * @param {Column<any>[]} columns
 * @param {string} keyAttr
 * @param {string} key
 * @returns {Row}
 */
export function createRow(columns, keyAttr, key) {
  const cells = columns.map((col) => {
    const td = h("td", { "data-col": col.key, class: col.numeric ? "afl-num" : null });
    if (col.chip) td.append(h("span", { class: "afl-chip" }));
    return td;
  });
  return { tr: h("tr", { [keyAttr]: key }, ...cells), cells, texts: [] };
}

/**
 * Brings one row up to date, writing only the cells whose text changed.
 * @template T
 * @param {Row} row
 * @param {Column<T>[]} columns
 * @param {T} item
 */
export function syncRow(row, columns, item) {
  columns.forEach((col, i) => {
    const text = col.text(item);
    if (row.texts[i] === text) return;
    row.texts[i] = text;
    const cell = row.cells[i];
    if (col.chip) {
      const chip = /** @type {HTMLElement} */ (cell.firstElementChild);
      chip.textContent = text;
      chip.className = `afl-chip afl-chip--${slug(text)}`;
    } else {
      cell.textContent = text;
    }
    if (col.toned) setTone(cell, toneOf(text));
  });
}

/**
 * Keyed reconciliation: rows are reused by key, moved only when out of place
 * and dropped when their key is gone. `beforeSync(row, item, isNew)` runs
 * while the row still shows its previous values.
 * @template T
 * @param {Table} table
 * @param {Column<T>[]} columns
 * @param {string} keyAttr
 * @param {[string, T][]} entries  in the order to show
 * @param {(row: Row, item: T, isNew: boolean) => void} [beforeSync]
 */
export function reconcile(table, columns, keyAttr, entries, beforeSync) {
  const { tbody, rows } = table;
  const keep = new Set();
  entries.forEach(([key, item], index) => {
    let row = rows.get(key);
    const isNew = !row;
    if (!row) {
      row = createRow(columns, keyAttr, key);
      rows.set(key, row);
    }
    beforeSync?.(row, item, isNew);
    syncRow(row, columns, item);
    keep.add(key);
    const here = tbody.children[index];
    if (here !== row.tr) tbody.insertBefore(row.tr, here ?? null);
  });
  for (const [key, row] of rows) {
    if (!keep.has(key)) {
      row.tr.remove();
      rows.delete(key);
    }
  }
}

/**
 * The "N more" button under a capped table: it shows the rest, then "Show fewer".
 * @param {() => void} onToggle
 */
export function moreButton(onToggle) {
  const button = h("button", { type: "button", class: "afl-more", "aria-expanded": "false", hidden: true });
  let expanded = false;
  button.addEventListener("click", () => {
    expanded = !expanded;
    onToggle();
  });
  return {
    button,
    /**
     * The rows to show of `total`, and the button brought up to date.
     * @param {number} total
     * @param {number} cap
     */
    shown(total, cap) {
      const hiddenCount = Math.max(0, total - cap);
      setHidden(button, hiddenCount === 0);
      setAttr(button, "aria-expanded", String(expanded));
      setText(button, expanded ? "Show fewer" : `${hiddenCount} more`);
      setAttr(button, "title", hiddenCount && !expanded ? `the first ${cap} of ${total} are shown` : null);
      return expanded ? total : Math.min(total, cap);
    },
  };
}
