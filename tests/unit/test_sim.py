"""The market simulator core: deterministic, valid messages, realistic order lifecycles, buying power."""

from __future__ import annotations

from collections import defaultdict
from decimal import Decimal

from alphaflow_live.protocol import (
    TERMINAL_ORDER_STATUSES,
    AccountEvent,
    FillEvent,
    Order,
    OrderEvent,
    Prices,
    Publish,
    decode_ingest_message,
    encode,
    format_timestamp,
)
from alphaflow_server.engine import PortfolioEngine
from alphaflow_server.sources.port import HeldBook
from alphaflow_server.sources.sim import MarketSimulator, SimConfig

START = 1_767_535_391.12  # 2026-01-04T14:03:11.120Z


def run(config: SimConfig, steps: int) -> list[Publish | Prices]:
    sim = MarketSimulator(config, start_time=START)
    messages = sim.opening()
    for _ in range(steps):
        messages += sim.step()
    return messages


def test_the_same_seed_gives_the_same_market() -> None:
    first = [encode(m) for m in run(SimConfig(seed=11), 600)]
    second = [encode(m) for m in run(SimConfig(seed=11), 600)]

    assert first == second


def test_another_seed_gives_another_market() -> None:
    assert [encode(m) for m in run(SimConfig(seed=1), 200)] != [
        encode(m) for m in run(SimConfig(seed=2), 200)
    ]


def test_every_message_passes_the_ingest_validation() -> None:
    for message in run(SimConfig(users=("demo", "sim-0001")), 2000):
        assert decode_ingest_message(encode(message)) == message


def test_the_tick_rate_is_about_what_was_asked() -> None:
    config = SimConfig(tick_rate=40.0, step_s=0.05)
    messages = run(config, 2000)  # 100 simulated seconds

    ticks = sum(len(m.prices) for m in messages[1:] if isinstance(m, Prices))

    # Several ticks of one symbol in one step count once; so a little under 4,000.
    assert 3000 < ticks < 4400, ticks


def test_orders_move_through_the_lifecycle_in_order() -> None:
    messages = run(SimConfig(users=("demo", "sim-0001"), order_rate=1.0), 6000)
    statuses: dict[str, list[str]] = defaultdict(list)
    fills: dict[str, Decimal] = defaultdict(Decimal)
    for message in messages:
        for event in message.events if isinstance(message, Publish) else []:
            if isinstance(event, OrderEvent):
                statuses[event.data.id].append(event.data.status)
                assert event.data.filled_qty <= event.data.qty
            elif isinstance(event, FillEvent):
                fills[event.data.order_id] += event.data.qty

    seen = {s for history in statuses.values() for s in history}
    assert {"new", "accepted", "partially_filled", "filled", "canceled", "rejected"} <= seen
    rank = {"new": 0, "accepted": 1, "partially_filled": 2, "filled": 3, "canceled": 3, "rejected": 3}
    for order_id, history in statuses.items():
        assert history[0] == "new", (order_id, history)
        assert [rank[s] for s in history] == sorted(rank[s] for s in history), (order_id, history)
        assert history.count("filled") + history.count("canceled") + history.count("rejected") <= 1
    assert set(fills) <= set(statuses), "every fill belongs to an order"


def test_fills_report_the_position_they_leave() -> None:
    positions: dict[tuple[str, str], Decimal] = defaultdict(Decimal)
    for message in run(SimConfig(users=("demo",), order_rate=1.0), 4000):
        for event in message.events if isinstance(message, Publish) else []:
            if isinstance(event, FillEvent):
                key = (message.user_id, event.data.symbol)
                positions[key] += event.data.qty if event.data.side == "buy" else -event.data.qty
                assert event.data.position_qty == positions[key]


def test_prices_stay_positive_and_on_the_cent() -> None:
    for message in run(SimConfig(speed=5000.0), 3000):
        if isinstance(message, Prices):
            for tick in message.prices:
                assert tick.price > 0
                assert tick.price == tick.price.quantize(Decimal("0.01"))


