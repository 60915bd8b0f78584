"""PortfolioState: applying events, snapshots and batches; fills dedup; the closed-order cap."""

from __future__ import annotations

import pytest
from hypothesis import given, settings

from alphaflow_live.protocol import Batch, Event, Snapshot, encode, snapshot_decoder
from alphaflow_live.state import MAX_SNAPSHOT_FILLS, BatchOutcome, PortfolioState

from .factories import TS, account, event_sequences, fill, order, position, position_closed, stamp

PROPERTY = settings(max_examples=200, deadline=None)


def synced(epoch: str = "e-1", seq: int = 10, **kwargs: int) -> PortfolioState:
    """A state that has applied an empty snapshot at ``seq``."""
    state = PortfolioState(**kwargs)
    state.apply_snapshot(Snapshot(epoch=epoch, seq=seq, server_time=TS, positions=[], orders=[], fills=[]))
    return state


def batch(from_seq: int, to_seq: int, events: list[Event] | None = None, epoch: str = "e-1") -> Batch:
    return Batch(epoch=epoch, from_seq=from_seq, to_seq=to_seq, server_time=TS, events=events or [])


def fill_ids(state: PortfolioState) -> list[str]:
    return [f.id for f in state.fills]


# ------------------------------------------------------------------ apply_event


def test_position_event_upserts_by_symbol() -> None:
    state = PortfolioState()

    state.apply_events([position("AAPL", "10"), position("MSFT", "5"), position("AAPL", "12")])

    got = {symbol: str(p.qty) for symbol, p in state.positions.items()}
    assert got == {"AAPL": "12", "MSFT": "5"}


def test_position_closed_removes_the_position() -> None:
    state = PortfolioState()

    state.apply_events([position("AAPL"), position("MSFT"), position_closed("AAPL")])

    assert sorted(state.positions) == ["MSFT"]


def test_position_closed_for_an_unknown_symbol_changes_nothing() -> None:
    state = PortfolioState()
    state.apply_event(position("AAPL"))

    state.apply_event(position_closed("TSLA"))

    assert sorted(state.positions) == ["AAPL"]


def test_order_event_upserts_by_id() -> None:
    state = PortfolioState()

    state.apply_events(
        [order("o-1", "new"), order("o-2", "new"), order("o-1", "partially_filled", filled_qty="4")]
    )

    got = {oid: (o.status, str(o.filled_qty)) for oid, o in state.orders.items()}
    assert got == {"o-1": ("partially_filled", "4"), "o-2": ("new", "0")}


def test_account_event_replaces_the_account() -> None:
    state = PortfolioState()

    state.apply_events([account("100.00"), account("250.50")])

    assert state.account is not None
    assert str(state.account.cash) == "250.50"


def test_fills_are_kept_in_arrival_order() -> None:
    state = PortfolioState()

    state.apply_events([fill("f-1"), fill("f-2"), fill("f-3")])

    assert fill_ids(state) == ["f-1", "f-2", "f-3"]


def test_a_fill_seen_twice_is_kept_once() -> None:
    state = PortfolioState()

    state.apply_events([fill("f-1", price="1.00"), fill("f-2"), fill("f-1", price="2.00")])

    assert fill_ids(state) == ["f-1", "f-2"]
    assert str(state.fills[0].price) == "1.00", "the first copy of a fill must win"


def test_fills_beyond_max_fills_drop_the_oldest() -> None:
    state = PortfolioState(max_fills=3)

    state.apply_events([fill(f"f-{n}") for n in range(1, 6)])

    assert fill_ids(state) == ["f-3", "f-4", "f-5"]


def test_duplicate_of_a_retained_fill_is_ignored_after_evictions() -> None:
    state = PortfolioState(max_fills=3)
    state.apply_events([fill(f"f-{n}") for n in range(1, 6)])

    state.apply_event(fill("f-4"))

    assert fill_ids(state) == ["f-3", "f-4", "f-5"]


# ----------------------------------------------------------- closed-order cap


def test_terminal_orders_beyond_the_cap_drop_the_oldest_terminal_one() -> None:
    state = PortfolioState(max_closed_orders=2)

    state.apply_events([order("o-1", "filled"), order("o-2", "canceled"), order("o-3", "expired")])

    assert sorted(state.orders) == ["o-2", "o-3"]


def test_open_orders_are_never_dropped_by_the_closed_order_cap() -> None:
    state = PortfolioState(max_closed_orders=1)

    state.apply_events(
        [order("o-1", "new"), order("o-2", "filled"), order("o-3", "rejected"), order("o-4", "accepted")]
    )

    assert sorted(state.orders) == ["o-1", "o-3", "o-4"]


