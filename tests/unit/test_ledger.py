"""Ledger: fill ids as idempotency keys, failure containment, and any accepted message surviving
engine → commit → restart → resume (on a real SqliteStore, no event loop)."""

from __future__ import annotations

import logging
import sqlite3
import tempfile
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from alphaflow_live.protocol import Event, MessageError, Prices, Publish, decode_ingest_message
from alphaflow_server.bus import EventBus, JournalOptions
from alphaflow_server.engine import PortfolioEngine
from alphaflow_server.fill_ids import AppliedFills
from alphaflow_server.ledger import Ledger
from alphaflow_server.sqlite_store import DB_NAME, SqliteStore
from alphaflow_server.store import MemoryStore, StateStore

from .factories import D, account, fill, position, tick, ts

RETAIN = {"retain_events": 10_000, "retain_seconds": 300.0}


def ledger_on(store: StateStore, journal: JournalOptions | None = None, **options: Any) -> Ledger:
    epochs = iter(f"e-{n}" for n in range(1, 1000))
    bus = EventBus(new_epoch=lambda: next(epochs), journal=journal)
    return Ledger(bus, PortfolioEngine(), store, **options)


def restarted(directory: Path, **options: Any) -> Ledger:
    """A ledger restored from the state file in ``directory``, as a server start does."""
    store = SqliteStore(directory)
    ledger = ledger_on(store, **options)
    ledger.restore(store.load(), now=0.0, **RETAIN)
    return ledger


@pytest.fixture
def stored(tmp_path: Path) -> Iterator[Ledger]:
    store = SqliteStore(tmp_path)
    yield ledger_on(store)
    store.close()


def qty(ledger: Ledger, user_id: str = "alice", symbol: str = "AAPL") -> Decimal:
    holding = ledger.engine.books[user_id].holdings.get(symbol)
    return D(0) if holding is None else holding.qty


# ------------------------------------------------------------------ fill ids


def test_a_duplicate_fill_changes_nothing_and_is_reported_10_10_13_13(stored: Ledger) -> None:
    """Defect 2 as measured: qty went 10 → 20 → 26 → 19 and cash to −915."""
    f1 = fill("f1", qty="10", price="50", at=ts(1))
    f2 = fill("f2", qty="3", price="50", at=ts(3))
    resent_f1 = fill("f1", side="sell", qty="7", price="55", at=ts(4))  # another payload: still f1

    acks, qtys = [], []
    for events in ([f1], [f1], [f2, f2], [resent_f1]):
        acks.append(stored.publish("alice", events, now=1.0))
        qtys.append(qty(stored))

    assert qtys == [D(10), D(10), D(13), D(13)]
    assert stored.engine.books["alice"].cash == D(-650)
    assert [a.duplicates for a in acks] == [[], ["f1"], ["f2"], ["f1"]]
    assert acks[1].seqs == [] and acks[3].seqs == [], "a publish of duplicates alone has no seqs"
    state = stored.bus.user("alice").state
    assert [f.id for f in state.fills] == ["f1", "f2"]
    assert state.positions["AAPL"].qty == D(13) and state.account is not None
    assert state.account.cash == D("-650.0000"), "the snapshot agrees with the book"


def test_a_publish_of_duplicates_alone_commits_and_journals_nothing(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path)
    ledger = ledger_on(store)
    ledger.publish("alice", [fill("f1")], now=1.0)
    seq = ledger.bus.user("alice").seq
    ledger.engine.apply_prices([tick("AAPL", "200.00", ts(5))])  # a stale mark the publish must not send

    published = ledger.publish("alice", [fill("f1"), fill("f1")], now=2.0)

    assert (published.seqs, published.duplicates) == ([], ["f1"])
    assert ledger.bus.user("alice").seq == seq
    with sqlite3.connect(tmp_path / DB_NAME) as db:
        assert db.execute("SELECT count(*) FROM events").fetchone()[0] == 1, "one run: the first publish"


