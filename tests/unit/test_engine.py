"""PortfolioEngine: fills and prices in, position and account events out.

Hand-computed examples pin every emitted field as an exact decimal string;
property tests replay random fills and ticks against an independent model
in exact rational arithmetic (``fractions.Fraction``).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from fractions import Fraction
from typing import Any

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from alphaflow_live.protocol import (
    Account,
    AccountEvent,
    Event,
    FillEvent,
    OrderEvent,
    Position,
    PositionClosedEvent,
    PositionEvent,
    PriceTick,
    encode,
)
from alphaflow_server.engine import BookRecord, PortfolioEngine

from .factories import D, account, fill, order, position, position_closed, tick, ts

PROPERTY = settings(max_examples=200, deadline=None)

MONEY_FIELDS = {
    Position: (
        "market_value",
        "cost_basis",
        "unrealized_pl",
        "unrealized_intraday_pl",
    ),
    Account: (
        "equity",
        "last_equity",
        "cash",
        "buying_power",
        "portfolio_value",
        "long_market_value",
        "short_market_value",
        "realized_pl_today",
    ),
}
PRICE_FIELDS = {
    Position: ("avg_entry_price", "current_price", "unrealized_plpc", "change_today"),
    Account: (),
}


def strings(obj: Any) -> dict[str, Any]:
    """A struct's fields, decimals as their exact strings (so the scale is checked too)."""
    return {k: str(v) if isinstance(v, Decimal) else v for k, v in msgspec.structs.asdict(obj).items()}


def expected_position(symbol: str, at: str, **values: str) -> dict[str, Any]:
    return {"symbol": symbol, "asset_class": "us_equity", "updated_at": at, **values}


def expected_account(at: str, **values: str) -> dict[str, Any]:
    return {"currency": "USD", "updated_at": at, **values}


def funded(cash: str = "100000.00", user_id: str = "alice") -> PortfolioEngine:
    """An engine whose user starts with ``cash`` (and the same last equity), no positions."""
    engine = PortfolioEngine()
    engine.process(user_id, [account(cash, at=ts(0))])
    return engine


# ------------------------------------------------------------ hand-computed examples


def test_two_buys_give_the_weighted_average_entry_and_mark_at_the_first_trade_price() -> None:
    engine = funded()
    first, second = fill(qty="10", price="187.20", at=ts(1)), fill(qty="5", price="190.00", at=ts(2))

    out = engine.process("alice", [first, second])

    assert [type(e) for e in out] == [FillEvent, PositionEvent, FillEvent, PositionEvent, AccountEvent]
    assert out[0] is first and out[2] is second
    assert strings(out[1].data) == expected_position(
        "AAPL", ts(1), qty="10", side="long",
        avg_entry_price="187.200000", current_price="187.200000",
        market_value="1872.0000", cost_basis="1872.0000",
        unrealized_pl="0.0000", unrealized_plpc="0.000000",
        unrealized_intraday_pl="0.0000", change_today="0.000000",
    )  # fmt: skip
    # avg = (10 × 187.20 + 5 × 190.00) / 15 = 2822 / 15 = 188.1333…; the mark stays the
    # symbol's first trade price (a user's own fill does not move the shared mark).
    assert strings(out[3].data) == expected_position(
        "AAPL", ts(2), qty="15", side="long",
        avg_entry_price="188.133333", current_price="187.200000",
        market_value="2808.0000", cost_basis="2822.0000",
        unrealized_pl="-14.0000", unrealized_plpc="-0.004961",  # -14 / 2822
        unrealized_intraday_pl="-14.0000", change_today="0.000000",
    )  # fmt: skip
    assert strings(out[4].data) == expected_account(
        ts(2),
        equity="99986.0000", last_equity="100000.0000", cash="97178.0000",
        buying_power="197164.0000",  # 2 × 99986 − 2808
        portfolio_value="99986.0000", long_market_value="2808.0000", short_market_value="0.0000",
        realized_pl_today="0.0000",
    )  # fmt: skip


def test_a_price_tick_remarks_the_position_and_the_account() -> None:
    engine = funded()
    engine.process(
        "alice", [fill(qty="10", price="187.20", at=ts(1)), fill(qty="5", price="190.00", at=ts(2))]
    )

    result = engine.apply_prices([tick("AAPL", "191.00", ts(3))])

    assert list(result) == ["alice"]
    pos, acct = result["alice"]
    assert isinstance(pos, PositionEvent) and isinstance(acct, AccountEvent)
    assert pos.ts == acct.ts == ts(3)
    assert strings(pos.data) == expected_position(
        "AAPL", ts(3), qty="15", side="long",
        avg_entry_price="188.133333", current_price="191.000000",
        market_value="2865.0000", cost_basis="2822.0000",
        unrealized_pl="43.0000", unrealized_plpc="0.015237",  # 43 / 2822
        unrealized_intraday_pl="43.0000",
        change_today="0.020299",  # (191 − 187.20) / 187.20, the day's first price
    )  # fmt: skip
    assert strings(acct.data) == expected_account(
        ts(3),
        equity="100043.0000", last_equity="100000.0000", cash="97178.0000",
        buying_power="197221.0000",  # 2 × 100043 − 2865
        portfolio_value="100043.0000", long_market_value="2865.0000", short_market_value="0.0000",
        realized_pl_today="0.0000",
    )  # fmt: skip


