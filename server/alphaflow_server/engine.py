"""PortfolioEngine: fills and prices in, position and account events out (no I/O).

Per user the engine holds a book: signed quantities and average entry prices,
cash, realized P&L today and the equity the day started with. All arithmetic
is ``decimal.Decimal`` in the contexts of ``money``, which says why no input
the decoder accepts can make it fail; values are quantized only when they
leave the engine as events:

* money (market value, cost basis, P&L, cash, equity …): 4 decimal places,
  finer than cents so fractional shares keep their sub-cent value;
* prices (average entry, current): 6 decimal places;
* ratios (``unrealized_plpc``, ``change_today``): 6 decimal places;
* quantities: as they came (a fill's qty is never rounded).

Sign conventions are Alpaca's: a short position has a negative ``qty``,
``market_value`` and ``cost_basis``; ``short_market_value`` is the (negative)
sum of short market values, so equity = cash + long_market_value +
short_market_value, i.e. cash + long value − |short value|.

Average entry: weighted on adds, unchanged on reductions, reset to the fill
price when a fill flips the position through zero. Realized P&L is
(fill price − average entry) × closed quantity, signed by the side closed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Literal

import msgspec

from alphaflow_live.protocol import (
    Account,
    AccountEvent,
    ClosedPosition,
    Event,
    Fill,
    FillEvent,
    Position,
    PositionClosedEvent,
    PositionEvent,
    PriceTick,
    trusted_construction,
)

from .money import EXACT as _CONTEXT
from .money import QUOTIENT as _QUOTIENT
from .money import quantize as _q

MONEY = Decimal("0.0001")
PRICE = Decimal("0.000001")
RATIO = Decimal("0.000001")
ZERO = Decimal(0)
Side = Literal["long", "short"]


@dataclass(slots=True)
class Holding:
    symbol: str
    qty: Decimal
    avg_entry_price: Decimal
    current_price: Decimal
    # The price intraday P&L is measured from: the day's reference price for a
    # position carried into the day, the average entry for one opened today.
    intraday_base: Decimal
    asset_class: str = "us_equity"
    # What the position's figures need that only a fill changes, computed once per (qty, average):
    # (qty, average, qty + 0, side, quantized average, cost basis, quantized cost basis, |cost basis|).
    fixed: tuple[Decimal, Decimal, Decimal, Side, Decimal, Decimal, Decimal, Decimal] | None = None


@dataclass(slots=True)
class Book:
    cash: Decimal = ZERO
    realized_pl_today: Decimal = ZERO
    last_equity: Decimal = ZERO
    currency: str = "USD"
    holdings: dict[str, Holding] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SavePoint:
    user_id: str
    # cash, realized P&L today, last equity, currency; None when the user had no book
    scalars: tuple[Decimal, Decimal, Decimal, str] | None
    holdings: dict[str, Holding | None]
    # symbol → (price, day reference) before, None where there was none
    marks: dict[str, tuple[Decimal | None, Decimal | None]]
    # marks of the user's holdings not yet sent as positions (``process`` sends them)
    stale: dict[str, str] | None = None


class BookRecord(msgspec.Struct, kw_only=True):
    """A book as stored on disk (exact decimals, unquantized)."""

    cash: Decimal
    realized_pl_today: Decimal
    last_equity: Decimal
    currency: str
    holdings: list[tuple[str, Decimal, Decimal, Decimal, Decimal, str]]


class PortfolioEngine:
    def __init__(self, *, buying_power_multiplier: Decimal = Decimal(2)) -> None:
        self.books: dict[str, Book] = {}
        # Last price per symbol from ticks (or from a fill, until a tick comes), shared by every user.
        self.prices: dict[str, Decimal] = {}
        # Reference price per symbol for change_today (the previous close, or the day's first price).
        self.day_reference: dict[str, Decimal] = {}
        self._holders: dict[str, set[str]] = {}
        self._multiplier = buying_power_multiplier
        # Marks not yet turned into events: user → symbol → ts of the symbol's last tick, in the
        # order of the ticks, so the user's last tick comes last (timestamps of mixed precision do
        # not compare as strings).
        self._stale: dict[str, dict[str, str]] = {}
        # symbol → (price, reference, quantized price, quantized change today), for the latest mark
        self._quoted: dict[str, tuple[Decimal, Decimal | None, Decimal, Decimal]] = {}

    def book(self, user_id: str) -> Book:
        book = self.books.get(user_id)
        if book is None:
            book = self.books[user_id] = Book()
        return book

    # ------------------------------------------------------------- ingest

    def process(self, user_id: str, events: Sequence[Event]) -> list[Event]:
        """Expand one user's published events into everything their stream carries.

        Marks of the user's holdings not yet sent go first, as positions, so
        the stream never shows an account valued at prices its positions do not
        show. Each fill is followed by its position (or ``position_closed``);
        the account they change follows once, after the last of them, stamped
        with that event's ``ts`` (intermediate accounts would be coalesced away
        anyway, and each costs a pass over the user's holdings).
        """
        out: list[Event] = []
        account_ts: str | None = None
        stale = self._stale.pop(user_id, None)
        if stale:
            out.extend(self.position_event(user_id, symbol, ts) for symbol, ts in stale.items())
            account_ts = next(reversed(stale.values()))
        for event in events:
            if isinstance(event, FillEvent):
                out.append(event)
                out.append(self._apply_fill(user_id, event.data, event.ts))
                account_ts = event.ts
            elif isinstance(event, PositionEvent):
                symbol = event.data.symbol
                if event.data.qty == 0:  # flat is gone: the stream must not keep a row of qty 0
                    self._drop(user_id, symbol)
                    out.append(PositionClosedEvent(ts=event.ts, data=ClosedPosition(symbol=symbol)))
                else:
                    self._set_position(user_id, event.data)
                    out.append(event)
                account_ts = event.ts
            elif isinstance(event, PositionClosedEvent):
                self._drop(user_id, event.data.symbol)
                out.append(event)
                account_ts = event.ts
            elif isinstance(event, AccountEvent):
                self._set_account(user_id, event.data)
                out.append(event)
                account_ts = None  # authoritative: it stands as published
            else:
                out.append(event)
        if account_ts is not None:
            out.append(self._account_event(user_id, account_ts))
        return out

    def mark(self, ticks: Iterable[PriceTick]) -> list[str]:
        """Record new marks; returns the users whose positions they made stale (and were not).

        The holders' positions are derived later, by ``remark``: deriving is
        the expensive part (a position per holder per tick, and an account), and
        a stream coalesces positions per batch window anyway, so the server
        marks on every tick and re-derives once per window per user.
        """
        stale = self._stale
        newly: list[str] = []
        for tick in ticks:
            symbol, price = tick.symbol, tick.price
            self.prices[symbol] = price
            self.day_reference.setdefault(symbol, price)
            for user_id in self._holders.get(symbol, ()):
                self.books[user_id].holdings[symbol].current_price = price
                symbols = stale.get(user_id)
                if symbols is None:
                    symbols = stale[user_id] = {}
                    newly.append(user_id)
                else:
                    symbols.pop(symbol, None)
                symbols[symbol] = tick.ts
        return newly

    def remark(self) -> dict[str, list[Event]]:
        """Per user with marks not yet sent: a position per marked symbol, then one account."""
        return self.derive(self.take_stale())

    def take_stale(self, user_ids: Iterable[str] | None = None) -> dict[str, dict[str, str]]:
        """The marks not yet sent (user → symbol → ts), of these users or all; the engine forgets them."""
        if user_ids is None:
            stale, self._stale = self._stale, {}
            return stale
        return {user_id: symbols for user_id in user_ids if (symbols := self._stale.pop(user_id, None))}

    def derive(self, stale: dict[str, dict[str, str]]) -> dict[str, list[Event]]:
        """Per user: a position per stale symbol, then the account, stamped with the last mark's ts."""
        # Every value is computed from checked ones: the checks would only cost time here.
        with trusted_construction():
            return {user_id: self._derive(user_id, symbols) for user_id, symbols in stale.items()}

    def derive_user(self, user_id: str, symbols: dict[str, str]) -> list[Event]:
        """``derive`` for one user, so that a caller can keep one user's failure from the others."""
        with trusted_construction():
            return self._derive(user_id, symbols)

    def _derive(self, user_id: str, symbols: dict[str, str]) -> list[Event]:
        events: list[Event] = [self.position_event(user_id, s, ts) for s, ts in symbols.items()]
        events.append(self._account_event(user_id, next(reversed(symbols.values()))))
        return events

    def return_stale(self, stale: dict[str, dict[str, str]]) -> None:
        """Put back marks taken by ``take_stale`` whose events were not committed."""
        for user_id, symbols in stale.items():
            holdings = self.books[user_id].holdings
            newer = self._stale.get(user_id, {})
            kept = {s: ts for s, ts in symbols.items() if s in holdings and s not in newer}
            if kept or newer:
                self._stale[user_id] = kept | newer

    def spread_mark(self, symbol: str, ts: str, *, source: str) -> list[str]:
        """Carry the symbol's mark, as ``source``'s published position set it, to the other holders;
        returns the users whose positions it made stale (and were not).

        One mark per symbol, as after a restart, which prices every holding at
        the stored mark: without this, other holders would show the old price
        until the next tick, and a restart would show them another.
        """
        price = self.prices[symbol]
        newly: list[str] = []
        for user_id in self._holders.get(symbol, ()):
            holding = self.books[user_id].holdings[symbol]
            if user_id == source or holding.current_price == price:
                continue
            holding.current_price = price
            if user_id not in self._stale:
                newly.append(user_id)
            self.mark_stale(user_id, symbol, ts)
        return newly

    def mark_stale(self, user_id: str, symbol: str, ts: str) -> None:
        """Send the holding's position (and the account) on the user's next re-mark."""
        symbols = self._stale.setdefault(user_id, {})
        symbols.pop(symbol, None)
        symbols[symbol] = ts

    def stale_users(self) -> list[str]:
        return list(self._stale)

    def apply_prices(self, ticks: Iterable[PriceTick]) -> dict[str, list[Event]]:
        """New marks and, per user holding a ticked symbol, fresh position and account events."""
        self.mark(ticks)
        return self.remark()

    def roll_day(self) -> None:
        """Start a new trading day: today's P&L restarts from current marks."""
        for book in self.books.values():
            book.last_equity = self.equity(book)
            book.realized_pl_today = ZERO
            for holding in book.holdings.values():
                holding.intraday_base = holding.current_price
        self.day_reference = dict(self.prices)

    # -------------------------------------------------------------- fills

    def _apply_fill(self, user_id: str, fill: Fill, ts: str) -> PositionEvent | PositionClosedEvent:
        book = self.book(user_id)
        signed = fill.qty if fill.side == "buy" else fill.qty.copy_negate()
        price = fill.price
        ctx = _CONTEXT
        book.cash = ctx.subtract(book.cash, ctx.multiply(signed, price))
        self.prices.setdefault(fill.symbol, price)
        self.day_reference.setdefault(fill.symbol, price)
        holding = book.holdings.get(fill.symbol)
        if holding is None or holding.qty == 0:
            holding = Holding(fill.symbol, signed, price, self.prices[fill.symbol], price)
        elif (holding.qty > 0) == (signed > 0):  # adding
            new_qty = ctx.add(holding.qty, signed)
            cost = ctx.add(ctx.multiply(holding.qty, holding.avg_entry_price), ctx.multiply(signed, price))
            base = ctx.add(ctx.multiply(holding.qty, holding.intraday_base), ctx.multiply(signed, price))
            holding.avg_entry_price = _QUOTIENT.divide(cost, new_qty)
            holding.intraday_base = _QUOTIENT.divide(base, new_qty)
            holding.qty = new_qty
        else:  # reducing, closing or flipping
            closed = min(signed.copy_abs(), holding.qty.copy_abs())
            direction = Decimal(1) if holding.qty > 0 else Decimal(-1)
            pnl = ctx.multiply(ctx.multiply(closed, ctx.subtract(price, holding.avg_entry_price)), direction)
            book.realized_pl_today = ctx.add(book.realized_pl_today, pnl)
            new_qty = ctx.add(holding.qty, signed)
            if new_qty != 0 and (new_qty > 0) != (holding.qty > 0):  # flipped through zero
                holding.avg_entry_price = price
                holding.intraday_base = price
            holding.qty = new_qty
        if holding.qty == 0:
            self._drop(user_id, fill.symbol)
            return PositionClosedEvent(ts=ts, data=ClosedPosition(symbol=fill.symbol))
        book.holdings[fill.symbol] = holding
        self._holders.setdefault(fill.symbol, set()).add(user_id)
        return self.position_event(user_id, fill.symbol, ts)

    # ----------------------------------------------- authoritative overwrites

    def _set_position(self, user_id: str, position: Position) -> None:
        """Overwrite the holding with a published one; ``process`` drops a position of qty 0."""
        # Keep the broker's intraday P&L as prices move: base = price − intraday P&L per share.
        base = _CONTEXT.subtract(
            position.current_price, _QUOTIENT.divide(position.unrealized_intraday_pl, position.qty)
        )
        self.book(user_id).holdings[position.symbol] = Holding(
            position.symbol, position.qty, position.avg_entry_price, position.current_price, base,
            position.asset_class,
        )  # fmt: skip
        self._holders.setdefault(position.symbol, set()).add(user_id)
        # The broker's price is the symbol's mark (``spread_mark`` carries it to the other holders).
        self.prices[position.symbol] = position.current_price
        self.day_reference.setdefault(position.symbol, position.current_price)

    def _set_account(self, user_id: str, account: Account) -> None:
        book = self.book(user_id)
        book.cash = account.cash
        book.realized_pl_today = account.realized_pl_today
        book.last_equity = account.last_equity
        book.currency = account.currency

    def save_point(self, user_id: str, events: Sequence[Event]) -> SavePoint:
        """What ``process(user_id, events)`` may change, so that it can be undone."""
        symbols = {
            e.data.symbol for e in events if isinstance(e, FillEvent | PositionEvent | PositionClosedEvent)
        }
        marks = {s: (self.prices.get(s), self.day_reference.get(s)) for s in symbols}
        book = self.books.get(user_id)
        if book is None:
            return SavePoint(user_id, None, {}, marks)
        held = {s: dataclasses.replace(h) if (h := book.holdings.get(s)) else None for s in symbols}
        scalars = (book.cash, book.realized_pl_today, book.last_equity, book.currency)
        stale = self._stale.get(user_id)
        return SavePoint(user_id, scalars, held, marks, dict(stale) if stale else None)

    def restore(self, point: SavePoint) -> None:
        for symbol, (price, reference) in point.marks.items():
            for table, value in ((self.prices, price), (self.day_reference, reference)):
                if value is None:
                    table.pop(symbol, None)
                else:
                    table[symbol] = value
        if point.scalars is None:
            self.books.pop(point.user_id, None)
        else:
            book = self.book(point.user_id)
            book.cash, book.realized_pl_today, book.last_equity, book.currency = point.scalars
            for symbol, holding in point.holdings.items():
                if holding is None:
                    book.holdings.pop(symbol, None)
                else:
                    book.holdings[symbol] = holding
            if point.stale:
                self.return_stale({point.user_id: point.stale})
        self._rebuild_holders()

    def _rebuild_holders(self) -> None:
        self._holders = {}
        for user_id, book in self.books.items():
            for symbol in book.holdings:
                self._holders.setdefault(symbol, set()).add(user_id)

    def _drop(self, user_id: str, symbol: str) -> None:
        self.book(user_id).holdings.pop(symbol, None)
        stale = self._stale.get(user_id)
        if stale is not None:
            stale.pop(symbol, None)
            if not stale:
                del self._stale[user_id]
        holders = self._holders.get(symbol)
        if holders is not None:
            holders.discard(user_id)
            if not holders:
                del self._holders[symbol]

    # ------------------------------------------------------------- outputs

    def position_event(self, user_id: str, symbol: str, ts: str) -> PositionEvent:
        return PositionEvent(ts=ts, data=self.position(self.books[user_id].holdings[symbol], ts))

    def position(self, h: Holding, updated_at: str) -> Position:
        ctx = _CONTEXT
        price = h.current_price
        fixed = h.fixed
        if fixed is None or fixed[0] is not h.qty or fixed[1] is not h.avg_entry_price:
            cost = ctx.multiply(h.qty, h.avg_entry_price)
            side: Side = "long" if h.qty > 0 else "short"
            fixed = (
                h.qty, h.avg_entry_price, ctx.add(h.qty, ZERO), side, _q(h.avg_entry_price, PRICE), cost,
                _q(cost, MONEY), cost.copy_abs(),
            )  # fmt: skip
            h.fixed = fixed
        _, _, qty, side, avg_entry_price, cost_basis, cost_basis_q, abs_cost = fixed
        quoted = self._quoted.get(h.symbol)
        reference = self.day_reference.get(h.symbol)
        if quoted is None or quoted[0] is not price or quoted[1] is not reference:
            change = _QUOTIENT.divide(ctx.subtract(price, reference), reference) if reference else ZERO
            quoted = self._quoted[h.symbol] = (price, reference, _q(price, PRICE), _q(change, RATIO))
        market_value = ctx.multiply(h.qty, price)
        unrealized = ctx.subtract(market_value, cost_basis)
        plpc = _QUOTIENT.divide(unrealized, abs_cost) if abs_cost else ZERO
        intraday = ctx.multiply(h.qty, ctx.subtract(price, h.intraday_base))
        return Position(
            symbol=h.symbol,
            qty=qty,
            side=side,
            avg_entry_price=avg_entry_price,
            current_price=quoted[2],
            market_value=_q(market_value, MONEY),
            cost_basis=cost_basis_q,
            unrealized_pl=_q(unrealized, MONEY),
            unrealized_plpc=_q(plpc, RATIO),
            unrealized_intraday_pl=_q(intraday, MONEY),
            change_today=quoted[3],
            asset_class=h.asset_class,
            updated_at=updated_at,
        )

    def market_values(self, book: Book) -> tuple[Decimal, Decimal]:
        """(long market value, short market value); the short one is ≤ 0."""
        long_value = short_value = ZERO
        for h in book.holdings.values():
            value = _CONTEXT.multiply(h.qty, h.current_price)
            if value >= 0:
                long_value = _CONTEXT.add(long_value, value)
            else:
                short_value = _CONTEXT.add(short_value, value)
        return long_value, short_value

    def equity(self, book: Book) -> Decimal:
        long_value, short_value = self.market_values(book)
        return _CONTEXT.add(_CONTEXT.add(book.cash, long_value), short_value)

    def account(self, user_id: str, updated_at: str) -> Account:
        book = self.book(user_id)
        long_value, short_value = self.market_values(book)
        equity = _CONTEXT.add(_CONTEXT.add(book.cash, long_value), short_value)
        # A simple Reg-T estimate: margin multiplier × equity, less the gross exposure held.
        exposure = _CONTEXT.subtract(long_value, short_value)
        buying_power = max(ZERO, _CONTEXT.subtract(_CONTEXT.multiply(self._multiplier, equity), exposure))
        return Account(
            equity=_q(equity, MONEY),
            last_equity=_q(book.last_equity, MONEY),
            cash=_q(book.cash, MONEY),
            buying_power=_q(buying_power, MONEY),
            portfolio_value=_q(equity, MONEY),
            long_market_value=_q(long_value, MONEY),
            short_market_value=_q(short_value, MONEY),
            realized_pl_today=_q(book.realized_pl_today, MONEY),
            currency=book.currency,
            updated_at=updated_at,
        )

    def _account_event(self, user_id: str, ts: str) -> AccountEvent:
        return AccountEvent(ts=ts, data=self.account(user_id, ts))

    # --------------------------------------------------------- persistence

    def dump_book(self, user_id: str) -> BookRecord:
        book = self.book(user_id)
        return BookRecord(
            cash=book.cash,
            realized_pl_today=book.realized_pl_today,
            last_equity=book.last_equity,
            currency=book.currency,
            holdings=[
                (h.symbol, h.qty, h.avg_entry_price, h.current_price, h.intraday_base, h.asset_class)
                for h in book.holdings.values()
            ],
        )

    def unload(self, user_id: str) -> None:
        """Forget the user's book, holdings and unsent marks (another node computes them now)."""
        for symbol in list(self.books.get(user_id, Book()).holdings):
            self._drop(user_id, symbol)
        self.books.pop(user_id, None)
        self._stale.pop(user_id, None)

    def load_book(self, user_id: str, record: BookRecord) -> None:
        for symbol in list(self.books.get(user_id, Book()).holdings):
            self._drop(user_id, symbol)
        book = self.books[user_id] = Book(
            cash=record.cash,
            realized_pl_today=record.realized_pl_today,
            last_equity=record.last_equity,
            currency=record.currency,
        )
        for symbol, qty, avg, current, base, asset_class in record.holdings:
            book.holdings[symbol] = Holding(symbol, qty, avg, current, base, asset_class)
            self._holders.setdefault(symbol, set()).add(user_id)
            self.prices.setdefault(symbol, current)
