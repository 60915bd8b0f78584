"""Subscription: subscribe, resume, unsubscribe, live batches and resync, without a socket."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from msgspec import UNSET

from alphaflow_live.protocol import (
    CHANNELS,
    Batch,
    Error,
    Event,
    ResumePoint,
    Snapshot,
    Subscribe,
    Subscribed,
    Unsubscribe,
)
from alphaflow_live.state import BatchOutcome, PortfolioState
from alphaflow_server.batcher import PendingBatch, coalesce
from alphaflow_server.bus import EventBus, JournalOptions, UserStream
from alphaflow_server.subscription import Outgoing, Subscription

from .factories import TS, account, channel_sets, events, fill, order, position

PROPERTY = settings(max_examples=200, deadline=None)
EPOCH = "e-1"
WINDOW = 0.25
USER = "alice"


def new_bus(*, retain_events: int = 10_000) -> EventBus:
    # retain_seconds=0: the journal keeps exactly retain_events, whatever the clock says.
    options = JournalOptions(retain_events=retain_events, retain_seconds=0.0, max_events=retain_events)
    return EventBus(new_epoch=lambda: EPOCH, journal=options)


def stream_with(events_: Sequence[Event], *, retain_events: int = 10_000) -> tuple[EventBus, UserStream]:
    bus = new_bus(retain_events=retain_events)
    stream = bus.user(USER)
    if events_:
        bus.publish(USER, events_, 0.0)
    return bus, stream


def mixed() -> list[Event]:
    """One event of each channel, then a second position of the same symbol."""
    return [
        position("AAPL", "10"),
        order("o-1", "new"),
        account("1000.00"),
        fill("f-1"),
        position("AAPL", "12"),
        position("MSFT", "3"),
    ]


def listening(bus: EventBus, subscription: Subscription) -> None:
    """Hand the user's new events to the subscription, as the session's listener does."""
    bus.subscribe(USER, subscription.add)


def subscribed_to(
    stream: UserStream, channels: list[str] | None = None, *, window: float = WINDOW
) -> Subscription:
    subscription = Subscription(window_s=window)
    subscription.subscribe(Subscribe(id=1, channels=channels), stream, TS)
    return subscription


def kinds(out: Sequence[Outgoing]) -> list[str]:
    return [type(item).__name__ for item in out]


# ------------------------------------------------------------------ subscribe


def test_a_fresh_subscribe_gets_subscribed_then_a_snapshot_at_the_current_seq() -> None:
    _, stream = stream_with(mixed())
    subscription = Subscription(window_s=WINDOW)

    out = subscription.subscribe(Subscribe(id=1), stream, TS)

    assert out == [Subscribed(channels=list(CHANNELS), recovered=False), stream.state.to_snapshot(TS)]
    assert isinstance(out[1], Snapshot)
    assert out[1].seq == stream.seq == 6
    assert subscription.active
    assert subscription.batcher is not None
    assert subscription.batcher.cursor == 6


def test_channels_left_out_mean_every_channel() -> None:
    _, stream = stream_with([])

    out = Subscription(window_s=WINDOW).subscribe(Subscribe(id=1, channels=None), stream, TS)

    assert out[0] == Subscribed(channels=list(CHANNELS), recovered=False)


def test_the_snapshot_carries_only_the_subscribed_channels_in_protocol_order() -> None:
    _, stream = stream_with(mixed())

    out = Subscription(window_s=WINDOW).subscribe(
        Subscribe(id=1, channels=["trades", "positions", "trades"]), stream, TS
    )

    assert out[0] == Subscribed(channels=["positions", "trades"], recovered=False)
    snapshot = out[1]
    assert isinstance(snapshot, Snapshot)
    assert (snapshot.orders, snapshot.account) == (UNSET, UNSET)
    assert snapshot.positions != UNSET
    assert snapshot.fills != UNSET


def test_an_unknown_channel_is_invalid_channel_and_changes_nothing() -> None:
    _, stream = stream_with([])
    subscription = Subscription(window_s=WINDOW)

    out = subscription.subscribe(Subscribe(id=7, channels=["positions", "news"]), stream, TS)

    assert len(out) == 1
    assert isinstance(out[0], Error)
    assert (out[0].code, out[0].ref) == ("invalid_channel", 7)
    assert "'news'" in out[0].message
    assert not subscription.active


def test_an_empty_channel_list_is_invalid_channel() -> None:
    _, stream = stream_with([])
    subscription = Subscription(window_s=WINDOW)

    out = subscription.subscribe(Subscribe(id=3, channels=[]), stream, TS)

    assert out == [Error(code="invalid_channel", message="subscribe needs at least one channel", ref=3)]
    assert not subscription.active


# --------------------------------------------------------------------- resume


def test_a_resume_within_the_journal_recovers_exactly_the_missed_events_coalesced() -> None:
    _, stream = stream_with(mixed())

    out = Subscription(window_s=WINDOW).subscribe(
        Subscribe(id=1, channels=["positions", "trades"], resume=ResumePoint(EPOCH, 2)), stream, TS
    )

    missed = [e for e in stream.journal.events_after(2) if e.channel in ("positions", "trades")]
    assert [e.seq for e in missed] == [4, 5, 6]
    assert out == [
        Subscribed(channels=["positions", "trades"], recovered=True),
        PendingBatch(2, 6, coalesce(missed), 3, None, recovered=True),
    ]
    assert [e.seq for e in coalesce(missed)] == [4, 5, 6]


def test_a_resume_coalesces_the_positions_of_one_symbol() -> None:
    _, stream = stream_with(mixed())

    out = Subscription(window_s=WINDOW).subscribe(
        Subscribe(id=1, channels=["positions"], resume=ResumePoint(EPOCH, 0)), stream, TS
    )

    batch = out[1]
    assert isinstance(batch, PendingBatch)
    assert (batch.from_seq, batch.to_seq, batch.events_in) == (0, 6, 3)
    assert [e.seq for e in batch.events] == [5, 6]


def test_a_resume_at_the_current_seq_recovers_an_empty_batch() -> None:
    _, stream = stream_with(mixed())

    out = Subscription(window_s=WINDOW).subscribe(Subscribe(id=1, resume=ResumePoint(EPOCH, 6)), stream, TS)

    assert out == [
        Subscribed(channels=list(CHANNELS), recovered=True),
        PendingBatch(6, 6, [], 0, None, recovered=True),
    ]


def test_a_resume_of_another_epoch_gets_subscribed_then_resume_unavailable_then_a_snapshot() -> None:
    _, stream = stream_with(mixed())

    out = Subscription(window_s=WINDOW).subscribe(Subscribe(id=4, resume=ResumePoint("e-old", 3)), stream, TS)

    assert out == [
        Subscribed(channels=list(CHANNELS), recovered=False),
        Error(
            code="resume_unavailable",
            message="epoch 'e-old' is not the current epoch 'e-1'; a snapshot follows",
            ref=4,
        ),
        stream.state.to_snapshot(TS),
    ]


@pytest.mark.parametrize("seq", [7, 100])
def test_a_resume_past_the_current_seq_gets_resume_unavailable(seq: int) -> None:
    _, stream = stream_with(mixed())

    out = Subscription(window_s=WINDOW).subscribe(Subscribe(id=4, resume=ResumePoint(EPOCH, seq)), stream, TS)

    assert kinds(out) == ["Subscribed", "Error", "Snapshot"]
    assert out[1] == Error(
        code="resume_unavailable",
        message=f"seq {seq} is outside the replayable range 0..6; a snapshot follows",
        ref=4,
    )


def test_a_resume_older_than_the_replay_buffer_gets_resume_unavailable() -> None:
    _, stream = stream_with(mixed(), retain_events=3)
    assert stream.journal.first_replayable_seq == 3

    out = Subscription(window_s=WINDOW).subscribe(Subscribe(id=4, resume=ResumePoint(EPOCH, 2)), stream, TS)

    assert out[1] == Error(
        code="resume_unavailable",
        message="seq 2 is outside the replayable range 3..6; a snapshot follows",
        ref=4,
    )
    assert kinds(out) == ["Subscribed", "Error", "Snapshot"]


def test_a_resume_with_an_invalid_channel_is_only_invalid_channel() -> None:
    _, stream = stream_with(mixed())

    out = Subscription(window_s=WINDOW).subscribe(
        Subscribe(id=4, channels=["bogus"], resume=ResumePoint("e-old", 2)), stream, TS
    )

    assert kinds(out) == ["Error"]
    assert isinstance(out[0], Error)
    assert out[0].code == "invalid_channel"


# ---------------------------------------------------------------- unsubscribe


def test_unsubscribe_before_subscribe_is_invalid_message() -> None:
    out = Subscription(window_s=WINDOW).unsubscribe(Unsubscribe(id=5, channels=["trades"]), 0.0)

    assert out == [Error(code="invalid_message", message="not subscribed: send subscribe first", ref=5)]


def test_unsubscribe_checks_its_channels_before_the_subscription() -> None:
    out = Subscription(window_s=WINDOW).unsubscribe(Unsubscribe(id=5, channels=["news"]), 0.0)

    assert isinstance(out[0], Error)
    assert (out[0].code, out[0].ref) == ("invalid_channel", 5)


def test_unsubscribe_flushes_the_pending_events_of_the_remaining_channels_first() -> None:
    bus, stream = stream_with([])
    subscription = subscribed_to(stream)
    listening(bus, subscription)
    bus.publish(USER, [position("AAPL"), fill("f-9"), account("5.00")], 1.0)

    out = subscription.unsubscribe(Unsubscribe(id=2, channels=["trades"]), 1.0)

    assert kinds(out) == ["PendingBatch", "Subscribed"]
    batch = out[0]
    assert isinstance(batch, PendingBatch)
    assert (batch.from_seq, batch.to_seq) == (0, 3)
    assert [e.channel for e in batch.events] == ["positions", "account"]
    assert batch.encoded is None, "a filtered batch is encoded afresh"
    assert out[1] == Subscribed(channels=["positions", "orders", "account"], recovered=True)
    assert subscription.channels == ["positions", "orders", "account"]


def test_after_unsubscribe_the_next_batch_starts_where_the_flushed_one_ended() -> None:
    bus, stream = stream_with([])
    subscription = subscribed_to(stream)
    listening(bus, subscription)
    bus.publish(USER, [position("AAPL")], 1.0)
    subscription.unsubscribe(Unsubscribe(channels=["positions"]), 1.0)

    bus.publish(USER, [position("MSFT"), fill("f-2")], 2.0)
    batch = subscription.take_due(10.0)

    assert batch is not None
    assert (batch.from_seq, batch.to_seq) == (1, 3)
    assert [e.channel for e in batch.events] == ["trades"]


def test_unsubscribe_with_nothing_pending_sends_only_subscribed() -> None:
    _, stream = stream_with(mixed())
    subscription = subscribed_to(stream)

    out = subscription.unsubscribe(Unsubscribe(channels=list(CHANNELS)), 0.0)

    assert out == [Subscribed(channels=[], recovered=True)]


def test_unsubscribe_with_seqs_but_no_event_of_the_channels_sends_an_empty_batch() -> None:
    bus, stream = stream_with([])
    subscription = subscribed_to(stream, ["positions"])
    listening(bus, subscription)
    bus.publish(USER, [fill("f-3")], 1.0)

    out = subscription.unsubscribe(Unsubscribe(channels=["trades"]), 1.0)

    assert out == [PendingBatch(0, 1, [], 0, None), Subscribed(channels=["positions"], recovered=True)]


# ------------------------------------------------------------------ resubscribe


def test_a_resubscribe_resets_the_batcher_to_the_journal_seq() -> None:
    bus, stream = stream_with([])
    subscription = subscribed_to(stream)
    listening(bus, subscription)
    bus.publish(USER, [position("AAPL"), fill("f-4")], 1.0)
    batcher = subscription.batcher

    out = subscription.subscribe(Subscribe(id=2, channels=["trades"]), stream, TS)

    assert kinds(out) == ["Subscribed", "Snapshot"]
    assert subscription.batcher is batcher, "one batcher per connection"
    assert batcher is not None
    assert (batcher.cursor, batcher.channels) == (2, frozenset({"trades"}))
    assert subscription.take_due(10.0) is None, "the snapshot covers what was pending"
    bus.publish(USER, [fill("f-5")], 2.0)
    batch = subscription.take_due(10.0)
    assert batch is not None
    assert (batch.from_seq, batch.to_seq) == (2, 3)


# ---------------------------------------------------------------- live events


def test_events_before_the_first_subscribe_are_ignored() -> None:
    bus, _ = stream_with([])
    subscription = Subscription(window_s=WINDOW)
    listening(bus, subscription)

    bus.publish(USER, [position("AAPL")], 1.0)

    assert (subscription.deadline(), subscription.take_due(10.0)) == (None, None)


def test_live_events_become_batches_contiguous_with_the_snapshot() -> None:
    bus, stream = stream_with(mixed())
    subscription = subscribed_to(stream)
    listening(bus, subscription)

    bus.publish(USER, [position("AAPL", "1"), position("AAPL", "2")], 1.0)

    assert subscription.deadline() == 1.0, "leading edge: nothing was sent for a window"
    batch = subscription.take_due(1.0)
    assert batch is not None
    assert (batch.from_seq, batch.to_seq, batch.events_in) == (6, 8, 2)
    assert [e.seq for e in batch.events] == [8]
    assert batch.encoded is not None, "live batches reuse each event's encoding"


def test_the_heartbeat_seq_is_the_user_seq_then_what_the_client_was_sent() -> None:
    bus, stream = stream_with(mixed())
    subscription = Subscription(window_s=WINDOW)
    assert subscription.heartbeat_seq(stream) == 6

    subscription.subscribe(Subscribe(), stream, TS)
    listening(bus, subscription)
    bus.publish(USER, [fill("f-6")], 1.0)

    assert subscription.heartbeat_seq(stream) == 6, "the new event is not sent yet"
    subscription.take_due(1.0)
    assert subscription.heartbeat_seq(stream) == 7


# --------------------------------------------------------------------- resync


def test_a_pending_resync_drops_live_events_and_due_batches() -> None:
    bus, stream = stream_with([])
    subscription = subscribed_to(stream)
    listening(bus, subscription)
    bus.publish(USER, [position("AAPL")], 1.0)

    subscription.begin_resync()
    bus.publish(USER, [fill("f-7")], 1.5)

    assert subscription.resyncing
    assert (subscription.deadline(), subscription.take_due(10.0)) == (None, None)


def test_the_end_of_a_resync_is_a_snapshot_at_the_current_seq_and_a_reset_batcher() -> None:
    bus, stream = stream_with([])
    subscription = subscribed_to(stream, ["positions", "account"])
    listening(bus, subscription)
    bus.publish(USER, [position("AAPL")], 1.0)
    subscription.begin_resync()
    bus.publish(USER, [position("MSFT"), account("7.00")], 1.5)

    snapshot = subscription.end_resync(stream, TS)

    assert snapshot == stream.state.to_snapshot(TS, ["positions", "account"])
    assert snapshot is not None
    assert snapshot.seq == stream.seq == 3
    assert not subscription.resyncing
    assert subscription.batcher is not None
    assert subscription.batcher.cursor == 3
    assert subscription.take_due(10.0) is None
    bus.publish(USER, [account("8.00")], 2.0)
    batch = subscription.take_due(10.0)
    assert batch is not None
    assert batch.from_seq == 3, "the next batch starts at the resync's snapshot"


def test_a_resync_before_any_subscribe_waits_for_one() -> None:
    _, stream = stream_with(mixed())
    subscription = Subscription(window_s=WINDOW)
    subscription.begin_resync()

    assert subscription.end_resync(stream, TS) is None
    assert subscription.resyncing
    subscription.subscribe(Subscribe(channels=["orders"]), stream, TS)
    assert subscription.end_resync(stream, TS) == stream.state.to_snapshot(TS, ["orders"])


def test_no_resync_pending_means_no_snapshot() -> None:
    _, stream = stream_with(mixed())

    assert subscribed_to(stream).end_resync(stream, TS) is None


# ------------------------------------------------------------------ properties


@dataclass
class Client:
    """What a client holds after applying the frames it was sent, checking contiguity."""

    state: PortfolioState = field(default_factory=PortfolioState)
    frames: list[Any] = field(default_factory=list)

    def receive(self, out: Sequence[Outgoing]) -> None:
        for item in out:
            self.frames.append(item)
            if isinstance(item, Snapshot):
                self.state.apply_snapshot(item)
            elif isinstance(item, PendingBatch):
                self.batch(item)

    def batch(self, pending: PendingBatch) -> None:
        assert pending.from_seq == self.state.seq, (
            f"batches must be contiguous: expected from_seq {self.state.seq}, got {pending.from_seq}"
        )
        batch = Batch(
            epoch=EPOCH,
            from_seq=pending.from_seq,
            to_seq=pending.to_seq,
            server_time=TS,
            events=pending.events,
        )
        assert self.state.apply_batch(batch) is BatchOutcome.APPLIED


def contents(state: PortfolioState, channels: Sequence[str]) -> Snapshot:
    """The state of ``channels``, whatever seq it is as of (events of other channels move the seq).

    Orders by id: coalescing may change which order was seen first, and orders are keyed by id.
    """
    snapshot = state.to_snapshot(TS, channels)
    orders = snapshot.orders if snapshot.orders is UNSET else sorted(snapshot.orders, key=lambda o: o.id)
    return msgspec.structs.replace(snapshot, seq=0, orders=orders)


def drain(subscription: Subscription, client: Client, now: float) -> None:
    while (batch := subscription.take_due(now)) is not None:
        client.batch(batch)


chunks = st.lists(st.lists(events, min_size=1, max_size=5), max_size=6)


def replay_step(subscription: Subscription, stream: UserStream, client: Client) -> None:
    """The socket took what was queued: the next recovered batch goes out (as the session does)."""
    client.receive(subscription.next_replay(stream, TS))


@PROPERTY
@given(
    chunks, chunks, chunks, st.integers(1, 12), channel_sets.filter(bool), st.booleans(),
    st.sampled_from([256 * 1024, 400]),
)  # fmt: skip
def test_recovered_and_later_batches_give_the_state_of_a_snapshot(
    before: list[list[Event]],
    missed: list[list[Event]],
    after: list[list[Event]],
    retain: int,
    channels: set[str],
    same_epoch: bool,
    chunk_bytes: int,
) -> None:
    bus = new_bus(retain_events=retain)
    stream = bus.user(USER)
    wanted: list[str] = [c for c in CHANNELS if c in channels]
    now = 0.0
    for chunk in before:
        now += 1.0
        bus.publish(USER, chunk, now)
    client = Client()
    client.state.apply_snapshot(stream.state.to_snapshot(TS, wanted))
    resume_seq = stream.seq
    for chunk in missed:
        now += 1.0
        bus.publish(USER, chunk, now)

    subscription = Subscription(window_s=WINDOW, replay_chunk_bytes=chunk_bytes)
    resume = ResumePoint(EPOCH if same_epoch else "e-gone", resume_seq)
    recovered = same_epoch and stream.journal.can_resume(EPOCH, resume_seq)
    out = subscription.subscribe(Subscribe(channels=wanted, resume=resume), stream, TS)
    client.receive(out)
    listening(bus, subscription)
    for chunk in after:
        now += 1.0
        bus.publish(USER, chunk, now)
        replay_step(subscription, stream, client)
        drain(subscription, client, now)
    while subscription.replaying:
        replay_step(subscription, stream, client)
    drain(subscription, client, now + 10)

    assert kinds(out) == (
        ["Subscribed", "PendingBatch"] if recovered else ["Subscribed", "Error", "Snapshot"]
    )
    assert client.state.seq == subscription.heartbeat_seq(stream)
    if stream.journal.can_resume(EPOCH, client.state.seq):
        assert not [e for e in stream.journal.events_after(client.state.seq) if e.channel in wanted]
    assert contents(client.state, wanted) == contents(stream.state, wanted)


operations = st.lists(
    st.one_of(
        st.tuples(st.just("publish"), st.lists(events, min_size=1, max_size=4)),
        st.tuples(st.just("flush"), st.none()),
        st.tuples(st.just("unsubscribe"), st.sampled_from(CHANNELS)),
        st.tuples(st.just("resubscribe"), channel_sets.filter(bool)),
        st.tuples(st.just("overflow"), st.none()),
        st.tuples(st.just("drained"), st.none()),
    ),
    max_size=25,
)


@PROPERTY
@given(operations, st.sampled_from([0.0, WINDOW]))
def test_any_mix_of_changes_keeps_batches_contiguous_and_the_client_current(
    ops: list[tuple[str, Any]], window: float
) -> None:
    """The shell's part is modelled too: while a resync is pending nothing reaches the client."""
    bus, stream = stream_with([])
    subscription = Subscription(window_s=window)
    client = Client()
    client.receive(subscription.subscribe(Subscribe(), stream, TS))
    listening(bus, subscription)
    now = 0.0

    def send(out: Sequence[Outgoing]) -> None:
        if not subscription.resyncing:
            client.receive(out)

    for op, arg in ops:
        now += 0.1
        if op == "publish":
            bus.publish(USER, arg, now)
        elif op == "flush":
            drain(subscription, client, now)
        elif op == "unsubscribe":
            send(subscription.unsubscribe(Unsubscribe(channels=[arg]), now))
        elif op == "resubscribe":
            send(subscription.subscribe(Subscribe(channels=sorted(arg)), stream, TS))
        elif op == "overflow" and not subscription.resyncing:
            subscription.begin_resync()
        elif op == "drained":
            snapshot = subscription.end_resync(stream, TS)
            if snapshot is not None:
                client.receive([snapshot])
    if subscription.resyncing:
        snapshot = subscription.end_resync(stream, TS)
        assert snapshot is not None
        client.receive([snapshot])
    drain(subscription, client, now + 10)

    channels = subscription.channels
    # Events of other channels move no batch on their own; the next batch covers their seqs.
    assert client.state.seq == subscription.heartbeat_seq(stream)
    assert not [e for e in stream.journal.events_after(client.state.seq) if e.channel in channels]
    assert contents(client.state, channels) == contents(stream.state, channels)