def test_marks_wait_for_remark_which_sends_each_symbol_once_at_its_last_price_and_ts() -> None:
    engine = funded()
    engine.process("alice", [fill(symbol="AAPL", qty="10", price="187.20", at=ts(1))])
    engine.process("alice", [fill(symbol="TSLA", qty="2", price="250.00", at=ts(1))])

    newly = engine.mark([tick("AAPL", "190.00", ts(2)), tick("TSLA", "251.00", ts(3))])
    again = engine.mark([tick("AAPL", "191.00", ts(4))])
    out = engine.remark()

    assert newly == ["alice"] and again == [], "a user is newly stale once until re-marked"
    events = out["alice"]
    assert [(type(e).__name__, e.ts) for e in events] == [
        ("PositionEvent", ts(3)),
        ("PositionEvent", ts(4)),
        ("AccountEvent", ts(4)),
    ], "one position per symbol, in the order of their last marks, then the account"
    assert [str(e.data.current_price) for e in events[:2]] == ["251.000000", "191.000000"]
    assert engine.remark() == {}, "nothing is stale after a re-mark"


def test_a_fill_sends_the_users_stale_positions_first_so_the_account_matches_them() -> None:
    engine = funded()
    engine.process("alice", [fill(symbol="AAPL", qty="10", price="187.20", at=ts(1))])
    engine.process("alice", [fill(symbol="TSLA", qty="2", price="250.00", at=ts(1))])
    engine.mark([tick("TSLA", "240.00", ts(2))])

    out = engine.process("alice", [fill(symbol="AAPL", qty="1", price="188.00", at=ts(3))])

    assert [type(e).__name__ for e in out] == ["PositionEvent", "FillEvent", "PositionEvent", "AccountEvent"]
    assert (out[0].data.symbol, str(out[0].data.current_price), out[0].ts) == ("TSLA", "240.000000", ts(2))
    assert engine.remark() == {}, "the fill took the stale marks"


def test_stale_marks_taken_but_not_committed_come_back_without_overriding_newer_ones() -> None:
    engine = funded()
    engine.process("alice", [fill(symbol="AAPL", qty="10", price="187.20", at=ts(1))])
    engine.process("alice", [fill(symbol="TSLA", qty="2", price="250.00", at=ts(1))])
    engine.mark([tick("AAPL", "190.00", ts(2)), tick("TSLA", "251.00", ts(2))])
    taken = engine.take_stale(["alice"])
    engine.mark([tick("AAPL", "192.00", ts(3))])

    engine.return_stale(taken)
    out = engine.remark()["alice"]

    assert [(e.data.symbol, e.ts) for e in out[:-1]] == [("TSLA", ts(2)), ("AAPL", ts(3))]
    assert str(out[1].data.current_price) == "192.000000"


def test_a_symbol_closed_while_stale_is_not_re_marked() -> None:
    engine = funded()
    engine.process("alice", [fill(symbol="AAPL", qty="10", price="187.20", at=ts(1))])
    engine.process("alice", [fill(symbol="TSLA", qty="2", price="250.00", at=ts(1))])
    engine.mark([tick("AAPL", "190.00", ts(2))])
    taken = engine.take_stale()
    engine.process("alice", [fill(symbol="AAPL", side="sell", qty="10", price="190.00", at=ts(3))])

    engine.return_stale(taken)

    assert engine.remark() == {}


def test_a_reduction_keeps_the_average_entry_and_realizes_the_closed_part() -> None:
    engine = funded()
    engine.process(
        "alice", [fill(qty="10", price="187.20", at=ts(1)), fill(qty="5", price="190.00", at=ts(2))]
    )
    engine.apply_prices([tick("AAPL", "191.00", ts(3))])

    out = engine.process("alice", [fill(side="sell", qty="6", price="192.50", at=ts(4))])

    assert [type(e) for e in out] == [FillEvent, PositionEvent, AccountEvent]
    # realized = 6 × (192.50 − 2822/15) = 1155 − 1128.8 = 26.2
    assert strings(out[1].data) == expected_position(
        "AAPL", ts(4), qty="9", side="long",
        avg_entry_price="188.133333", current_price="191.000000",
        market_value="1719.0000", cost_basis="1693.2000",
        unrealized_pl="25.8000", unrealized_plpc="0.015237",
        unrealized_intraday_pl="25.8000", change_today="0.020299",
    )  # fmt: skip
    assert strings(out[2].data) == expected_account(
        ts(4),
        equity="100052.0000", last_equity="100000.0000", cash="98333.0000",
        buying_power="198385.0000",  # 2 × 100052 − 1719
        portfolio_value="100052.0000", long_market_value="1719.0000", short_market_value="0.0000",
        realized_pl_today="26.2000",
    )  # fmt: skip


def test_a_short_from_flat_has_negative_qty_value_and_cost_and_credits_cash() -> None:
    engine = PortfolioEngine()

    out = engine.process("bob", [fill(symbol="TSLA", side="sell", qty="10", price="250", at=ts(1))])

    assert [type(e) for e in out] == [FillEvent, PositionEvent, AccountEvent]
    assert strings(out[1].data) == expected_position(
        "TSLA", ts(1), qty="-10", side="short",
        avg_entry_price="250.000000", current_price="250.000000",
        market_value="-2500.0000", cost_basis="-2500.0000",
        unrealized_pl="0.0000", unrealized_plpc="0.000000",
        unrealized_intraday_pl="0.0000", change_today="0.000000",
    )  # fmt: skip
    assert strings(out[2].data) == expected_account(
        ts(1),
        equity="0.0000", last_equity="0.0000", cash="2500.0000", buying_power="0.0000",
        portfolio_value="0.0000", long_market_value="0.0000", short_market_value="-2500.0000",
        realized_pl_today="0.0000",
    )  # fmt: skip