def test_an_order_that_ends_again_becomes_the_newest_closed_order() -> None:
    state = PortfolioState(max_closed_orders=2)

    state.apply_events(
        [order("o-1", "filled"), order("o-2", "filled"), order("o-1", "filled"), order("o-3", "canceled")]
    )

    assert sorted(state.orders) == ["o-1", "o-3"]


def test_an_order_that_reopens_no_longer_counts_against_the_cap() -> None:
    state = PortfolioState(max_closed_orders=1)

    state.apply_events([order("o-1", "pending_cancel"), order("o-2", "filled"), order("o-2", "new")])
    state.apply_event(order("o-3", "canceled"))

    assert sorted(state.orders) == ["o-1", "o-2", "o-3"]


# -------------------------------------------------------------------- snapshots


def test_apply_snapshot_sets_epoch_and_seq_and_replaces_every_carried_channel() -> None:
    state = PortfolioState()
    state.apply_events([position("TSLA"), order("o-9"), account("1.00"), fill("f-9")])
    snapshot = Snapshot(
        epoch="e-2",
        seq=42,
        server_time=TS,
        positions=[position("AAPL").data],
        orders=[order("o-1").data],
        account=account("5.00").data,
        fills=[fill("f-1").data],
    )

    state.apply_snapshot(snapshot)

    assert (state.epoch, state.seq) == ("e-2", 42)
    assert sorted(state.positions) == ["AAPL"]
    assert sorted(state.orders) == ["o-1"]
    assert state.account is not None
    assert str(state.account.cash) == "5.00"
    assert fill_ids(state) == ["f-1"]


def test_apply_snapshot_keeps_channels_the_snapshot_leaves_out() -> None:
    state = PortfolioState()
    state.apply_events([position("TSLA"), order("o-9"), account("1.00"), fill("f-9")])

    state.apply_snapshot(Snapshot(epoch="e-1", seq=1, server_time=TS, positions=[]))

    assert (sorted(state.positions), sorted(state.orders), fill_ids(state)) == ([], ["o-9"], ["f-9"])
    assert state.account is not None


def test_snapshot_with_null_account_clears_the_account() -> None:
    state = PortfolioState()
    state.apply_event(account())

    state.apply_snapshot(Snapshot(epoch="e-1", seq=1, server_time=TS, account=None))

    assert state.account is None


def test_apply_snapshot_forgets_fill_ids_not_in_the_snapshot() -> None:
    state = PortfolioState()
    state.apply_event(fill("f-1"))
    state.apply_snapshot(Snapshot(epoch="e-1", seq=1, server_time=TS, fills=[fill("f-2").data]))

    state.apply_event(fill("f-1"))

    assert fill_ids(state) == ["f-2", "f-1"]


def test_apply_snapshot_applies_the_closed_order_cap_to_its_orders() -> None:
    state = PortfolioState(max_closed_orders=1)
    orders = [order("o-1", "filled").data, order("o-2", "canceled").data, order("o-3", "new").data]

    state.apply_snapshot(Snapshot(epoch="e-1", seq=1, server_time=TS, orders=orders))

    assert sorted(state.orders) == ["o-2", "o-3"]


def test_to_snapshot_before_any_sync_raises() -> None:
    with pytest.raises(ValueError, match="never been synchronised"):
        PortfolioState().to_snapshot(TS)


def test_to_snapshot_sorts_positions_by_symbol() -> None:
    state = synced()
    state.apply_events([position("TSLA"), position("AAPL"), position("MSFT")])

    snapshot = state.to_snapshot(TS)

    assert isinstance(snapshot.positions, list)
    assert [p.symbol for p in snapshot.positions] == ["AAPL", "MSFT", "TSLA"]


def test_to_snapshot_leaves_out_unsubscribed_channels_on_the_wire() -> None:
    state = synced(seq=7)
    state.apply_events([position(), order(), account(), fill("f-1")])

    got = snapshot_decoder.decode(encode(state.to_snapshot(TS, channels=["positions", "account"])))

    assert (got.epoch, got.seq) == ("e-1", 7)
    assert [p.symbol for p in got.positions] == ["AAPL"]  # type: ignore[union-attr]
    assert got.account is not None
    assert b'"orders"' not in encode(got)
    assert b'"fills"' not in encode(got)