def test_the_same_fill_id_twice_in_one_publish_is_applied_once(stored: Ledger) -> None:
    published = stored.publish("alice", [fill("f1", qty="4"), position("MSFT"), fill("f1", qty="4")], 1.0)

    assert qty(stored) == D(4)
    assert published.duplicates == ["f1"]
    assert len(published.seqs) == 4, "f1, its position, the MSFT position and the account"


def test_fill_ids_are_per_user(stored: Ledger) -> None:
    stored.publish("alice", [fill("f1", qty="4")], 1.0)

    published = stored.publish("bob", [fill("f1", qty="4")], 1.0)

    assert published.duplicates == [] and qty(stored, "bob") == D(4)


def test_applied_fill_ids_hold_across_a_restart(tmp_path: Path) -> None:
    live = ledger_on(SqliteStore(tmp_path))
    live.publish("alice", [fill("f1", qty="10", price="50")], 1.0)
    live.publish("alice", [fill("f2", qty="3", price="50")], 1.0)
    live.store.close()

    again = restarted(tmp_path)
    published = again.publish(
        "alice", [fill("f2", qty="3", price="50"), fill("f3", qty="1", price="50")], 1.0
    )

    assert published.duplicates == ["f2"]
    assert qty(again) == D(14) and again.engine.books["alice"].cash == D(-700)


def test_a_failed_commit_leaves_the_fill_ids_unapplied(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path)
    ledger = ledger_on(store)
    store.close()  # every commit now fails

    with pytest.raises(sqlite3.ProgrammingError):
        ledger.publish("alice", [fill("f1")], 1.0)
    ledger.store = SqliteStore(tmp_path)
    published = ledger.publish("alice", [fill("f1")], 1.0)

    assert published.duplicates == [] and qty(ledger) == D(10)


def test_fill_ids_past_the_newest_kept_are_pruned_at_checkpoints_but_not_inside_the_replay_window(
    tmp_path: Path,
) -> None:
    store = SqliteStore(tmp_path)
    short = JournalOptions(retain_events=4, retain_seconds=0.0)
    ledger = ledger_on(store, short, keep_fill_ids=5, checkpoint_every=10)
    for n in range(1, 31):
        ledger.publish("alice", [fill(f"f{n}", qty="1")], now=float(n))

    kept = [fill_id for fill_id, _ in store.fill_ids("alice")]

    assert ledger.fills.count("alice") <= 5 + 10 * 3, "bounded: the newest kept plus what came since"
    assert "f1" not in kept and {"f26", "f27", "f28", "f29", "f30"} <= set(kept)
    assert ledger.publish("alice", [fill("f30")], 31.0).duplicates == ["f30"]
    assert ledger.publish("alice", [fill("f1")], 31.0).duplicates == [], "past retention: applied again"


def test_applied_fills_split_keeps_the_first_of_each_id_and_reports_each_once() -> None:
    fills = AppliedFills(keep=10)
    fills.add("alice", [("f1", 1)])
    events: list[Event] = [fill("f1"), fill("f2"), fill("f2"), fill("f1"), position(), fill("f3")]

    fresh, duplicates = fills.split("alice", events)

    assert [getattr(e.data, "id", None) for e in fresh] == ["f2", None, "f3"]
    assert duplicates == ["f1", "f2"]
    assert fills.split("alice", events[1:2])[0] is not events, "no copy needed, none made"


# -------------------------------------------------------------- containment