def test_a_short_gains_when_the_price_falls() -> None:
    engine = PortfolioEngine()
    engine.process("bob", [fill(symbol="TSLA", side="sell", qty="10", price="250", at=ts(1))])

    result = engine.apply_prices([tick("TSLA", "240", ts(2))])

    pos, acct = result["bob"]
    assert strings(pos.data) == expected_position(
        "TSLA", ts(2), qty="-10", side="short",
        avg_entry_price="250.000000", current_price="240.000000",
        market_value="-2400.0000", cost_basis="-2500.0000",
        unrealized_pl="100.0000", unrealized_plpc="0.040000",  # 100 / |−2500|
        unrealized_intraday_pl="100.0000", change_today="-0.040000",
    )  # fmt: skip
    # equity = cash + long + short = 2500 + 0 − 2400
    assert strings(acct.data) == expected_account(
        ts(2),
        equity="100.0000", last_equity="0.0000", cash="2500.0000", buying_power="0.0000",
        portfolio_value="100.0000", long_market_value="0.0000", short_market_value="-2400.0000",
        realized_pl_today="0.0000",
    )  # fmt: skip


def test_a_fill_through_zero_realizes_the_old_side_and_resets_the_entry_to_the_fill_price() -> None:
    engine = PortfolioEngine()
    engine.process("alice", [fill(symbol="MSFT", qty="10", price="100", at=ts(1))])

    out = engine.process("alice", [fill(symbol="MSFT", side="sell", qty="15", price="110", at=ts(2))])

    assert [type(e) for e in out] == [FillEvent, PositionEvent, AccountEvent]
    # The mark is still MSFT's first trade price, 100.
    assert strings(out[1].data) == expected_position(
        "MSFT", ts(2), qty="-5", side="short",
        avg_entry_price="110.000000", current_price="100.000000",
        market_value="-500.0000", cost_basis="-550.0000",
        unrealized_pl="50.0000", unrealized_plpc="0.090909",  # 50 / 550
        unrealized_intraday_pl="50.0000", change_today="0.000000",
    )  # fmt: skip
    # cash = −1000 + 1650; realized = 10 × (110 − 100)
    assert strings(out[2].data) == expected_account(
        ts(2),
        equity="150.0000", last_equity="0.0000", cash="650.0000", buying_power="0.0000",
        portfolio_value="150.0000", long_market_value="0.0000", short_market_value="-500.0000",
        realized_pl_today="100.0000",
    )  # fmt: skip


def test_closing_to_exactly_zero_emits_position_closed_and_removes_the_holding() -> None:
    engine = PortfolioEngine()
    engine.process(
        "alice", [fill(qty="10", price="187.20", at=ts(1)), fill(symbol="MSFT", qty="1", at=ts(1))]
    )

    closing = fill(side="sell", qty="10", price="190.00", at=ts(2))
    out = engine.process("alice", [closing])

    assert [type(e) for e in out] == [FillEvent, PositionClosedEvent, AccountEvent]
    assert out[1].data.symbol == "AAPL" and out[1].ts == ts(2)
    assert "AAPL" not in engine.books["alice"].holdings
    assert engine.apply_prices([tick("AAPL", "200.00", ts(3))]) == {}
    # The account follows: MSFT (1 × 187.20 bought and marked at its own first price) remains.
    assert strings(out[2].data) == expected_account(
        ts(2),
        equity="28.0000", last_equity="0.0000", cash="-159.2000",  # −1872 − 187.20 + 1900
        buying_power="0.0000",  # max(0, 2 × 28 − 187.20)
        portfolio_value="28.0000", long_market_value="187.2000", short_market_value="0.0000",
        realized_pl_today="28.0000",  # 10 × (190 − 187.20)
    )  # fmt: skip


def test_derived_events_of_a_fill_carry_that_fills_ts() -> None:
    engine = PortfolioEngine()
    events = [
        fill(qty="10", at=ts(10)),
        fill(symbol="MSFT", qty="3", price="300.00", at=ts(20)),
        fill(side="sell", qty="10", at=ts(30)),
    ]

    out = engine.process("alice", events)

    fill_pos, msft_pos, closed, acct = out[1], out[3], out[5], out[6]
    assert isinstance(fill_pos, PositionEvent) and fill_pos.ts == fill_pos.data.updated_at == ts(10)
    assert isinstance(msft_pos, PositionEvent) and msft_pos.ts == msft_pos.data.updated_at == ts(20)
    assert isinstance(closed, PositionClosedEvent) and closed.ts == ts(30)
    assert isinstance(acct, AccountEvent) and acct.ts == acct.data.updated_at == ts(30)


def test_derived_events_of_a_tick_carry_that_ticks_ts() -> None:
    engine = PortfolioEngine()
    engine.process("alice", [fill(qty="10", at=ts(1)), fill(symbol="MSFT", qty="3", at=ts(1))])

    result = engine.apply_prices(
        [tick("AAPL", "190.00", ts(10)), tick("MSFT", "301.00", ts(20)), tick("AAPL", "191.00", ts(30))]
    )

    *positions, acct = result["alice"]
    by_symbol = {p.data.symbol: p for p in positions if isinstance(p, PositionEvent)}
    aapl, msft = by_symbol["AAPL"], by_symbol["MSFT"]
    assert len(positions) == 2
    assert aapl.ts == aapl.data.updated_at == ts(30)  # the symbol's latest tick
    assert aapl.data.current_price == D("191.000000")
    assert isinstance(msft, PositionEvent) and msft.ts == msft.data.updated_at == ts(20)
    assert isinstance(acct, AccountEvent) and acct.ts == acct.data.updated_at == ts(30)


def test_the_account_of_ticks_with_mixed_ts_precision_carries_the_latest_ts() -> None:
    engine = PortfolioEngine()
    engine.process("alice", [fill(qty="10", at=ts(1)), fill(symbol="MSFT", qty="3", at=ts(1))])

    result = engine.apply_prices(
        [
            tick("AAPL", "190.00", "2026-01-04T14:03:11.120Z"),
            tick("MSFT", "301.00", "2026-01-04T14:03:11.1205Z"),
        ]
    )

    assert result["alice"][-1].ts == "2026-01-04T14:03:11.1205Z"


