"""coalesce() and the Batcher: channel filter, leading-edge and window flushes, contiguity."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alphaflow_live.protocol import (
    CHANNELS,
    TERMINAL_ORDER_STATUSES,
    AccountEvent,
    Batch,
    Event,
    FillEvent,
    OrderEvent,
    PositionClosedEvent,
    PositionEvent,
    Snapshot,
)
from alphaflow_live.state import BatchOutcome, PortfolioState
from alphaflow_server.batcher import EARLY, Batcher, PendingBatch, coalesce

from .factories import (
    TS,
    account,
    channel_sets,
    event_sequences,
    events,
    fill,
    order,
    position,
    position_closed,
    stamp,
)

PROPERTY = settings(max_examples=200, deadline=None)
WINDOW = 0.25


def seqs(items: list[Event]) -> list[int]:
    return [event.seq for event in items]


def key(event: Event) -> tuple[str, str] | None:
    """What coalescing keeps one of; None for fills, which all stay."""
    if isinstance(event, PositionEvent | PositionClosedEvent):
        return ("position", event.data.symbol)
    if isinstance(event, OrderEvent):
        return ("order", event.data.id)
    if isinstance(event, AccountEvent):
        return ("account", "")
    return None


def state_of(items: list[Event], **kwargs: int) -> PortfolioState:
    state = PortfolioState(**kwargs)
    state.apply_events(items)
    return state


def batcher(
    *, window: float = WINDOW, leading_edge: bool = True, cursor: int = 0, channels: Any = CHANNELS
) -> Batcher:
    return Batcher(window_s=window, channels=channels, cursor=cursor, leading_edge=leading_edge)


# ------------------------------------------------------------------- coalesce


def test_coalesce_keeps_the_last_position_per_symbol() -> None:
    items = stamp([position("AAPL", "1"), position("MSFT", "1"), position("AAPL", "2")])

    assert seqs(coalesce(items)) == [2, 3]


def test_coalesce_treats_position_closed_as_the_same_position() -> None:
    items = stamp([position("AAPL"), position_closed("AAPL"), position("MSFT")])

    got = coalesce(items)

    assert seqs(got) == [2, 3]
    assert isinstance(got[0], PositionClosedEvent)


def test_coalesce_keeps_the_last_order_per_id_and_the_last_account() -> None:
    items = stamp(
        [order("o-1", "new"), account("1.00"), order("o-2"), order("o-1", "filled"), account("2.00")]
    )

    assert seqs(coalesce(items)) == [3, 4, 5]


def test_coalesce_keeps_every_fill_even_with_repeated_ids() -> None:
    items = stamp([fill("f-1"), position(), fill("f-2"), fill("f-1"), position()])

    got = coalesce(items)

    assert seqs(got) == [1, 3, 4, 5]
    assert all(isinstance(e, FillEvent) for e in got[:3])


def test_coalesce_of_nothing_is_nothing() -> None:
    assert coalesce([]) == []


@PROPERTY
@given(event_sequences())
def test_coalescing_never_changes_the_final_state_and_never_drops_a_fill(items: list[Event]) -> None:
    coalesced = coalesce(items)
    full, short = state_of(items), state_of(coalesced)

    assert short.positions == full.positions, "positions differ after coalescing"
    assert short.orders == full.orders, "orders differ after coalescing"
    assert short.account == full.account, "account differs after coalescing"
    assert list(short.fills) == list(full.fills), "fills differ after coalescing"
    fill_ids = {e.data.id for e in items if isinstance(e, FillEvent)}
    kept_fill_ids = {e.data.id for e in coalesced if isinstance(e, FillEvent)}
    assert kept_fill_ids == fill_ids, f"fill ids: expected {sorted(fill_ids)}, got {sorted(kept_fill_ids)}"
    fills_in = [e for e in items if isinstance(e, FillEvent)]
    fills_out = [e for e in coalesced if isinstance(e, FillEvent)]
    assert fills_out == fills_in, "every fill event must survive coalescing, in order"
    assert seqs(coalesced) == sorted(set(seqs(coalesced))), f"not in seq order: {seqs(coalesced)}"


@PROPERTY
@given(event_sequences())
def test_coalesce_keeps_exactly_the_last_event_of_each_key(items: list[Event]) -> None:
    last: dict[tuple[str, str], int] = {}
    for event in items:
        k = key(event)
        if k is not None:
            last[k] = event.seq
    expected = [e.seq for e in items if key(e) is None or last[key(e)] == e.seq]  # type: ignore[index]

    assert seqs(coalesce(items)) == expected


@PROPERTY
@given(event_sequences(), st.integers(min_value=0, max_value=40))
def test_coalesce_is_idempotent_and_composes_across_a_split(items: list[Event], cut: int) -> None:
    head, tail = items[:cut], items[cut:]

    assert coalesce(coalesce(items)) == coalesce(items)
    assert coalesce([*coalesce(head), *tail]) == coalesce(items)


def _terminal_stays_terminal(items: list[Event]) -> list[Event]:
    """The sequence with every order that once ended kept ended (as a broker reports it)."""
    ended: set[str] = set()
    out: list[Event] = []
    for event in items:
        if isinstance(event, OrderEvent):
            if event.data.id in ended and event.data.status not in TERMINAL_ORDER_STATUSES:
                event = msgspec.structs.replace(
                    event, data=msgspec.structs.replace(event.data, status="filled")
                )
            if event.data.status in TERMINAL_ORDER_STATUSES:
                ended.add(event.data.id)
        out.append(event)
    return out


@PROPERTY
@given(event_sequences().map(_terminal_stays_terminal), st.integers(min_value=1, max_value=2))
def test_coalescing_gives_the_same_orders_under_the_closed_order_cap_when_ended_orders_stay_ended(
    items: list[Event], cap: int
) -> None:
    full = state_of(items, max_closed_orders=cap)
    short = state_of(coalesce(items), max_closed_orders=cap)

    assert sorted(short.orders) == sorted(full.orders)
    assert short.orders == full.orders


@pytest.mark.xfail(
    strict=True,
    reason=(
        "BUG: coalesce() claims applying its result gives the same state as applying every event, but "
        "PortfolioState's closed-order cap is path dependent: o-2 ending pushes o-1 out of a cap of 1; "
        "if o-2 then reopens, the full sequence ends with {o-2} while the coalesced one (o-2's ending "
        "dropped) keeps {o-1, o-2}, so client and server disagree until the next snapshot"
    ),
)
def test_coalescing_gives_the_same_orders_under_the_closed_order_cap_when_an_order_reopens() -> None:
    items = stamp([order("o-1", "filled"), order("o-2", "filled"), order("o-2", "new")])

    full = state_of(items, max_closed_orders=1)
    short = state_of(coalesce(items), max_closed_orders=1)

    assert sorted(short.orders) == sorted(full.orders)


# ------------------------------------------------------------- leading edge


def test_an_isolated_event_after_a_quiet_window_is_due_immediately() -> None:
    b = batcher()
    b.add(stamp([fill()]), now=10.0)

    deadline = b.deadline()

    assert deadline is not None
    assert deadline <= 10.0, f"expected due at once (<= 10.0), got {deadline}"
    assert b.take(10.0) is not None


def test_an_event_a_full_window_after_the_last_flush_is_due_immediately() -> None:
    b = batcher()
    b.add(stamp([fill()]), now=10.0)
    b.take(10.0)

    b.add(stamp([fill()], start=1), now=10.0 + WINDOW)

    assert b.deadline() == 10.0 + WINDOW


def test_a_burst_within_the_window_is_one_batch_due_nine_tenths_of_a_window_after_the_last_flush() -> None:
    b = batcher()
    b.add(stamp([position("AAPL", "1")]), now=10.0)
    first = b.take(10.0)

    for n, t in enumerate([10.01, 10.05, 10.1, 10.2], start=1):
        b.add(stamp([position("AAPL", str(n + 1))], start=n), now=t)
    early = b.take(10.2)
    deadline = b.deadline()
    second = b.take(10.0 + WINDOW)

    assert first is not None
    assert (first.from_seq, first.to_seq) == (0, 1)
    assert early is None, f"expected nothing before the window passed, got {early}"
    assert deadline == pytest.approx(10.0 + WINDOW * (1 - EARLY))
    assert second is not None
    assert (second.from_seq, second.to_seq, second.events_in) == (1, 5, 4)
    assert seqs(second.events) == [5], "the burst of one symbol coalesces to its last position"


def test_a_late_flush_does_not_push_the_next_window_on() -> None:
    b = batcher()
    b.add(stamp([fill()]), now=10.0)
    b.take(10.0)
    b.add(stamp([fill()], start=1), now=10.1)
    b.take(10.3)  # due at 10.225, taken late by a busy loop

    b.add(stamp([fill()], start=2), now=10.31)

    assert b.deadline() == pytest.approx(10.225 + WINDOW * (1 - EARLY))


def test_events_once_a_window_wait_no_longer_however_late_each_flush_runs() -> None:
    """S2's re-marks: one per window on the user's grid (the first 20 ms late), each flush that
    waits for a timer run 5 ms after it was due. Counted from each late flush, the wait grew by
    5 ms a window until it was a whole one."""
    b = batcher()
    waits = []
    for k in range(200):
        arrival = 10.0 + k * WINDOW + (0.02 if k == 0 else 0.0)
        b.add(stamp([position("AAPL", str(k + 1))], start=k), now=arrival)
        due = b.deadline()
        assert due is not None
        taken_at = due + 0.005 if due > arrival else arrival
        assert b.take(taken_at) is not None
        waits.append(taken_at - arrival)

    assert max(waits[10:]) < EARLY * WINDOW


def test_without_leading_edge_the_first_event_waits_a_full_window() -> None:
    b = batcher(leading_edge=False)
    b.add(stamp([fill()]), now=10.0)

    assert b.deadline() == 10.0 + WINDOW
    assert b.take(10.0 + WINDOW / 2) is None
    assert b.take(10.0 + WINDOW) is not None


def test_without_leading_edge_the_window_counts_from_the_first_pending_event() -> None:
    b = batcher(leading_edge=False)
    b.add(stamp([fill()]), now=10.0)
    b.take(10.25)

    b.add(stamp([fill()], start=1), now=20.0)

    assert b.deadline() == 20.0 + WINDOW


@pytest.mark.parametrize("leading_edge", [True, False])
def test_window_zero_is_always_immediate(leading_edge: bool) -> None:
    b = batcher(window=0.0, leading_edge=leading_edge)
    taken = []
    for n, t in enumerate([1.0, 1.0, 1.001, 1.002]):
        b.add(stamp([fill()], start=n), now=t)
        assert b.deadline() == t
        taken.append(b.take(t))

    assert [(p.from_seq, p.to_seq) for p in taken if p] == [(0, 1), (1, 2), (2, 3), (3, 4)]


def test_negative_window_is_refused() -> None:
    with pytest.raises(ValueError, match="window_s"):
        batcher(window=-0.1)


def test_take_with_nothing_pending_is_none() -> None:
    b = batcher()

    assert (b.deadline(), b.take(100.0), b.take(100.0, force=True)) == (None, None, None)


def test_take_before_the_deadline_is_none_and_keeps_the_events() -> None:
    b = batcher()
    b.add(stamp([fill()]), now=0.0)
    b.take(0.0)
    b.add(stamp([fill("f-x")], start=1), now=0.1)

    assert b.take(0.2) is None
    got = b.take(0.3)

    assert got is not None
    assert [e.data.id for e in got.events] == ["f-x"]  # type: ignore[union-attr]


def test_force_take_flushes_before_the_deadline() -> None:
    b = batcher(leading_edge=False)
    b.add(stamp([fill()]), now=0.0)

    got = b.take(0.01, force=True)

    assert got is not None
    assert (got.from_seq, got.to_seq, len(got.events)) == (0, 1, 1)


def test_oldest_added_at_is_when_the_first_pending_event_arrived() -> None:
    b = batcher(leading_edge=False)
    b.add(stamp([fill()]), now=3.0)
    b.add(stamp([fill()], start=1), now=3.1)

    got = b.take(3.25)

    assert got is not None
    assert got.oldest_added_at == 3.0


# ------------------------------------------------------------ channel filter


def test_events_of_unsubscribed_channels_are_left_out_but_their_seqs_are_covered() -> None:
    b = batcher(channels=["trades"])
    b.add(stamp([position(), fill("f-1"), account()]), now=0.0)

    got = b.take(0.0)

    assert got is not None
    assert (got.from_seq, got.to_seq, got.events_in) == (0, 3, 1)
    assert [type(e).__name__ for e in got.events] == ["FillEvent"]


def test_only_unsubscribed_events_wait_for_a_forced_take_that_covers_their_seqs() -> None:
    b = batcher(channels=["trades"])
    b.add(stamp([position(), account()]), now=0.0)

    assert (b.deadline(), b.take(5.0)) == (None, None)
    got = b.take(5.0, force=True)

    assert got is not None
    assert (got.from_seq, got.to_seq, got.events, got.events_in) == (0, 2, [], 0)
    assert got.oldest_added_at is None


def test_forced_take_after_a_flush_with_nothing_new_is_none() -> None:
    b = batcher()
    b.add(stamp([fill()]), now=0.0)
    b.take(0.0)

    assert b.take(1.0, force=True) is None


# --------------------------------------------------------------- contiguity


def test_events_already_covered_are_ignored() -> None:
    b = batcher(cursor=5)
    b.add(stamp([fill(), fill()], start=3), now=0.0)

    assert (b.upto, b.deadline()) == (5, None)


def test_a_gap_in_seqs_is_refused() -> None:
    b = batcher(cursor=5)

    with pytest.raises(ValueError, match="expected seq 6, got 8"):
        b.add(stamp([fill()], start=7), now=0.0)


def test_a_refused_add_loses_no_event() -> None:
    b = batcher()
    good = stamp([fill("f-1")])
    with pytest.raises(ValueError, match="contiguous"):
        b.add([*good, *stamp([fill("f-3")], start=2)], now=0.0)

    got = b.take(0.0, force=True)

    delivered = [] if got is None else [e.seq for e in got.events if got.from_seq < e.seq <= got.to_seq]
    covered = 0 if got is None else got.to_seq
    assert delivered == list(range(1, covered + 1)), f"seqs 1..{covered} covered, only {delivered} delivered"


def test_consecutive_batches_are_contiguous() -> None:
    b = batcher(cursor=100)
    b.add(stamp([fill()], start=100), now=0.0)
    first = b.take(0.0)
    b.add(stamp([fill(), fill()], start=101), now=0.1)
    second = b.take(0.3)

    assert first is not None
    assert second is not None
    assert [(first.from_seq, first.to_seq), (second.from_seq, second.to_seq)] == [(100, 101), (101, 103)]


def test_reset_starts_over_from_the_new_cursor_with_the_new_channels() -> None:
    b = batcher(channels=["trades"])
    b.add(stamp([fill(), fill()]), now=0.0)

    b.reset(10, channels=["positions"])
    b.add(stamp([fill(), position()], start=10), now=1.0)
    got = b.take(1.0)

    assert got is not None
    assert (got.from_seq, got.to_seq) == (10, 12)
    assert [type(e).__name__ for e in got.events] == ["PositionEvent"]


def test_reset_discards_pending_events() -> None:
    b = batcher(leading_edge=False)
    b.add(stamp([fill()]), now=0.0)

    b.reset(1)

    assert (b.deadline(), b.take(10.0, force=True), b.upto) == (None, None, 1)


# --------------------------------------------------------------- properties


@dataclass
class Run:
    window: float
    leading_edge: bool
    channels: frozenset[str]
    cursor: int
    ops: list[tuple[str, float, list[Event]]] = field(default_factory=list)


@st.composite
def runs(draw: st.DrawFn) -> Run:
    run = Run(
        window=draw(st.sampled_from([0.0, 0.05, WINDOW, 1.0])),
        leading_edge=draw(st.booleans()),
        channels=frozenset(draw(channel_sets)),
        cursor=draw(st.integers(min_value=0, max_value=1000)),
    )
    for _ in range(draw(st.integers(min_value=0, max_value=24))):
        kind = draw(st.sampled_from(["add", "add", "take", "take", "force", "replay"]))
        dt = draw(st.sampled_from([0.0, 0.001, 0.01, 0.05, 0.1, 0.25, 0.3, 1.0, 2.0]))
        batch = draw(st.lists(events, min_size=1, max_size=4)) if kind == "add" else []
        run.ops.append((kind, dt, batch))
    return run


def _expected_deadline(run: Run, first_pending: float | None, last_flush: float) -> float | None:
    if first_pending is None:
        return None
    if run.window == 0:
        return first_pending
    if run.leading_edge:
        return max(first_pending, last_flush + run.window * (1 - EARLY))
    return first_pending + run.window


def _drive(run: Run) -> tuple[list[Event], list[tuple[float, bool, PendingBatch]], int]:
    """Play the run and check the flush policy at every step; returns what was added and taken."""
    b = Batcher(window_s=run.window, channels=run.channels, cursor=run.cursor, leading_edge=run.leading_edge)
    now, seq = 0.0, run.cursor
    added: list[Event] = []
    taken: list[tuple[float, bool, PendingBatch]] = []
    first_pending: float | None = None
    last_flush = -math.inf
    for kind, dt, batch in run.ops:
        now += dt
        if kind == "add":
            stamped = stamp(batch, start=seq)
            seq += len(stamped)
            added.extend(stamped)
            b.add(stamped, now)
            if first_pending is None and any(e.channel in run.channels for e in stamped):
                first_pending = now
        elif kind == "replay":
            # Events the batcher was already handed (a snapshot or replay covered them).
            b.add(added[-3:], now)
        else:
            force = kind == "force"
            due = _expected_deadline(run, first_pending, last_flush)
            got = b.take(now, force=force)
            should_emit = (due is not None and (force or now >= due)) or (
                force and seq > taken_upto(taken, run)
            )
            assert (got is not None) == should_emit, (
                f"take(now={now}, force={force}) with deadline {due}: expected "
                f"{'a batch' if should_emit else 'None'}, got {got}"
            )
            if got is not None:
                # A batch counts as flushed when it was due (a late take does not push the next on).
                flushed_at = now if due is None else min(now, due)
                taken.append((flushed_at, force, got))
                left = any(e.seq > got.to_seq and e.channel in run.channels for e in added)
                # A window of 0 takes one event at a time; the rest stay due.
                if not (run.window == 0 and left):
                    first_pending = None
                last_flush = flushed_at
        assert b.upto == seq
        assert b.deadline() == _expected_deadline(run, first_pending, last_flush), (
            f"deadline: expected {_expected_deadline(run, first_pending, last_flush)}, got {b.deadline()}"
        )
    final = b.take(now + 1000.0, force=True)
    if final is not None:
        taken.append((now + 1000.0, True, final))
    return added, taken, seq


def taken_upto(taken: list[tuple[float, bool, PendingBatch]], run: Run) -> int:
    return taken[-1][2].to_seq if taken else run.cursor


@PROPERTY
@given(runs())
def test_batches_are_contiguous_ordered_filtered_and_complete(run: Run) -> None:
    added, taken, last_seq = _drive(run)
    batches = [batch for _, _, batch in taken]

    # Contiguous from the initial cursor up to the last seq added.
    expected_from = run.cursor
    for batch in batches:
        assert batch.from_seq == expected_from, (
            f"gap: expected from_seq {expected_from}, got {batch.from_seq}"
        )
        assert batch.to_seq > batch.from_seq, f"empty range {batch.from_seq}..{batch.to_seq}"
        expected_from = batch.to_seq
    assert expected_from == last_seq, f"batches end at {expected_from}, events were added up to {last_seq}"

    for batch in batches:
        in_range = [e for e in added if batch.from_seq < e.seq <= batch.to_seq and e.channel in run.channels]
        # In seq order, inside the batch's range, of the subscribed channels only.
        assert seqs(batch.events) == sorted(set(seqs(batch.events))), (
            f"not in seq order: {seqs(batch.events)}"
        )
        assert all(batch.from_seq < e.seq <= batch.to_seq for e in batch.events)
        stray = {e.channel for e in batch.events} - run.channels
        assert not stray, f"events of unsubscribed channels {stray} in a batch for {set(run.channels)}"
        # Exactly the coalesced subscribed events of the range.
        assert batch.events == coalesce(in_range), (
            f"batch {batch.from_seq}..{batch.to_seq}: expected {seqs(coalesce(in_range))}, "
            f"got {seqs(batch.events)}"
        )
        assert batch.events_in == len(in_range)

    # Every subscribed event is delivered, or a later event of the same key
    # in the same batch replaced it.
    delivered = {e.seq for batch in batches for e in batch.events}
    for event in added:
        if event.channel not in run.channels or event.seq in delivered:
            continue
        (batch,) = [b for b in batches if b.from_seq < event.seq <= b.to_seq]
        k = key(event)
        assert k is not None, f"fill {event.seq} was dropped"
        assert any(key(e) == k and e.seq > event.seq for e in batch.events), f"event {event.seq} was lost"


@PROPERTY
@given(runs())
def test_timed_batches_are_nine_tenths_of_a_window_apart_counted_from_when_each_was_due(run: Run) -> None:
    _, taken, _ = _drive(run)
    timed = [at for at, forced, _ in taken if not forced]

    for earlier, later in itertools.pairwise(timed):
        assert later - earlier >= run.window * (1 - EARLY) - 1e-9, (
            f"batches due at {earlier} and {later}, window {run.window}"
        )


@PROPERTY
@given(runs())
def test_a_client_applying_the_batches_ends_with_the_servers_state(run: Run) -> None:
    added, taken, last_seq = _drive(run)
    server = PortfolioState()
    server.apply_events(added)
    client = PortfolioState()
    client.apply_snapshot(
        Snapshot(epoch="e-1", seq=run.cursor, server_time=TS, positions=[], orders=[], fills=[])
    )

    for _, _, pending in taken:
        outcome = client.apply_batch(
            Batch(
                epoch="e-1",
                from_seq=pending.from_seq,
                to_seq=pending.to_seq,
                server_time=TS,
                events=pending.events,
            )
        )
        assert outcome is BatchOutcome.APPLIED, f"batch {pending.from_seq}..{pending.to_seq}: {outcome}"

    assert client.seq == last_seq
    if "positions" in run.channels:
        assert client.positions == server.positions
    if "orders" in run.channels:
        assert client.orders == server.orders
    if "account" in run.channels:
        assert client.account == server.account
    if "trades" in run.channels:
        assert list(client.fills) == list(server.fills)


# ------------------------------------------------------------------ window 0


def test_a_window_of_zero_sends_every_event_in_a_frame_of_its_own_covering_every_seq() -> None:
    b = Batcher(window_s=0, channels=["positions", "account"], cursor=0)
    # seq 2 (a fill) is on a channel this connection does not take: a batch still covers it.
    b.add(stamp([position("AAPL", "1"), fill(), position("AAPL", "2"), account()]), now=10.0)

    batches = list(iter(lambda: b.take(10.0), None))

    assert [(x.from_seq, x.to_seq, seqs(x.events)) for x in batches] == [
        (0, 1, [1]),
        (1, 3, [3]),
        (3, 4, [4]),
    ], "one event per frame, nothing coalesced, and the frames' ranges are contiguous"


# ------------------------------------------------------------ encoded events


def test_a_batch_carries_the_encodings_of_exactly_the_events_it_keeps() -> None:
    b = batcher(channels=["positions", "account"])
    events = stamp([position("AAPL", "1"), fill(), position("AAPL", "2"), account(), position("MSFT", "3")])
    b.add(events, 10.0, [msgspec.json.encode(e) for e in events])

    batch = b.take(10.0)

    assert batch is not None and seqs(batch.events) == [3, 4, 5]
    assert batch.encoded == [msgspec.json.encode(e) for e in batch.events]


def test_one_add_without_encodings_makes_the_batch_fall_back_to_encoding_its_events() -> None:
    b = batcher()
    first, second = stamp([fill("f-1"), fill("f-2")])
    b.add([first], 10.0, [msgspec.json.encode(first)])
    b.add([second], 10.0)

    batch = b.take(10.0)

    assert batch is not None and batch.encoded is None and seqs(batch.events) == [1, 2]