def test_a_restarted_simulator_never_reuses_its_predecessors_fill_or_order_ids() -> None:
    def ids(start: float) -> set[str]:
        simulator = MarketSimulator(SimConfig(seed=3, users=("demo",), order_rate=50.0), start_time=start)
        found: set[str] = set()
        for message in [*simulator.opening(), *(m for _ in range(400) for m in simulator.step())]:
            if isinstance(message, Publish):
                found |= {e.data.id for e in message.events if isinstance(e, FillEvent | OrderEvent)}
        return found

    first, second = ids(1_767_000_000.0), ids(1_767_000_060.0)

    assert first and second, "the runs traded"
    assert first.isdisjoint(second), "fill ids are idempotency keys: a reused one would be dropped"
    assert ids(1_767_000_000.0) == first, "the same start and seed give the same ids"


class Ledger:
    """One user's account as the messages tell it: cash, positions, marks and open orders.

    It states the broker's rule on its own: buying power is ``2 × equity − gross
    exposure`` (the engine's Reg-T estimate) less what open orders would open
    beyond flat, at their limit price or the mark.
    """

    def __init__(self, user_id: str) -> None:
        self.user_id = user_id
        self.cash = Decimal(0)
        self.qty: dict[str, Decimal] = defaultdict(Decimal)
        self.marks: dict[str, Decimal] = {}
        self.open: dict[str, Order] = {}

    @property
    def equity(self) -> Decimal:
        return self.cash + sum((q * self.marks[s] for s, q in self.qty.items()), Decimal(0))

    @property
    def gross(self) -> Decimal:
        return sum((abs(q * self.marks[s]) for s, q in self.qty.items()), Decimal(0))

    def opening_cost(self, orders: list[Order]) -> Decimal:
        projected = dict(self.qty)
        cost = Decimal(0)
        for order in orders:
            held = projected.get(order.symbol, Decimal(0))
            change = (order.qty - order.filled_qty) * (1 if order.side == "buy" else -1)
            after = held + change
            # Beyond flat: all of it when adding to (or opening) a position, the part past zero on a flip.
            opening = abs(change) if held * change >= 0 else max(Decimal(0), abs(after) * (after * held < 0))
            cost += opening * (order.limit_price or self.marks[order.symbol])
            projected[order.symbol] = after
        return cost

    def buying_power(self) -> Decimal:
        headroom = max(Decimal(0), 2 * self.equity - self.gross)
        return max(Decimal(0), headroom - self.opening_cost(list(self.open.values())))

    def apply(self, message: Publish | Prices) -> list[tuple[Order, Decimal, Decimal]]:
        """Take in one message; for each order placed in it: (order, what it opens, buying power then)."""
        placed: list[tuple[Order, Decimal, Decimal]] = []
        if isinstance(message, Prices):
            self.marks.update((t.symbol, t.price) for t in message.prices)
            return placed
        if message.user_id != self.user_id:
            return placed
        for event in message.events:
            if isinstance(event, AccountEvent):
                self.cash = event.data.cash
            elif isinstance(event, FillEvent):
                signed = event.data.qty if event.data.side == "buy" else -event.data.qty
                self.cash -= signed * event.data.price
                self.qty[event.data.symbol] += signed
                if not self.qty[event.data.symbol]:
                    del self.qty[event.data.symbol]
            elif isinstance(event, OrderEvent):
                order = event.data
                if order.status == "new":
                    opens = self.opening_cost([*self.open.values(), order]) - self.opening_cost(
                        list(self.open.values())
                    )
                    placed.append((order, opens, self.buying_power()))
                    self.open[order.id] = order
                elif order.status in TERMINAL_ORDER_STATUSES:
                    self.open.pop(order.id, None)
                else:
                    self.open[order.id] = order
        return placed


TRADING_DAY_S = 6.5 * 3600