def test_process_emits_each_fill_then_its_position_and_one_account_at_the_end() -> None:
    engine = PortfolioEngine()
    engine.process("alice", [fill(symbol="MSFT", qty="4", at=ts(0))])
    new_order = order("o-9", "new", at=ts(2))
    events: list[Event] = [
        fill(qty="10", at=ts(1)),
        new_order,
        fill(symbol="MSFT", side="sell", qty="4", at=ts(3)),
        fill(symbol="TSLA", side="sell", qty="2", price="250.00", at=ts(4)),
    ]

    out = engine.process("alice", events)

    assert [type(e) for e in out] == [
        FillEvent, PositionEvent, OrderEvent, FillEvent, PositionClosedEvent,
        FillEvent, PositionEvent, AccountEvent,
    ]  # fmt: skip
    assert [e for e in out if not isinstance(e, PositionEvent | PositionClosedEvent | AccountEvent)] == events
    assert out[2] is new_order
    assert out[-1].ts == ts(4)


def test_process_of_orders_alone_emits_no_account() -> None:
    engine = PortfolioEngine()
    events: list[Event] = [order("o-1", "new", at=ts(1)), order("o-1", "canceled", at=ts(2))]

    assert engine.process("alice", events) == events


def test_a_published_position_passes_through_and_overwrites_qty_and_average() -> None:
    engine = PortfolioEngine()
    engine.process("alice", [fill(qty="7", price="150.00", at=ts(0))])
    published = position("AAPL", "10", "187.20", at=ts(1))

    out = engine.process("alice", [published])

    assert out[0] is published
    assert isinstance(out[1], AccountEvent) and out[1].ts == ts(1)
    holding = engine.books["alice"].holdings["AAPL"]
    assert (holding.qty, holding.avg_entry_price, holding.current_price) == (
        D("10"),
        D("187.20"),
        D("187.20"),
    )
    # The next fill builds on the published position: (10 × 187.20 + 5 × 190) / 15.
    after = engine.process("alice", [fill(qty="5", price="190.00", at=ts(2))])
    assert after[1].data.avg_entry_price == D("188.133333")
    assert after[1].data.qty == D("15")


def test_a_published_account_passes_through_and_overwrites_cash_with_no_computed_account() -> None:
    engine = PortfolioEngine()
    engine.process("alice", [fill(qty="10", price="187.20", at=ts(0))])
    published = account("50000.00", "51872.00", at=ts(1))

    out = engine.process("alice", [published])

    assert out == [published] and out[0] is published
    book = engine.books["alice"]
    assert (book.cash, book.last_equity) == (D("50000.00"), D("51872.00"))
    after = engine.process("alice", [fill(qty="5", price="190.00", at=ts(2))])
    assert after[-1].data.cash == D("49050.0000")


def test_a_fill_after_a_published_account_is_followed_by_a_computed_account() -> None:
    engine = PortfolioEngine()

    out = engine.process("alice", [account("1000.00", at=ts(1)), fill(qty="1", price="10.00", at=ts(2))])

    assert [type(e) for e in out] == [AccountEvent, FillEvent, PositionEvent, AccountEvent]
    assert out[-1].ts == ts(2) and out[-1].data.cash == D("990.0000")


def test_a_published_position_closed_drops_the_holding_and_its_price_routing() -> None:
    engine = PortfolioEngine()
    engine.process("alice", [fill(qty="10", at=ts(0))])

    out = engine.process("alice", [position_closed("AAPL", at=ts(1))])

    assert [type(e) for e in out] == [PositionClosedEvent, AccountEvent]
    assert engine.books["alice"].holdings == {}
    assert engine.apply_prices([tick("AAPL", "1.00", ts(2))]) == {}


# ------------------------------------------------------------- save point / restore


def _setup_two_users(engine: PortfolioEngine) -> None:
    engine.process("alice", [account("10000.00", at=ts(0))])
    engine.process(
        "alice", [fill(qty="10", price="187.20", at=ts(1)), fill(symbol="MSFT", qty="5", at=ts(1))]
    )
    engine.process("carol", [fill(symbol="TSLA", side="sell", qty="2", price="250.00", at=ts(1))])
    engine.apply_prices([tick("AAPL", "190.00", ts(2)), tick("TSLA", "245.00", ts(2))])


def test_restore_brings_the_book_back_exactly_after_process() -> None:
    engine = PortfolioEngine()
    _setup_two_users(engine)
    before = engine.dump_book("alice")
    events: list[Event] = [
        fill(side="sell", qty="10", price="195.00", at=ts(3)),  # closes AAPL
        fill(symbol="MSFT", side="sell", qty="8", at=ts(3)),  # flips MSFT
        fill(symbol="TSLA", qty="3", price="240.00", at=ts(3)),  # opens TSLA
        account("1.00", at=ts(3)),
        position("NVDA", "4", "900.00", at=ts(3)),
    ]
    point = engine.save_point("alice", events)

    engine.process("alice", events)
    engine.restore(point)

    after = engine.dump_book("alice")
    assert (after.cash, after.realized_pl_today, after.last_equity, after.currency) == (
        before.cash, before.realized_pl_today, before.last_equity, before.currency,
    )  # fmt: skip
    assert sorted(after.holdings) == sorted(before.holdings)  # the order of a dict is not state


def test_after_restore_price_ticks_reach_only_the_users_holding_the_symbol() -> None:
    engine, untouched = PortfolioEngine(), PortfolioEngine()
    _setup_two_users(engine)
    _setup_two_users(untouched)
    events: list[Event] = [
        fill(side="sell", qty="10", at=ts(3)),
        fill(symbol="TSLA", qty="3", price="240.00", at=ts(3)),
        position("NVDA", "4", "900.00", at=ts(3)),
    ]
    point = engine.save_point("alice", events)
    engine.process("alice", events)

    engine.restore(point)

    ticks = [tick("AAPL", "191.00", ts(4)), tick("TSLA", "241.00", ts(4)), tick("NVDA", "901.00", ts(4))]
    result = engine.apply_prices(ticks)
    assert result == untouched.apply_prices(ticks)
    assert {u: [e.data.symbol for e in evs if isinstance(e, PositionEvent)] for u, evs in result.items()} == {
        "alice": ["AAPL"],
        "carol": ["TSLA"],
    }


