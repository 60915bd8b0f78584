"""The re-mark driver: how many user re-marks one core does, in process, with no sockets.

Issue 17's target for S2: the engine, the journal and batching (no sockets,
no compression) do at least 5,000 user re-marks of 10 positions a second on
one core. This drives exactly that path: N users each holding 10 of 100
symbols, every symbol ticked each round, then every stale holder re-marked
(``Ledger.remark``: derive the positions and the account, stamp and journal
them, deliver to one ``Batcher`` per user, as a connection's subscription
holds it). CPU time is the process's (``time.process_time``), so a shared
machine's other work does not count against it.

The baseline, in the same run: re-deriving the same positions without the
ledger (``PortfolioEngine.derive`` alone), so the figure shows what the
journal, delivery and batching add to the arithmetic.

Run: ``.venv/bin/python bench/bench_remark.py [--quick] [--users N] [--profile]``.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import random
import sys
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "server")]

from alphaflow_live.protocol import CHANNELS, Account, AccountEvent, Fill, FillEvent, PriceTick  # noqa: E402
from alphaflow_server.batcher import Batcher  # noqa: E402
from alphaflow_server.bus import EventBus  # noqa: E402
from alphaflow_server.engine import PortfolioEngine  # noqa: E402
from alphaflow_server.ledger import Ledger  # noqa: E402
from alphaflow_server.store import MemoryStore  # noqa: E402

TS = "2026-12-01T14:30:00.000Z"
SYMBOLS = [f"S{i:03d}" for i in range(100)]
HELD = 10


def build(users: int, seed: int = 7) -> tuple[Ledger, list[Batcher]]:
    rng = random.Random(seed)
    engine = PortfolioEngine()
    epochs = iter(range(10**9))
    bus = EventBus(new_epoch=lambda: f"e-{next(epochs)}")
    ledger = Ledger(bus, engine, MemoryStore(), remark_interval_s=0.0)
    batchers: list[Batcher] = []
    now = 0.0
    ledger.prices([PriceTick(symbol=s, price=Decimal("100.00"), ts=TS) for s in SYMBOLS], now)
    for u in range(users):
        user = f"u{u:05d}"
        cash = Decimal("100000.00")
        opening = AccountEvent(
            ts=TS,
            data=Account(
                equity=cash, last_equity=cash, cash=cash, buying_power=cash * 2, portfolio_value=cash,
                long_market_value=Decimal(0), short_market_value=Decimal(0), realized_pl_today=Decimal(0),
                updated_at=TS,
            ),
        )  # fmt: skip
        fills = [
            FillEvent(
                ts=TS,
                data=Fill(
                    id=f"{user}-{s}",
                    order_id=f"o-{user}-{s}",
                    symbol=s,
                    side="buy",
                    qty=Decimal(rng.randint(1, 50)),
                    price=Decimal("100.00"),
                    position_qty=Decimal(0),
                    timestamp=TS,
                ),
            )
            for s in rng.sample(SYMBOLS, HELD)
        ]
        ledger.publish(user, [opening, *fills], now)
        batcher = Batcher(window_s=0.25, channels=CHANNELS, cursor=bus.user(user).seq)
        bus.subscribe(user, lambda events, encoded, at, b=batcher: b.add(events, at, encoded))
        batchers.append(batcher)
    ledger.remark(now, everyone=True)
    return ledger, batchers


def run(users: int, seconds: float, *, profile: bool = False) -> dict[str, Any]:
    ledger, batchers = build(users)
    engine = ledger.engine
    rng = random.Random(11)
    prices = dict.fromkeys(SYMBOLS, 100.0)
    now, rounds, remarked = 1.0, 0, 0
    profiler = cProfile.Profile() if profile else None
    started = time.process_time()
    if profiler:
        profiler.enable()
    while time.process_time() - started < seconds:
        for s in SYMBOLS:
            prices[s] *= 1 + rng.uniform(-0.001, 0.001)
        ticks = [PriceTick(symbol=s, price=Decimal(f"{p:.2f}"), ts=TS) for s, p in prices.items()]
        ledger.prices(ticks, now)
        remarked += len(ledger.schedule)
        ledger.remark(now, everyone=True)
        for batcher in batchers:
            batcher.take(now, force=True)
        now += 0.25
        rounds += 1
    elapsed = time.process_time() - started
    if profiler:
        profiler.disable()
    # Baseline: the same marks derived by the engine alone, no journal, no delivery.
    stale = {f"u{u:05d}": dict.fromkeys(engine.books[f"u{u:05d}"].holdings, TS) for u in range(users)}
    base_started, base_rounds = time.process_time(), 0
    while time.process_time() - base_started < seconds / 2:
        engine.derive(stale)
        base_rounds += 1
    base_elapsed = time.process_time() - base_started
    report = {
        "users": users,
        "rounds": rounds,
        "remarks_per_cpu_s": remarked / elapsed,
        "derive_only_remarks_per_cpu_s": users * base_rounds / base_elapsed,
    }
    if profiler:
        stats = pstats.Stats(profiler)
        stats.sort_stats("cumulative").print_stats(25)
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--users", type=int, default=None)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    users = args.users or (100 if args.quick else 1000)
    report = run(users, 1.0 if args.quick else 10.0, profile=args.profile)
    print(
        f"re-mark driver, {users} users x {HELD} positions: {report['remarks_per_cpu_s']:,.0f} user re-marks "
        f"per CPU s (engine, journal, batching); baseline derive only: "
        f"{report['derive_only_remarks_per_cpu_s']:,.0f}"
    )
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