def test_a_whole_trading_day_keeps_the_account_plausible() -> None:
    # The default order rate over a whole session, in 1 s steps so that it runs in a few seconds.
    config = SimConfig(seed=7, step_s=1.0)
    simulator = MarketSimulator(config, start_time=START)
    ledger = Ledger("demo")
    for message in simulator.opening():
        ledger.apply(message)
    initial = config.initial_cash
    placed: list[tuple[Order, Decimal, Decimal]] = []
    statuses: dict[str, str] = {}
    worst: dict[str, float] = {"min_equity": 1e12, "max_equity": 0.0, "min_cash": 1e12, "max_leverage": 0.0}

    for _ in range(int(TRADING_DAY_S / config.step_s)):
        for message in simulator.step():
            placed += ledger.apply(message)
            for event in message.events if isinstance(message, Publish) else []:
                if isinstance(event, OrderEvent):
                    statuses[event.data.id] = event.data.status
        equity = ledger.equity
        worst["min_equity"] = min(worst["min_equity"], float(equity))
        worst["max_equity"] = max(worst["max_equity"], float(equity))
        worst["min_cash"] = min(worst["min_cash"], float(ledger.cash / equity))
        worst["max_leverage"] = max(worst["max_leverage"], float(ledger.gross / equity))

    assert len(placed) > 6000, f"expected a day's orders at 0.3/s (about 7,000), got {len(placed)}"
    over = [order.id for order, opens, power in placed if opens > power]
    assert over, "expected some orders beyond the buying power in a day"
    assert all(statuses[order_id] == "rejected" for order_id in over)
    assert 0.7 * float(initial) < worst["min_equity"] and worst["max_equity"] < 1.5 * float(initial), worst
    # Reg-T: gross exposure within twice the equity (prices may move it a little past once held), so the
    # margin loan (negative cash) never exceeds the equity.
    assert worst["max_leverage"] < 2.05, worst
    assert worst["min_cash"] > -1.0, worst
    assert simulator.buying_power("demo") == ledger.buying_power()


def test_an_order_beyond_the_buying_power_is_rejected_and_never_fills() -> None:
    # A small account trading fast: many orders cost more than it may open.
    config = SimConfig(seed=5, initial_cash=Decimal(20_000), order_rate=2.0, step_s=0.5)
    simulator = MarketSimulator(config, start_time=START)
    ledger = Ledger("demo")
    statuses: dict[str, str] = {}
    filled: set[str] = set()
    verdicts: list[tuple[Order, bool]] = []
    for message in [*simulator.opening(), *(m for _ in range(7200) for m in simulator.step())]:
        verdicts += [(order, opens > power) for order, opens, power in ledger.apply(message)]
        for event in message.events if isinstance(message, Publish) else []:
            if isinstance(event, OrderEvent):
                statuses[event.data.id] = event.data.status
            elif isinstance(event, FillEvent):
                filled.add(event.data.order_id)

    over = [order for order, exceeds in verdicts if exceeds]
    within = [order for order, exceeds in verdicts if not exceeds]
    assert len(over) >= 50, (
        f"expected many orders beyond the buying power, got {len(over)} of {len(verdicts)}"
    )
    wrongly_taken = [(o.id, statuses[o.id]) for o in over if statuses[o.id] != "rejected" or o.id in filled]
    assert not wrongly_taken, f"orders beyond the buying power must be rejected, not {wrongly_taken[:5]}"
    rejected_within = sum(statuses[o.id] == "rejected" for o in within)
    # Orders it can afford are rejected only now and then (3%: a broker's other reasons).
    assert rejected_within < 0.06 * len(within), (rejected_within, len(within))
    assert sum(o.id in filled for o in within) > 0.5 * len(within)


def test_the_buying_power_is_the_engines_less_what_open_orders_would_open() -> None:
    config = SimConfig(seed=9, order_rate=2.0)
    simulator = MarketSimulator(config, start_time=START)
    engine = PortfolioEngine()
    ledger = Ledger("demo")
    for message in [*simulator.opening(), *(m for _ in range(4000) for m in simulator.step())]:
        ledger.apply(message)
        if isinstance(message, Prices):
            engine.mark(message.prices)
        else:
            engine.process(message.user_id, message.events)

    account = engine.account("demo", format_timestamp(simulator.now))
    open_cost = ledger.opening_cost(list(ledger.open.values()))
    assert ledger.open, "some orders are still open, so the reservation shows"
    assert account.cash == ledger.cash and account.equity == ledger.equity
    assert simulator.buying_power("demo") == max(Decimal(0), account.buying_power - open_cost)


def test_a_user_whose_book_survived_carries_on_without_a_new_opening() -> None:
    held = HeldBook(cash=Decimal("20000"), positions={"AAPL": Decimal("10"), "NOT-SIMULATED": Decimal("3")})
    simulator = MarketSimulator(SimConfig(seed=3), start_time=START)

    messages = simulator.opening(lambda user_id: held if user_id == "demo" else None)

    assert [m for m in messages if isinstance(m, Publish) and m.user_id == "demo"] == []
    assert isinstance(messages[0], Prices), "the opening prices go out all the same"
    # Its buying power is the kept book's: 2 x equity less gross exposure, as the engine has it.
    equity = Decimal("20000") + 10 * simulator.price("AAPL")
    assert simulator.buying_power("demo") == 2 * equity - 10 * simulator.price("AAPL")