def test_restore_of_a_user_without_a_book_removes_the_book_and_its_routing() -> None:
    engine = PortfolioEngine()
    _setup_two_users(engine)
    events: list[Event] = [fill(symbol="TSLA", qty="3", price="240.00", at=ts(3))]
    point = engine.save_point("bob", events)
    engine.process("bob", events)

    engine.restore(point)

    assert "bob" not in engine.books
    assert list(engine.apply_prices([tick("TSLA", "241.00", ts(4))])) == ["carol"]


def test_restore_undoes_the_mark_a_rolled_back_fill_introduced() -> None:
    engine = PortfolioEngine()
    events: list[Event] = [fill(symbol="NVDA", qty="1", price="500.00", at=ts(1))]
    point = engine.save_point("alice", events)
    engine.process("alice", events)
    engine.restore(point)

    out = engine.process("bob", [fill(symbol="NVDA", qty="10", price="100.00", at=ts(2))])

    # As on an engine that never saw the rolled-back fill: marked at bob's own fill price.
    assert out[1].data.current_price == D("100.000000")
    assert out[1].data.market_value == D("1000.0000")


# --------------------------------------------------------------------- persistence


def _round_trip(engine: PortfolioEngine, user_id: str) -> PortfolioEngine:
    """A fresh engine with the user's book loaded from its JSON, and the marks as the ledger restores them."""
    blob = encode(engine.dump_book(user_id))
    fresh = PortfolioEngine()
    fresh.prices.update(engine.prices)
    fresh.day_reference.update(engine.day_reference)
    fresh.load_book(user_id, msgspec.json.decode(blob, type=BookRecord))
    return fresh


def _busy_engine() -> PortfolioEngine:
    engine = PortfolioEngine()
    engine.process("alice", [account("10000.00", at=ts(0))])
    engine.process(
        "alice",
        [
            fill(qty="10", price="187.20", at=ts(1)),
            fill(qty="5", price="190.00", at=ts(1)),  # an average with a repeating decimal
            fill(symbol="MSFT", qty="7.25", price="301.33", at=ts(1)),
            fill(symbol="TSLA", side="sell", qty="3", price="250.00", at=ts(1)),
            fill(qty="4", side="sell", price="191.00", at=ts(1)),
        ],
    )
    engine.apply_prices([tick("AAPL", "191.17", ts(2)), tick("TSLA", "247.10", ts(2))])
    return engine


def test_book_record_round_trip_reproduces_positions_and_account() -> None:
    engine = _busy_engine()

    fresh = _round_trip(engine, "alice")

    for symbol in ("AAPL", "MSFT", "TSLA"):
        assert fresh.position_event("alice", symbol, ts(3)) == engine.position_event("alice", symbol, ts(3))
    assert fresh.account("alice", ts(3)) == engine.account("alice", ts(3))


def test_book_record_round_trip_keeps_the_unquantized_average() -> None:
    engine = _busy_engine()

    fresh = _round_trip(engine, "alice")

    assert (
        fresh.books["alice"].holdings["AAPL"].avg_entry_price
        == engine.books["alice"].holdings["AAPL"].avg_entry_price
    )
    assert fresh.books["alice"].holdings["AAPL"].avg_entry_price != D("188.133333")


def test_a_loaded_book_reacts_to_ticks_and_fills_like_the_original() -> None:
    engine = _busy_engine()
    fresh = _round_trip(engine, "alice")
    ticks = [tick("AAPL", "192.00", ts(4)), tick("MSFT", "299.99", ts(4))]
    more = [fill(side="sell", qty="11", price="192.50", at=ts(5)), fill(symbol="TSLA", qty="3", at=ts(5))]

    assert fresh.apply_prices(ticks) == engine.apply_prices(ticks)
    assert fresh.process("alice", more) == engine.process("alice", more)


def test_load_book_over_an_existing_book_routes_ticks_by_the_new_holdings() -> None:
    engine = PortfolioEngine()
    engine.process("alice", [fill(symbol="TSLA", qty="1", price="250.00", at=ts(1))])
    other = PortfolioEngine()
    other.process("alice", [fill(qty="1", price="187.20", at=ts(1))])

    engine.load_book("alice", other.dump_book("alice"))

    assert engine.apply_prices([tick("TSLA", "251.00", ts(2))]) == {}


# ------------------------------------------------------------------------ roll_day


def _rolled_engine() -> PortfolioEngine:
    engine = funded("1000.00")
    engine.process("alice", [fill(qty="10", price="100.00", at=ts(1))])
    engine.apply_prices([tick("AAPL", "110.00", ts(2))])
    engine.process("alice", [fill(side="sell", qty="5", price="110.00", at=ts(3))])  # realizes 50
    engine.roll_day()
    return engine


def test_roll_day_resets_realized_pl_and_carries_equity_into_last_equity() -> None:
    engine = _rolled_engine()

    acct = engine.account("alice", ts(4))

    # cash = 1000 − 1000 + 550 = 550; equity = 550 + 5 × 110 = 1100
    assert strings(acct) == expected_account(
        ts(4),
        equity="1100.0000", last_equity="1100.0000", cash="550.0000",
        buying_power="1650.0000",  # 2 × 1100 − 550
        portfolio_value="1100.0000", long_market_value="550.0000", short_market_value="0.0000",
        realized_pl_today="0.0000",
    )  # fmt: skip


