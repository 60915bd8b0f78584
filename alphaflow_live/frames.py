"""PortfolioState → pandas frames with stable columns and proper dtypes.

Money and quantities become float64 (for analysis; the exact decimals stay in
the state), timestamps ``datetime64[ns, UTC]``, text columns ``object``.
Building a frame converts only the rows whose objects changed since the last
build: rows are cached by the identity of the (immutable) struct they came
from, so reading ``positions`` after one change of 500 costs one row's
conversion plus the frame assembly.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Final

import msgspec
import numpy as np
import pandas as pd

from .protocol import Account, Fill, Order, Position


def _columns(cls: type[msgspec.Struct], index: str | None) -> tuple[str, ...]:
    return tuple(name for name in cls.__struct_fields__ if name != index)


# The Structs' fields in their order, less the one that indexes the frame.
POSITION_COLUMNS: Final = _columns(Position, "symbol")
ORDER_COLUMNS: Final = _columns(Order, "id")
ACCOUNT_FIELDS: Final = _columns(Account, None)
FILL_COLUMNS: Final = _columns(Fill, "id")
EQUITY_COLUMNS: Final = ("equity", "cash", "day_pl")

# Decimal fields become float64 and timestamps datetime64; every other field is text.
_TIME_COLUMNS: Final = frozenset(name for cls in (Position, Order, Account, Fill) for name in cls._timestamps)
_TEXT_COLUMNS: Final = frozenset(
    name
    for cls in (Position, Order, Account, Fill)
    for name in cls.__struct_fields__
    if name not in cls._decimals and name not in cls._timestamps
)


def _cell(column: str, value: Any) -> Any:
    if value is None:
        return None if column in _TEXT_COLUMNS or column in _TIME_COLUMNS else np.nan
    if column in _TEXT_COLUMNS or column in _TIME_COLUMNS:
        return value
    return float(value)


def _assemble(rows: Sequence[tuple[Any, ...]], columns: Sequence[str], index: pd.Index) -> pd.DataFrame:
    data: dict[str, Any] = {}
    for position, column in enumerate(columns):
        values = [row[position] for row in rows]
        if column in _TIME_COLUMNS:
            data[column] = to_utc(values)
        elif column in _TEXT_COLUMNS:
            data[column] = np.array(values, dtype=object)
        else:
            data[column] = np.array(values, dtype=np.float64)
    return pd.DataFrame(data, index=index, columns=list(columns))


def to_utc(values: Iterable[str | None]) -> pd.DatetimeIndex:
    """Protocol timestamps as ``datetime64[ns, UTC]`` (None becomes NaT)."""
    strings: list[Any] = list(values)
    index = pd.to_datetime(strings, utc=True, format="ISO8601")
    return pd.DatetimeIndex(index).as_unit("ns")


class RowCache:
    """Converted rows keyed by the struct object they were made from."""

    def __init__(self, columns: Sequence[str]) -> None:
        self.columns = tuple(columns)
        self._rows: dict[str, tuple[object, tuple[Any, ...]]] = {}

    def rows(self, items: dict[str, Any]) -> list[tuple[Any, ...]]:
        cache = self._rows
        out = []
        for key, obj in items.items():
            hit = cache.get(key)
            if hit is None or hit[0] is not obj:
                hit = (obj, tuple(_cell(c, getattr(obj, c)) for c in self.columns))
                cache[key] = hit
            out.append(hit[1])
        if len(cache) > 2 * len(items) + 64:  # forget rows that are gone
            for key in [k for k in cache if k not in items]:
                del cache[key]
        return out


def positions_frame(positions: dict[str, Position], cache: RowCache) -> pd.DataFrame:
    symbols = sorted(positions)
    ordered = {s: positions[s] for s in symbols}
    return _assemble(cache.rows(ordered), POSITION_COLUMNS, pd.Index(symbols, name="symbol", dtype=object))


def orders_frame(orders: dict[str, Order], cache: RowCache) -> pd.DataFrame:
    return _assemble(cache.rows(orders), ORDER_COLUMNS, pd.Index(list(orders), name="id", dtype=object))


def fills_frame(fills: Sequence[Fill]) -> pd.DataFrame:
    rows = [tuple(_cell(c, getattr(f, c)) for c in FILL_COLUMNS) for f in fills]
    return _assemble(rows, FILL_COLUMNS, pd.Index([f.id for f in fills], name="id", dtype=object))


def account_series(account: Account | None) -> pd.Series:
    if account is None:
        return pd.Series(index=list(ACCOUNT_FIELDS), dtype=object, name="account")
    values: dict[str, Any] = {}
    for name in ACCOUNT_FIELDS:
        raw = getattr(account, name)
        if name == "updated_at":
            values[name] = to_utc([raw])[0]
        elif name == "currency":
            values[name] = raw
        else:
            values[name] = float(raw)
    return pd.Series(values, name="account", dtype=object)


def equity_frame(points: Sequence[tuple[str, float, float, float]]) -> pd.DataFrame:
    """(time, equity, cash, day P&L) points as a frame indexed by time."""
    index = to_utc(p[0] for p in points)
    index.name = "time"
    data = {
        column: np.array([p[i + 1] for p in points], dtype=np.float64)
        for i, column in enumerate(EQUITY_COLUMNS)
    }
    return pd.DataFrame(data, index=index, columns=list(EQUITY_COLUMNS))
