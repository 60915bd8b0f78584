"""The market simulator core: deterministic, valid messages, realistic order lifecycles."""

from __future__ import annotations

from collections import defaultdict
from decimal import Decimal

from alphaflow_live.protocol import (
    FillEvent,
    OrderEvent,
    Prices,
    Publish,
    decode_ingest_message,
    encode,
)
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