def test_roll_day_restarts_intraday_pl_and_change_today_from_the_current_marks() -> None:
    engine = _rolled_engine()

    assert engine.position_event("alice", "AAPL", ts(4)).data.unrealized_intraday_pl == D("0.0000")
    assert engine.position_event("alice", "AAPL", ts(4)).data.change_today == D("0.000000")
    pos, _ = engine.apply_prices([tick("AAPL", "112.00", ts(5))])["alice"]

    assert strings(pos.data) == expected_position(
        "AAPL", ts(5), qty="5", side="long",
        avg_entry_price="100.000000", current_price="112.000000",
        market_value="560.0000", cost_basis="500.0000",
        unrealized_pl="60.0000", unrealized_plpc="0.120000",
        unrealized_intraday_pl="10.0000",  # 5 × (112 − 110)
        change_today="0.018182",  # 2 / 110
    )  # fmt: skip


def test_after_roll_day_an_add_weights_the_intraday_base_with_the_fill_price() -> None:
    engine = _rolled_engine()

    out = engine.process("alice", [fill(qty="5", price="112.00", at=ts(5))])

    # base = (5 × 110 + 5 × 112) / 10 = 111, marked at 110: intraday = 10 × (110 − 111)
    assert out[1].data.unrealized_intraday_pl == D("-10.0000")
    assert out[1].data.avg_entry_price == D("106.000000")


def test_after_roll_day_realized_pl_counts_only_the_new_days_fills() -> None:
    engine = _rolled_engine()

    out = engine.process("alice", [fill(side="sell", qty="2", price="120.00", at=ts(5))])

    assert out[-1].data.realized_pl_today == D("40.0000")  # 2 × (120 − 100)
    assert out[-1].data.last_equity == D("1100.0000")


# --------------------------------------------------------------- the exact model


@dataclass
class ModelBook:
    cash: Fraction = Fraction(0)
    realized: Fraction = Fraction(0)
    # symbol → (signed qty, average entry)
    holdings: dict[str, tuple[Fraction, Fraction]] = field(default_factory=dict)


class Model:
    """The engine's arithmetic restated independently, exactly, in rationals."""

    def __init__(self) -> None:
        self.books: dict[str, ModelBook] = {}
        self.marks: dict[str, Fraction] = {}

    def book(self, user_id: str) -> ModelBook:
        return self.books.setdefault(user_id, ModelBook())

    def qty(self, user_id: str, symbol: str) -> Fraction:
        return self.book(user_id).holdings.get(symbol, (Fraction(0), Fraction(0)))[0]

    def fill(self, user_id: str, symbol: str, side: str, qty: Decimal, price: Decimal) -> None:
        book = self.book(user_id)
        q, p = Fraction(qty), Fraction(price)
        signed = q if side == "buy" else -q
        book.cash -= signed * p
        self.marks.setdefault(symbol, p)
        old_qty, old_avg = book.holdings.get(symbol, (Fraction(0), Fraction(0)))
        new_qty = old_qty + signed
        if old_qty == 0:
            avg = p
        elif (old_qty > 0) == (signed > 0):
            avg = (old_qty * old_avg + signed * p) / new_qty
        else:
            closed = min(abs(signed), abs(old_qty))
            book.realized += closed * (p - old_avg) * (1 if old_qty > 0 else -1)
            flipped = new_qty != 0 and (new_qty > 0) != (old_qty > 0)
            avg = p if flipped else old_avg
        if new_qty == 0:
            book.holdings.pop(symbol, None)
        else:
            book.holdings[symbol] = (new_qty, avg)

    def tick(self, symbol: str, price: Decimal) -> None:
        self.marks[symbol] = Fraction(price)

    def market_values(self, user_id: str) -> tuple[Fraction, Fraction]:
        values = [q * self.marks[s] for s, (q, _) in self.book(user_id).holdings.items()]
        return sum((v for v in values if v > 0), Fraction(0)), sum((v for v in values if v < 0), Fraction(0))

    def equity(self, user_id: str) -> Fraction:
        long_value, short_value = self.market_values(user_id)
        return self.book(user_id).cash + long_value + short_value


def assert_rounds(emitted: Decimal, exact: Fraction, places: int) -> None:
    """``emitted`` is ``exact`` rounded half-even to ``places`` decimals, written with that scale.

    At an exact tie either neighbour is accepted: the engine's 34-digit intermediates
    may sit a hair off the tie, which is not an error at 6 or 4 decimals.
    """
    assert emitted.as_tuple().exponent == -places, emitted
    scaled = exact * 10**places
    if scaled.denominator == 2:
        assert abs(Fraction(emitted) - exact) == Fraction(1, 2 * 10**places), (emitted, exact)
    else:
        assert Fraction(emitted) == round(exact, places), (emitted, float(exact))


def assert_close(engine_value: Decimal, exact: Fraction) -> None:
    """The engine's unquantized value is the exact one to well within its 34 digits."""
    assert abs(Fraction(engine_value) - exact) <= Fraction(1, 10**20), (engine_value, float(exact))


# ------------------------------------------------------------------ the strategies

USERS = ("alice", "bob")
PROP_SYMBOLS = ("AAPL", "MSFT", "TSLA")

quantities = st.one_of(
    st.integers(1, 20).map(Decimal),
    st.integers(1, 300_000).map(lambda n: Decimal(n).scaleb(-2)),
)
prices = st.integers(1, 100_000).map(lambda n: Decimal(n).scaleb(-2))
# A qty of None stands for "exactly the user's position, on the closing side", so that
# positions close to zero often, not only by chance.
fill_specs = st.tuples(
    st.sampled_from(PROP_SYMBOLS), st.sampled_from(("buy", "sell")), st.none() | quantities, prices
)
publishes = st.tuples(
    st.just("publish"), st.sampled_from(USERS), st.lists(fill_specs, min_size=1, max_size=3)
)
price_messages = st.tuples(
    st.just("prices"),
    st.just(""),
    st.lists(st.tuples(st.sampled_from(PROP_SYMBOLS), prices), min_size=1, max_size=3),
)
scripts = st.lists(st.one_of(publishes, price_messages), max_size=25)