# ------------------------------------------------------------- large recoveries


def fills(count: int, start: int = 0) -> list[Event]:
    return [fill(f"f-{i}") for i in range(start, start + count)]


def test_a_recovered_range_larger_than_one_frame_goes_out_as_contiguous_batches() -> None:
    bus, stream = stream_with(fills(200))
    subscription = Subscription(window_s=WINDOW, replay_chunk_bytes=4096)
    listening(bus, subscription)

    out = subscription.subscribe(Subscribe(resume=ResumePoint(EPOCH, 10)), stream, TS)
    batches = [item for item in out if isinstance(item, PendingBatch)]
    bus.publish(USER, fills(3, start=200), 1.0)  # live events while the recovery goes out
    assert subscription.deadline() is None, "live batches wait for the recovery"
    while subscription.replaying:
        assert subscription.heartbeat_seq(stream) == batches[-1].to_seq, "heartbeats vouch for what was sent"
        [item] = subscription.next_replay(stream, TS)
        assert isinstance(item, PendingBatch)
        batches.append(item)

    assert out[0] == Subscribed(channels=list(CHANNELS), recovered=True)
    assert len(batches) > 5, "one frame could not hold the range"
    assert [(b.from_seq, b.to_seq) for b in batches] == list(
        zip([10, *[b.to_seq for b in batches[:-1]]], [b.to_seq for b in batches], strict=True)
    )
    assert batches[-1].to_seq == 200
    assert [e.data.id for b in batches for e in b.events] == [f"f-{i}" for i in range(10, 200)]
    assert all(sum(len(msgspec.json.encode(e)) for e in b.events) <= 4096 for b in batches)
    live = subscription.take_due(1.0)
    assert live is not None and (live.from_seq, live.to_seq) == (200, 203), "then the live events, contiguous"
    assert subscription.next_replay(stream, TS) == []