def test_an_engine_that_raises_half_way_through_a_publish_rolls_the_users_book_back(
    stored: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    stored.publish("alice", [account("1000.00"), fill("f1", qty="10", price="50")], 1.0)
    stored.publish("bob", [fill("b1", symbol="MSFT", qty="2", price="10")], 1.0)
    alice, bob = stored.engine.dump_book("alice"), stored.engine.dump_book("bob")
    alice_seq = stored.bus.user("alice").seq
    engine = stored.engine
    real = engine._apply_fill
    calls = iter(range(100))

    def second_fill_raises(user_id: str, data: Any, at: str) -> Any:
        if next(calls) == 1:
            raise RuntimeError("a bug in the engine")
        return real(user_id, data, at)

    monkeypatch.setattr(engine, "_apply_fill", second_fill_raises)
    with pytest.raises(RuntimeError):
        stored.publish("alice", [fill("f2", qty="5"), fill("f3", symbol="TSLA", qty="1")], 2.0)
    monkeypatch.undo()

    assert stored.engine.dump_book("alice") == alice, "the first fill's change was undone too"
    assert stored.engine.dump_book("bob") == bob
    assert stored.bus.user("alice").seq == alice_seq
    after = stored.publish("alice", [fill("f2", qty="5", price="50")], 3.0)
    assert after.duplicates == [] and qty(stored) == D(15), "f2 was not taken as applied"
    assert stored.engine.apply_prices([tick("TSLA", "1.00", ts(9))]) == {}, "no TSLA holder was left"


def test_a_user_whose_remark_raises_does_not_stop_the_others_and_is_logged_once(
    stored: Ledger, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    for user in ("alice", "bob"):
        stored.publish(user, [fill(f"{user}-1", qty="1")], 1.0)
    real = stored.engine.derive_user

    def alice_fails(user_id: str, symbols: dict[str, str]) -> list[Event]:
        if user_id == "alice":
            raise RuntimeError("a bug in the engine")
        return real(user_id, symbols)

    monkeypatch.setattr(stored.engine, "derive_user", alice_fails)
    counts = []
    with caplog.at_level(logging.ERROR, logger="alphaflow.server.ledger"):
        for turn in range(3):
            stored.prices([tick("AAPL", f"19{turn}.00", ts(10 + turn))], now=2.0 + turn)
            counts.append(stored.remark(2.0 + turn, everyone=True))

    assert counts == [2, 2, 2], "bob's position and account, every turn"
    assert stored.bus.user("bob").state.positions["AAPL"].current_price == D("192.000000")
    tracebacks = [r for r in caplog.records if r.exc_info is not None]
    assert len(tracebacks) == 1, "the traceback once; the repeats in a line each"
    assert sum("remark_failed" in r.getMessage() for r in caplog.records) == 3


# --------------------------------------------- any accepted message, end to end

MAX = "999999999999999.9999999999"
EXTREMES = [MAX, f"-{MAX}", "-0", "0", "0.0000000001", "1", "-1"]
decimals = st.one_of(
    st.sampled_from(EXTREMES),
    st.builds(
        lambda sign, whole, fraction: sign + whole + (f".{fraction}" if fraction else ""),
        st.sampled_from(["", "-"]),
        st.from_regex(r"[0-9]{1,15}", fullmatch=True),
        st.one_of(st.just(""), st.from_regex(r"[0-9]{1,10}", fullmatch=True)),
    ),
)
# A fill's qty and price and a tick's price must be above zero; others are refused, and skipped.
positive = st.one_of(st.sampled_from([MAX, "0.0000000001", "1", "187.20"]), decimals)
symbols = st.sampled_from(["AAPL", "HX"])
stamps = st.integers(0, 10_000).map(ts)


def _data(fields: dict[str, Any], **fixed: Any) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries({**{k: st.just(v) for k, v in fixed.items()}, **fields})


fill_events = st.fixed_dictionaries(
    {
        "type": st.just("fill"),
        "ts": stamps,
        "data": _data(
            {
                "id": st.sampled_from(["f-1", "f-2", "f-3", "f-4"]),
                "symbol": symbols,
                "side": st.sampled_from(["buy", "sell"]),
                "qty": positive,
                "price": positive,
                "position_qty": decimals,
                "timestamp": stamps,
            },
            order_id="o-1",
        ),
    }
)
money_fields = ("market_value", "cost_basis", "unrealized_pl", "unrealized_plpc")
position_events = st.fixed_dictionaries(
    {
        "type": st.just("position"),
        "ts": stamps,
        "data": _data(
            {
                "symbol": symbols,
                "qty": decimals,
                "side": st.sampled_from(["long", "short"]),
                "avg_entry_price": decimals,
                "current_price": decimals,
                **{name: decimals for name in money_fields},
                "unrealized_intraday_pl": decimals,
                "change_today": decimals,
                "updated_at": stamps,
            }
        ),
    }
)
account_fields = (
    "equity last_equity cash buying_power portfolio_value long_market_value short_market_value"
    " realized_pl_today"
)
account_events = st.fixed_dictionaries(
    {
        "type": st.just("account"),
        "ts": stamps,
        "data": _data({**{name: decimals for name in account_fields.split()}, "updated_at": stamps}),
    }
)
order_events = st.fixed_dictionaries(
    {
        "type": st.just("order"),
        "ts": stamps,
        "data": _data(
            {
                "id": st.sampled_from(["o-1", "o-2"]),
                "symbol": symbols,
                "qty": decimals,
                "filled_qty": decimals,
                "filled_avg_price": st.one_of(st.none(), decimals),
                "limit_price": st.one_of(st.none(), decimals),
                "status": st.sampled_from(["new", "partially_filled", "filled", "canceled"]),
                "submitted_at": stamps,
                "updated_at": stamps,
            },
            side="buy",
            type="limit",
        ),
    }
)
closed_events = st.fixed_dictionaries(
    {"type": st.just("position_closed"), "ts": stamps, "data": st.fixed_dictionaries({"symbol": symbols})}
)
publishes = st.fixed_dictionaries(
    {
        "type": st.just("publish"),
        "user_id": st.sampled_from(["alice", "bob"]),
        "events": st.lists(
            st.one_of(fill_events, fill_events, position_events, account_events, order_events, closed_events),
            min_size=1,
            max_size=4,
        ),
    }
)
prices = st.fixed_dictionaries(
    {
        "type": st.just("prices"),
        "prices": st.lists(
            st.fixed_dictionaries({"symbol": symbols, "price": positive, "ts": stamps}),
            min_size=1,
            max_size=3,
        ),
    }
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(publishes, publishes, prices), min_size=1, max_size=10))
def test_any_accepted_message_survives_engine_commit_restart_and_resume(
    messages: list[dict[str, Any]],
) -> None:
    with tempfile.TemporaryDirectory() as directory:
        state_dir = Path(directory)
        live = ledger_on(SqliteStore(state_dir), checkpoint_every=5)
        fills_applied: dict[str, list[Event]] = {}
        for now, message in enumerate(messages, 1):
            try:
                decoded = decode_ingest_message(msgspec.json.encode(message))
            except MessageError:
                continue  # refused at decode: nothing to survive
            if isinstance(decoded, Publish):
                live.publish(decoded.user_id, decoded.events, float(now))
                fills_applied.setdefault(decoded.user_id, []).extend(
                    e for e in decoded.events if e.channel == "trades"
                )
            elif isinstance(decoded, Prices):
                live.prices(decoded.prices, float(now))
            live.remark(float(now), everyone=True)

        again = restarted(state_dir)

        for user_id in live.engine.books:
            assert again.engine.dump_book(user_id) == live.engine.dump_book(user_id), user_id
        for stream in live.bus:
            other = again.bus.user(stream.user_id)
            assert (other.epoch, other.seq) == (stream.epoch, stream.seq)
            assert other.state.positions == stream.state.positions
            assert (other.state.orders, other.state.account) == (stream.state.orders, stream.state.account)
            start = max(stream.journal.first_replayable_seq, other.journal.first_replayable_seq)
            assert other.journal.events_after(start) == stream.journal.events_after(start)
        for user_id, fills in fills_applied.items():
            before = again.engine.dump_book(user_id)
            replayed = again.publish(user_id, fills, 99.0)
            assert replayed.seqs == [] and again.engine.dump_book(user_id) == before, "every fill applied"
        live.store.close()
        again.store.close()


def test_a_memory_store_keeps_fill_ids_for_the_life_of_the_process() -> None:
    ledger = ledger_on(MemoryStore())
    ledger.publish("alice", [fill("f1")], 1.0)

    assert ledger.publish("alice", [fill("f1")], 2.0).duplicates == ["f1"]
