"""The market simulator: the default source, so everything runs offline.

``MarketSimulator`` is a sans-I/O core: each ``step()`` advances simulated time
by a fixed ``step_s`` and returns the ingest messages (``prices`` and
``publish``) that a trading service would have sent in that step. With the same
seed and start time it produces the same messages, whatever the machine's
timing. ``run_simulator`` is the thin shell that calls it on a clock and feeds
the messages through the server's own ingest path; ``simulator_source`` makes
that a server source (it needs nothing of the port but ``ingest``).

Prices follow a geometric random walk per symbol (annualised drift and
volatility per ticker, time compressed by ``speed`` so that moves are visible
in a demo), rounded to cents. Orders go new → accepted → partially_filled →
filled; a few are canceled (limit orders that do not fill in time) or
rejected.

Buying power, as a broker applies it: each simulated trader keeps its own
cash and positions, and an order whose opening part (what it adds beyond
flat, long or short) would cost more than the trader's buying power is
rejected at once (``new`` → ``rejected``), as Alpaca rejects one for
"insufficient buying power". The rule is the engine's Reg-T estimate
(``PortfolioEngine.account``): ``multiplier × equity − gross exposure``, less
what the trader's open orders would open (a broker reserves that). Closing
orders always pass. The fuller the account, the likelier the trader's next
order reduces a position, so the account hovers well inside its limit over a
whole day instead of living at it.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from decimal import Decimal

import msgspec

from alphaflow_live.protocol import (
    Account,
    AccountEvent,
    Event,
    Fill,
    FillEvent,
    Order,
    OrderEvent,
    Prices,
    PriceTick,
    Publish,
    format_timestamp,
)

from .port import HeldBook, Source, SourcePort

log = logging.getLogger("alphaflow.server.sim")

# symbol, start price, annualised volatility, relative tick weight
UNIVERSE: tuple[tuple[str, str, float, float], ...] = (
    ("AAPL", "189.50", 0.24, 3.0), ("MSFT", "415.20", 0.22, 3.0), ("NVDA", "121.40", 0.48, 4.0),
    ("AMZN", "182.30", 0.30, 2.5), ("GOOGL", "168.90", 0.28, 2.0), ("META", "503.10", 0.35, 2.0),
    ("TSLA", "248.70", 0.55, 3.5), ("JPM", "201.60", 0.20, 1.5), ("V", "272.40", 0.18, 1.0),
    ("UNH", "521.80", 0.22, 1.0), ("XOM", "113.20", 0.24, 1.0), ("JNJ", "152.90", 0.15, 0.8),
    ("PG", "167.30", 0.15, 0.8), ("MA", "458.10", 0.20, 0.8), ("HD", "345.60", 0.22, 0.8),
    ("COST", "812.40", 0.20, 0.8), ("AVGO", "1402.50", 0.40, 1.2), ("LLY", "781.20", 0.30, 1.0),
    ("KO", "61.80", 0.14, 0.6), ("PEP", "171.40", 0.15, 0.6), ("BAC", "38.70", 0.26, 1.2),
    ("WMT", "68.20", 0.17, 0.8), ("DIS", "101.30", 0.28, 0.8), ("NFLX", "628.90", 0.38, 1.0),
    ("AMD", "158.60", 0.50, 2.0), ("INTC", "31.40", 0.40, 1.0), ("CRM", "262.70", 0.32, 0.8),
    ("ORCL", "139.80", 0.28, 0.8), ("ADBE", "512.30", 0.30, 0.8), ("SPY", "548.20", 0.14, 2.0),
)  # fmt: skip

_SECONDS_PER_TRADING_YEAR = 252 * 6.5 * 3600
_CENT = Decimal("0.01")


@dataclass(frozen=True, slots=True)
class SimConfig:
    seed: int = 7
    users: tuple[str, ...] = ("demo",)
    # Price ticks per second, over the whole universe.
    tick_rate: float = 40.0
    # New orders per second, per user.
    order_rate: float = 0.3
    # Market time passes this many times faster than the wall clock, for price moves.
    speed: float = 60.0
    step_s: float = 0.05
    initial_cash: Decimal = Decimal("100000")
    # Positions each user starts with, bought at the opening prices.
    opening_positions: int = 5
    # Buying power = this × equity − gross exposure: the engine's Reg-T estimate (its default, 2).
    buying_power_multiplier: Decimal = Decimal(2)


@dataclass(slots=True)
class _Symbol:
    name: str
    price: float
    sigma: float
    weight: float
    last_tick_at: float = 0.0


@dataclass(slots=True)
class _Order:
    data: Order
    user_id: str
    remaining: Decimal
    fills_left: int
    expires_at: float
    cost: Decimal = Decimal(0)


@dataclass(slots=True)
class _Trader:
    user_id: str
    cash: Decimal
    holdings: dict[str, Decimal] = field(default_factory=dict)
    # Open orders, in the order they were placed.
    orders: list[_Order] = field(default_factory=list)


def _nothing_held(user_id: str) -> HeldBook | None:
    return None


class MarketSimulator:
    def __init__(self, config: SimConfig, *, start_time: float) -> None:
        self.config = config
        self._rng = random.Random(config.seed)
        self._t0 = start_time
        self.now = start_time
        self._symbols = [_Symbol(s, float(p), vol, w, start_time) for s, p, vol, w in UNIVERSE]
        self._weights = list(itertools.accumulate(s.weight for s in self._symbols))
        self._by_name = {s.name: s for s in self._symbols}
        self._traders = {user: _Trader(user, config.initial_cash) for user in config.users}
        self._ids = itertools.count(1)
        # Fill ids are idempotency keys and order ids upsert: a run restarted on the same state must
        # not reuse its predecessor's. The start time (ms, base 36) tells runs apart and keeps a
        # seeded run reproducible.
        self._run = _base36(int(start_time * 1000))
        self._steps = 0

    def skip_to(self, when: float) -> None:
        """Jump simulated time forward (after the process was stalled for long)."""
        self._t0 = when - self._steps * self.config.step_s
        self.now = when

    @property
    def symbols(self) -> list[str]:
        return [s.name for s in self._symbols]

    def price(self, symbol: str) -> Decimal:
        return Decimal(f"{self._by_name[symbol].price:.2f}")

    def buying_power(self, user_id: str) -> Decimal:
        """What the user's next order may still open: the engine's Reg-T estimate less open orders."""
        trader = self._traders[user_id]
        return max(Decimal(0), self._headroom(trader) - self._opening_cost(trader, trader.orders))

    # ------------------------------------------------------- buying power

    def _equity_and_gross(self, trader: _Trader) -> tuple[Decimal, Decimal]:
        values = [qty * self.price(symbol) for symbol, qty in trader.holdings.items()]
        return trader.cash + sum(values, Decimal(0)), sum((abs(v) for v in values), Decimal(0))

    def _headroom(self, trader: _Trader) -> Decimal:
        """``multiplier × equity − gross exposure`` at the latest prices (as the engine's account)."""
        equity, gross = self._equity_and_gross(trader)
        return max(Decimal(0), self.config.buying_power_multiplier * equity - gross)

    def _opening_cost(self, trader: _Trader, orders: list[_Order]) -> Decimal:
        """What ``orders`` would open beyond flat, in turn, at their limit price or the mark.

        A buy against a short (a sell against a long) first closes it, which costs no buying power;
        only the part beyond flat opens exposure.
        """
        projected = dict(trader.holdings)
        cost = Decimal(0)
        for order in orders:
            data = order.data
            held = projected.get(data.symbol, Decimal(0))
            signed = order.remaining if data.side == "buy" else -order.remaining
            opening = abs(signed) if held == 0 or (held > 0) == (signed > 0) else abs(signed) - abs(held)
            if opening > 0:
                cost += opening * (data.limit_price or self.price(data.symbol))
            projected[data.symbol] = held + signed
        return cost

    def _utilisation(self, trader: _Trader) -> float:
        """The share of the account's limit (``multiplier × equity``) held or reserved by open orders."""
        equity, gross = self._equity_and_gross(trader)
        limit = self.config.buying_power_multiplier * equity
        used = gross + self._opening_cost(trader, trader.orders)
        return 1.0 if limit <= 0 else min(1.0, float(used / limit))

    # ----------------------------------------------------------- messages

    def opening(
        self, held: Callable[[str], HeldBook | None] = lambda user_id: None
    ) -> list[Publish | Prices]:
        """The first messages: every opening price, each user's account and opening positions.

        A user whose book the server already holds (``held``: the state survived a restart)
        carries on from it, with its cash and positions and no new opening: starting them again
        would add a fresh account's cash to the positions kept.
        """
        ts = format_timestamp(self.now)
        messages: list[Publish | Prices] = [
            Prices(prices=[PriceTick(symbol=s.name, price=self.price(s.name), ts=ts) for s in self._symbols])
        ]
        cash = self.config.initial_cash
        for trader in self._traders.values():
            book = held(trader.user_id)
            if book is not None and (book.positions or book.cash):
                trader.cash = book.cash
                trader.holdings = {s: q for s, q in book.positions.items() if q and s in self._by_name}
                continue
            account = Account(
                equity=cash, last_equity=cash, cash=cash, buying_power=cash * 2, portfolio_value=cash,
                long_market_value=Decimal(0), short_market_value=Decimal(0), realized_pl_today=Decimal(0),
                updated_at=ts,
            )  # fmt: skip
            events: list[Event] = [AccountEvent(ts=ts, data=account)]
            picks = self._rng.sample(self._symbols, k=min(self.config.opening_positions, len(self._symbols)))
            for symbol in picks:
                qty = Decimal(self._rng.randint(5, 60))
                order = self._new_order(trader, symbol.name, "buy", qty, "market", None)
                events.append(OrderEvent(ts=ts, data=order.data))
                events.extend(self._execute(trader, order, qty, self.price(symbol.name), ts))
            messages.append(Publish(user_id=trader.user_id, events=events))
        return messages

    def step(self) -> list[Publish | Prices]:
        """Advance one ``step_s`` of simulated time; the messages of that step."""
        self._steps += 1
        self.now = self._t0 + self._steps * self.config.step_s
        ts = format_timestamp(self.now)
        messages: list[Publish | Prices] = []
        ticks = self._ticks(ts)
        if ticks:
            messages.append(Prices(prices=ticks))
        for trader in self._traders.values():
            events = self._trade(trader, ts)
            if events:
                messages.append(Publish(user_id=trader.user_id, events=events))
        return messages

    # -------------------------------------------------------------- prices

    def _ticks(self, ts: str) -> list[PriceTick]:
        rng = self._rng
        latest: dict[str, PriceTick] = {}
        for _ in range(self._poisson(self.config.tick_rate * self.config.step_s)):
            symbol = self._symbols[
                min(
                    len(self._symbols) - 1,
                    bisect.bisect_right(self._weights, rng.random() * self._weights[-1]),
                )
            ]
            dt_years = max(self.now - symbol.last_tick_at, self.config.step_s) * self.config.speed
            dt_years /= _SECONDS_PER_TRADING_YEAR
            symbol.last_tick_at = self.now
            shock = symbol.sigma * math.sqrt(dt_years) * rng.gauss(0.0, 1.0)
            symbol.price = max(0.01, symbol.price * math.exp(shock - 0.5 * symbol.sigma**2 * dt_years))
            latest[symbol.name] = PriceTick(symbol=symbol.name, price=self.price(symbol.name), ts=ts)
        return list(latest.values())

    def _poisson(self, mean: float) -> int:
        # Knuth's method: exact for the small means of one step.
        limit, count, product = math.exp(-mean), 0, self._rng.random()
        while product > limit:
            count += 1
            product *= self._rng.random()
        return count

    # -------------------------------------------------------------- orders

    def _trade(self, trader: _Trader, ts: str) -> list[Event]:
        rng = self._rng
        events: list[Event] = []
        if rng.random() < self.config.order_rate * self.config.step_s:
            events.extend(self._place(trader, ts))
        for order in list(trader.orders):
            events.extend(self._work(trader, order, ts))
        return events

    def _place(self, trader: _Trader, ts: str) -> list[Event]:
        rng = self._rng
        held = [s for s, q in trader.holdings.items() if q != 0]
        # Mostly new risk while there is room; mostly reductions once the account is nearly full.
        if held and rng.random() < 0.45 + 0.5 * self._utilisation(trader) ** 2:
            name = rng.choice(held)
            qty_held = trader.holdings[name]
            side = "sell" if qty_held > 0 else "buy"
            qty = Decimal(max(1, int(abs(qty_held) * Decimal(rng.choice(["0.25", "0.5", "1"])))))
        else:
            name = self._symbols[bisect.bisect_right(self._weights, rng.random() * self._weights[-1])].name
            side = "sell" if rng.random() < 0.15 else "buy"  # now and then, a short
            qty = Decimal(rng.randint(1, 40))
        price = self.price(name)
        if rng.random() < 0.5:
            kind, limit = "market", None
        else:
            offset = Decimal(str(round(rng.uniform(0.0005, 0.003), 4)))
            limit = (price * (1 - offset if side == "buy" else 1 + offset)).quantize(_CENT)
            kind = "limit"
        order = self._new_order(trader, name, side, qty, kind, limit)
        events: list[Event] = [OrderEvent(ts=ts, data=order.data)]
        cost = self._opening_cost(trader, [*trader.orders, order]) - self._opening_cost(trader, trader.orders)
        if cost > self.buying_power(trader.user_id):
            # Insufficient buying power: the broker refuses it before it reaches the market.
            order.data = self._order_update(order, "rejected", ts)
            events.append(OrderEvent(ts=ts, data=order.data))
        elif rng.random() < 0.03:
            order.data = self._order_update(order, "rejected", ts)
            events.append(OrderEvent(ts=ts, data=order.data))
        else:
            trader.orders.append(order)
        return events

    def _work(self, trader: _Trader, order: _Order, ts: str) -> list[Event]:
        rng = self._rng
        data = order.data
        if data.status == "new":
            order.data = self._order_update(order, "accepted", ts)
            return [OrderEvent(ts=ts, data=order.data)]
        market = self.price(data.symbol)
        if data.type == "limit":
            assert data.limit_price is not None
            crossed = market <= data.limit_price if data.side == "buy" else market >= data.limit_price
            if not crossed:
                if self.now >= order.expires_at:
                    trader.orders.remove(order)
                    order.data = self._order_update(order, "canceled", ts)
                    return [OrderEvent(ts=ts, data=order.data)]
                return []
            # At the limit or better, as an exchange fills it: never above the market for a buy.
            price = min(market, data.limit_price) if data.side == "buy" else max(market, data.limit_price)
        else:
            price = market
        if rng.random() > 0.6:
            return []  # executions arrive spread over a few steps
        if order.fills_left <= 1:
            qty = order.remaining
        else:
            qty = max(
                Decimal(1), (order.remaining * Decimal(rng.choice(["0.3", "0.5"]))).quantize(Decimal(1))
            )
        return self._execute(trader, order, qty, price, ts)

    def _new_order(
        self, trader: _Trader, symbol: str, side: str, qty: Decimal, kind: str, limit: Decimal | None
    ) -> _Order:
        order_id = f"sim-{trader.user_id}-{self._run}-{next(self._ids):06d}"
        ts = format_timestamp(self.now)
        data = Order(
            id=order_id, client_order_id=f"c-{order_id}", symbol=symbol, side=side,  # type: ignore[arg-type]
            type=kind, time_in_force="day", qty=qty, filled_qty=Decimal(0),  # type: ignore[arg-type]
            limit_price=limit, status="new", submitted_at=ts, updated_at=ts,
        )  # fmt: skip
        fills = 1 if kind == "market" and self._rng.random() < 0.6 else self._rng.randint(2, 3)
        expires = self.now + self._rng.uniform(20.0, 60.0)
        return _Order(data=data, user_id=trader.user_id, remaining=qty, fills_left=fills, expires_at=expires)

    def _execute(self, trader: _Trader, order: _Order, qty: Decimal, price: Decimal, ts: str) -> list[Event]:
        data = order.data
        qty = min(qty, order.remaining)
        order.remaining -= qty
        order.fills_left -= 1
        order.cost += qty * price
        filled = data.qty - order.remaining
        signed = qty if data.side == "buy" else -qty
        position_qty = trader.holdings.get(data.symbol, Decimal(0)) + signed
        trader.holdings[data.symbol] = position_qty
        trader.cash -= signed * price
        if position_qty == 0:
            del trader.holdings[data.symbol]
        done = order.remaining == 0
        if done and order in trader.orders:
            trader.orders.remove(order)
        fill = Fill(
            id=f"fill-{self._run}-{next(self._ids):08d}", order_id=data.id, symbol=data.symbol,
            side=data.side, qty=qty, price=price, position_qty=position_qty, timestamp=ts,
        )  # fmt: skip
        order.data = self._order_update(
            order,
            "filled" if done else "partially_filled",
            ts,
            filled_qty=filled,
            filled_avg_price=(order.cost / filled).quantize(Decimal("0.0001")),
            filled_at=ts if done else None,
        )
        return [FillEvent(ts=ts, data=fill), OrderEvent(ts=ts, data=order.data)]

    @staticmethod
    def _order_update(order: _Order, status: str, ts: str, **changes: object) -> Order:
        return msgspec.structs.replace(order.data, status=status, updated_at=ts, **changes)


def _base36(number: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        number, digit = divmod(number, 36)
        out = digits[digit] + out
        if not number:
            return out


async def run_simulator(
    simulator: MarketSimulator,
    ingest: Callable[[Publish | Prices], Awaitable[object]],
    *,
    clock: Callable[[], float],
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    held: Callable[[str], Awaitable[HeldBook | None]] | None = None,
) -> None:
    """Feed the simulator's messages to ``ingest`` in step with ``clock`` (wall seconds)."""
    books: dict[str, HeldBook | None] = {}
    if held is not None:
        for user_id in simulator.config.users:
            books[user_id] = await _read_book(held, user_id, sleep)
    for message in simulator.opening(books.get):
        await ingest(message)
    step = simulator.config.step_s
    while True:
        behind = clock() - simulator.now
        if behind < step:
            await sleep(step - behind)
            continue
        # Catch up after a stall, but never by more than a second's worth at once.
        for _ in range(min(int(behind / step), int(1 / step))):
            for message in simulator.step():
                await ingest(message)
        if clock() - simulator.now > 5:
            log.warning("event=sim_lagging behind_s=%.1f action=skip_ahead", clock() - simulator.now)
            simulator.skip_to(clock())


async def _read_book(
    held: Callable[[str], Awaitable[HeldBook | None]], user_id: str, sleep: Callable[[float], Awaitable[None]]
) -> HeldBook | None:
    """The user's book, waiting out a store that cannot answer: opening an account that exists
    would add a fresh account's cash to its positions."""
    delay = 0.1
    while True:
        try:
            return await held(user_id)
        except Exception as exc:
            log.warning("event=sim_book_unavailable user=%s reason=%r retry_s=%.1f", user_id, str(exc), delay)
            await sleep(delay)
            delay = min(delay * 2, 5.0)


def simulator_source(config: SimConfig, *, clock: Callable[[], float] = time.time) -> Source:
    """The server source: a market that opens when the server starts, on the wall clock."""

    async def run(port: SourcePort) -> None:
        await run_simulator(
            MarketSimulator(config, start_time=clock()), port.ingest, clock=clock, held=port.book
        )

    return run