def test_to_snapshot_sends_the_most_recent_fills_newest_last() -> None:
    state = synced()
    state.apply_events([fill(f"f-{n}") for n in range(1, 151)])

    snapshot = state.to_snapshot(TS, channels=["trades"])

    assert isinstance(snapshot.fills, list)
    ids = [f.id for f in snapshot.fills]
    assert len(ids) == MAX_SNAPSHOT_FILLS
    assert (ids[0], ids[-1]) == ("f-51", "f-150")


def test_snapshot_of_account_never_set_is_null() -> None:
    snapshot = synced().to_snapshot(TS, channels=["account"])

    assert b'"account":null' in encode(snapshot)


@PROPERTY
@given(event_sequences())
def test_a_snapshot_sent_over_the_wire_reproduces_the_state(events: list[Event]) -> None:
    server = synced(seq=0)
    server.apply_events(events)
    server.seq = len(events)

    client = PortfolioState()
    client.apply_snapshot(snapshot_decoder.decode(encode(server.to_snapshot(TS))))

    assert (client.epoch, client.seq) == (server.epoch, server.seq)
    assert client.positions == server.positions
    assert client.orders == server.orders
    assert client.account == server.account
    assert list(client.fills) == server.recent_fills()


# ---------------------------------------------------------------------- batches


def test_batch_before_any_snapshot_has_no_base() -> None:
    assert PortfolioState().apply_batch(batch(0, 1)) is BatchOutcome.NO_BASE


def test_batch_of_another_epoch_is_epoch_changed_and_changes_nothing() -> None:
    state = synced(epoch="e-1", seq=10)

    outcome = state.apply_batch(batch(10, 11, stamp([position()], 10), epoch="e-2"))

    assert (outcome, state.seq, state.positions) == (BatchOutcome.EPOCH_CHANGED, 10, {})


def test_batch_ending_at_or_before_our_seq_is_duplicate() -> None:
    state = synced(seq=10)

    outcomes = [state.apply_batch(batch(8, 10, stamp([position()], 9))), state.apply_batch(batch(3, 5))]

    assert outcomes == [BatchOutcome.DUPLICATE, BatchOutcome.DUPLICATE]
    assert (state.seq, state.positions) == (10, {})


def test_batch_starting_after_our_seq_is_a_gap() -> None:
    state = synced(seq=10)

    outcome = state.apply_batch(batch(11, 12, stamp([position()], 11)))

    assert (outcome, state.seq, state.positions) == (BatchOutcome.GAP, 10, {})


def test_batch_overlapping_our_seq_applies_only_the_events_past_it() -> None:
    state = synced(seq=10)
    old, new = position("AAPL", qty="1"), position("MSFT", qty="2")

    outcome = state.apply_batch(batch(8, 12, [*stamp([old], 9), *stamp([new], 11)]))

    assert (outcome, state.seq) == (BatchOutcome.APPLIED, 12)
    assert list(state.positions) == ["MSFT"], "the event at seq 10 was already held and is not applied again"


def test_a_snapshot_can_merge_fills_instead_of_replacing_them() -> None:
    state = synced(seq=10)
    state.apply_events(stamp([fill("f-old")], 10))
    snapshot = state.to_snapshot(TS)
    snapshot.fills = [*(snapshot.fills or []), fill("f-new").data]

    state.apply_snapshot(snapshot, merge_fills=True)

    assert [f.id for f in state.fills] == ["f-old", "f-new"]


def test_contiguous_batch_is_applied_and_advances_seq() -> None:
    state = synced(seq=10)

    outcome = state.apply_batch(batch(10, 13, stamp([position(), fill("f-1")], 11)))

    assert (outcome, state.seq) == (BatchOutcome.APPLIED, 13)
    assert (sorted(state.positions), fill_ids(state)) == (["AAPL"], ["f-1"])


def test_empty_contiguous_batch_advances_seq() -> None:
    state = synced(seq=10)

    outcome = state.apply_batch(batch(10, 15))

    assert (outcome, state.seq) == (BatchOutcome.APPLIED, 15)


def test_empty_recovered_batch_at_our_seq_is_applied() -> None:
    state = synced(seq=10)

    outcome = state.apply_batch(batch(10, 10))

    assert (outcome, state.seq) == (BatchOutcome.APPLIED, 10)


def test_batches_apply_in_a_chain() -> None:
    state = synced(seq=0)

    outcomes = [
        state.apply_batch(batch(0, 2, stamp([position("AAPL", "1"), position("AAPL", "2")]))),
        state.apply_batch(batch(2, 3, stamp([position_closed("AAPL")], 2))),
    ]

    assert outcomes == [BatchOutcome.APPLIED, BatchOutcome.APPLIED]
    assert (state.seq, state.positions) == (3, {})