def test_a_recovery_whose_rest_the_journal_dropped_ends_with_a_snapshot() -> None:
    bus, stream = stream_with(fills(100), retain_events=100)
    subscription = Subscription(window_s=WINDOW, replay_chunk_bytes=2048)
    listening(bus, subscription)
    out = subscription.subscribe(Subscribe(resume=ResumePoint(EPOCH, 0)), stream, TS)
    assert kinds(out) == ["Subscribed", "PendingBatch"] and subscription.replaying

    bus.publish(USER, fills(100, start=100), 1.0)  # the journal keeps 100: the rest of the range is gone
    [item] = subscription.next_replay(stream, TS)

    assert isinstance(item, Snapshot) and item.seq == 200
    assert not subscription.replaying
    assert subscription.take_due(10.0) is None, "the snapshot covers what was pending"
    bus.publish(USER, [fill("f-x")], 11.0)
    later = subscription.take_due(11.0)
    assert later is not None and later.from_seq == 200


def test_unsubscribe_during_a_recovery_waits_for_it_and_filters_what_follows() -> None:
    bus, stream = stream_with([position("AAPL", "1"), *fills(100)])
    subscription = Subscription(window_s=WINDOW, replay_chunk_bytes=2048)
    listening(bus, subscription)
    subscription.subscribe(Subscribe(resume=ResumePoint(EPOCH, 0)), stream, TS)
    bus.publish(USER, [position("MSFT", "2"), fill("f-live")], 1.0)

    out = subscription.unsubscribe(Unsubscribe(channels=["trades"]), 1.0)
    rest: list[PendingBatch] = []
    while subscription.replaying:
        rest += [b for b in subscription.next_replay(stream, TS) if isinstance(b, PendingBatch)]
    live = subscription.take_due(2.0)

    assert out == [Subscribed(channels=["positions", "orders", "account"], recovered=True)]
    assert all(e.channel != "trades" for b in rest for e in b.events)
    assert live is not None and (live.from_seq, live.to_seq) == (101, 103)
    assert [e.data.symbol for e in live.events] == ["MSFT"]