@dataclass
class Step:
    """One processed message: what went in, what came out, the model after it."""

    kind: str
    user_id: str
    sent: list[FillEvent] | list[PriceTick]
    out: dict[str, list[Event]]
    model: Model
    # For a publish, (qty, avg, mark) of each fill's symbol right after that fill (qty 0 when flat).
    after_fill: list[tuple[Fraction, Fraction, Fraction]] = field(default_factory=list)


def replay(
    script: list[tuple[str, str, list[Any]]], check: Callable[[Step, PortfolioEngine], None] | None = None
) -> tuple[PortfolioEngine, Model]:
    """Feed ``script`` to an engine and the model side by side, calling ``check`` after every message."""
    engine, model = PortfolioEngine(), Model()
    clock = itertools.count(1)
    for kind, user_id, items in script:
        if kind == "publish":
            events: list[FillEvent] = []
            after_fill = []
            for symbol, side, qty, price in items:
                if qty is None:
                    held = model.qty(user_id, symbol)
                    side = "sell" if held > 0 else "buy"
                    qty = Decimal(abs(held.numerator)) / Decimal(held.denominator) if held else Decimal(1)
                model.fill(user_id, symbol, side, qty, price)
                held, avg = model.book(user_id).holdings.get(symbol, (Fraction(0), Fraction(0)))
                after_fill.append((held, avg, model.marks[symbol]))
                events.append(
                    fill(symbol=symbol, side=side, qty=str(qty), price=str(price), at=ts(next(clock)))
                )
            out = {user_id: engine.process(user_id, events)}
            if check:
                check(Step(kind, user_id, events, out, model, after_fill), engine)
        else:
            ticks = [tick(symbol, str(price), ts(next(clock))) for symbol, price in items]
            for t in ticks:
                model.tick(t.symbol, t.price)
            out = engine.apply_prices(ticks)
            if check:
                check(Step(kind, "", ticks, out, model), engine)
    return engine, model


def emitted_accounts(step: Step) -> list[tuple[str, Account]]:
    return [(u, e.data) for u, evs in step.out.items() for e in evs if isinstance(e, AccountEvent)]


# --------------------------------------------------------------- property tests


@PROPERTY
@given(scripts)
def test_final_books_equal_an_exact_recomputation(script: list[tuple[str, str, list[Any]]]) -> None:
    engine, model = replay(script)

    assert set(engine.books) == set(model.books)
    for user_id, expected in model.books.items():
        book = engine.books[user_id]
        assert Fraction(book.cash) == expected.cash
        assert_close(book.realized_pl_today, expected.realized)
        assert set(book.holdings) == set(expected.holdings)
        for symbol, (qty, avg) in expected.holdings.items():
            holding = book.holdings[symbol]
            assert Fraction(holding.qty) == qty
            assert_close(holding.avg_entry_price, avg)
            assert Fraction(holding.current_price) == model.marks[symbol]
        acct = engine.account(user_id, ts(0))
        assert Fraction(acct.cash) == expected.cash
        assert_rounds(acct.realized_pl_today, expected.realized, 4)
        for symbol, (qty, avg) in expected.holdings.items():
            pos = engine.position(book.holdings[symbol], ts(0))
            assert Fraction(pos.qty) == qty
            assert_rounds(pos.avg_entry_price, avg, 6)


@PROPERTY
@given(scripts)
def test_every_emitted_position_matches_the_exact_recomputation(
    script: list[tuple[str, str, list[Any]]],
) -> None:
    def check(step: Step, engine: PortfolioEngine) -> None:
        if step.kind == "publish":
            derived = step.out[step.user_id][1:-1:2]
            expected = step.after_fill
        else:
            derived = [e for events in step.out.values() for e in events[:-1]]
            expected = [
                (*step.model.books[u].holdings[e.data.symbol], step.model.marks[e.data.symbol])
                for u, events in step.out.items()
                for e in events[:-1]
            ]
        assert len(derived) == len(expected)
        for event, (qty, avg, mark) in zip(derived, expected, strict=True):
            if qty == 0:
                assert isinstance(event, PositionClosedEvent)
                continue
            assert isinstance(event, PositionEvent)
            pos = event.data
            assert Fraction(pos.qty) == qty
            assert pos.side == ("long" if qty > 0 else "short")
            assert_rounds(pos.avg_entry_price, avg, 6)
            assert Fraction(pos.current_price) == mark
            assert Fraction(pos.market_value) == qty * mark  # exact: ≤ 4 decimals
            assert_rounds(pos.cost_basis, qty * avg, 4)
            assert_rounds(pos.unrealized_pl, qty * mark - qty * avg, 4)
            assert_rounds(pos.unrealized_plpc, (qty * mark - qty * avg) / abs(qty * avg), 6)

    replay(script, check)


@PROPERTY
@given(scripts)
def test_every_emitted_account_balances_equity_with_cash_and_market_values(
    script: list[tuple[str, str, list[Any]]],
) -> None:
    def check(step: Step, engine: PortfolioEngine) -> None:
        accounts = emitted_accounts(step)
        assert len(accounts) == len(step.out)  # one account per user reached
        for user_id, acct in accounts:
            long_value, short_value = step.model.market_values(user_id)
            assert acct.equity == acct.cash + acct.long_market_value + acct.short_market_value
            assert acct.short_market_value <= 0 <= acct.long_market_value
            assert acct.portfolio_value == acct.equity
            assert Fraction(acct.cash) == step.model.books[user_id].cash
            assert Fraction(acct.long_market_value) == long_value
            assert Fraction(acct.short_market_value) == short_value
            assert Fraction(acct.equity) == step.model.equity(user_id)
            # Before quantization too: equity = cash + Σ qty × current price, exactly.
            assert Fraction(engine.equity(engine.books[user_id])) == step.model.equity(user_id)

    replay(script, check)


@PROPERTY
@given(scripts)
def test_every_emitted_value_has_at_most_its_fields_decimal_places(
    script: list[tuple[str, str, list[Any]]],
) -> None:
    def places(value: Decimal) -> int:
        return max(0, -int(value.as_tuple().exponent))

    def check(step: Step, engine: PortfolioEngine) -> None:
        for events in step.out.values():
            for event in events:
                if not isinstance(event, PositionEvent | AccountEvent):
                    continue
                data = event.data
                for name in MONEY_FIELDS[type(data)]:
                    assert places(getattr(data, name)) <= 4, (name, getattr(data, name))
                for name in PRICE_FIELDS[type(data)]:
                    assert places(getattr(data, name)) <= 6, (name, getattr(data, name))
                if isinstance(data, Position):  # quantities come out as they went in: ≤ 2 here
                    assert places(data.qty) <= 2

    replay(script, check)


@PROPERTY
@given(scripts)
def test_process_and_apply_prices_emit_events_in_order_with_their_sources_ts(
    script: list[tuple[str, str, list[Any]]],
) -> None:
    def check(step: Step, engine: PortfolioEngine) -> None:
        if step.kind == "publish":
            out = step.out[step.user_id]
            assert out[-1].ts == step.sent[-1].ts and isinstance(out[-1], AccountEvent)
            pairs = list(zip(out[:-1:2], out[1:-1:2], strict=True))
            assert [f for f, _ in pairs] == step.sent
            for sent, derived in pairs:
                assert isinstance(derived, PositionEvent | PositionClosedEvent)
                assert derived.ts == sent.ts and derived.data.symbol == sent.data.symbol
            return
        holders = {u for u, b in step.model.books.items() if any(t.symbol in b.holdings for t in step.sent)}
        assert set(step.out) == holders
        latest = {t.symbol: t.ts for t in step.sent}
        for user_id, events in step.out.items():
            *positions, acct = events
            # Positions come in the order of each symbol's last tick; the account carries the last one's ts.
            by_last_tick = reversed(dict.fromkeys(t.symbol for t in reversed(step.sent)))
            held = [s for s in by_last_tick if s in step.model.books[user_id].holdings]
            assert [p.data.symbol for p in positions] == held
            assert all(p.ts == latest[p.data.symbol] for p in positions)
            assert isinstance(acct, AccountEvent) and acct.ts == latest[held[-1]]

    replay(script, check)


# ------------------------------------------------------- the grammar's bounds

MAX = "999999999999999.9999999999"  # the largest decimal the decoder accepts
TINY = "0.0000000001"


def test_a_fill_at_the_bounds_is_exact_and_quantizes_without_error() -> None:
    engine = PortfolioEngine()

    out = engine.process("alice", [fill(qty=MAX, price=MAX, at=ts(1))])

    # 50 digits, checked against exact rationals (Decimal's default context would round it).
    product = Fraction(MAX) * Fraction(MAX)
    position_data, account_data = out[1].data, out[2].data
    assert isinstance(position_data, Position) and isinstance(account_data, Account)
    assert Fraction(engine.books["alice"].cash) == -product, "cash holds the exact product"
    assert position_data.market_value == D("999999999999999999999999800000.0000")
    assert account_data.cash == D("-999999999999999999999999800000.0000")


@PROPERTY
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["buy", "sell"]),
            st.sampled_from([MAX, TINY, "1", "123456789012345.6789012345"]),
            st.sampled_from([MAX, TINY, "0.01", "187.20"]),
        ),
        min_size=1,
        max_size=12,
    ),
    st.sampled_from([MAX, TINY, "0.01"]),
)
def test_fills_and_ticks_anywhere_in_the_grammars_range_never_raise(
    trades: list[tuple[str, str, str]], mark: str
) -> None:
    engine = PortfolioEngine()
    engine.process("alice", [account(f"-{MAX}", at=ts(0))])
    for n, (side, qty, price) in enumerate(trades):
        engine.process("alice", [fill(f"f-{n}", side=side, qty=qty, price=price, at=ts(n + 1))])
        engine.apply_prices([tick("AAPL", mark, ts(n + 1))])
    engine.roll_day()
    engine.apply_prices([tick("AAPL", MAX, ts(99))])

    engine.account("alice", ts(99))


def test_quantize_never_fails_even_for_values_past_the_exact_contexts_digits() -> None:
    from alphaflow_server.money import quantize

    huge = D("123456789" * 10 + ".987654321")  # 90 digits before the point

    assert quantize(huge, D("0.0001")) == D("123456789" * 10 + ".9877")
    assert quantize(D("-1E+80"), D("0.000001")) == D("-1E+80")
    assert str(quantize(D("-0.00001"), D("0.0001"))) == "0.0000", "never a negative zero"


def test_a_published_position_of_qty_zero_closes_the_holding_instead_of_streaming_a_row() -> None:
    engine = PortfolioEngine()
    engine.process("alice", [fill(qty="10", at=ts(0))])

    out = engine.process("alice", [position("AAPL", "-0", "187.20", at=ts(1))])

    assert [type(e) for e in out] == [PositionClosedEvent, AccountEvent]
    assert (out[0].data.symbol, out[0].ts) == ("AAPL", ts(1))
    assert engine.books["alice"].holdings == {}
    assert engine.apply_prices([tick("AAPL", "1.00", ts(2))]) == {}
