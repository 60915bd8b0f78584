"""Field deltas: the wire helpers, one connection's bases, and a client applying deltas ending in
exactly the state of one applying full events (a property test over publishes, flushes,
resubscribes that race batches in flight, and resyncs)."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from decimal import Decimal

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from alphaflow_live.deltas import apply_delta, changes, delta_frame, same
from alphaflow_live.protocol import (
    CHANNELS,
    Batch,
    Event,
    OrderEvent,
    PositionClosedEvent,
    PositionDeltaEvent,
    PositionEvent,
    ResumePoint,
    Snapshot,
    StreamEvent,
    Subscribe,
    Subscribed,
    encode,
    encode_batch,
    server_message_decoder,
)
from alphaflow_live.state import BatchOutcome, PortfolioState
from alphaflow_live.trusted import trusted_server_message_decoder
from alphaflow_server.batcher import PendingBatch
from alphaflow_server.bus import EventBus, JournalOptions
from alphaflow_server.field_deltas import FieldDeltas
from alphaflow_server.subscription import Outgoing, Subscription
from tests.support.client import exact_portfolio

from .factories import EVENT_POOL, TS, account, fill, order, position, position_closed, stamp

USER = "alice"
WINDOW = 0.25


def replace_data(event: Event, **fields: object) -> Event:
    return msgspec.structs.replace(event, data=msgspec.structs.replace(event.data, **fields))  # type: ignore[arg-type]


# ------------------------------------------------------------------ the wire helpers


def test_a_value_keeps_its_spelling_one_point_zero_is_not_one_point_zero_zero() -> None:
    assert same(Decimal("1.0"), Decimal("1.0"))
    assert not same(Decimal("1.0"), Decimal("1.00"))
    assert not same(Decimal("-0"), Decimal("0"))
    assert not same(None, Decimal("0"))
    assert same("x", "x")


def test_changes_carry_the_key_and_exactly_the_fields_that_differ() -> None:
    base = position("AAPL", "10", "187.20").data
    new = msgspec.structs.replace(base, current_price=Decimal("187.2"), updated_at="2026-01-05T14:30:00.000Z")

    assert changes(base, new) == {
        "symbol": "AAPL",
        "current_price": Decimal("187.2"),
        "updated_at": "2026-01-05T14:30:00.000Z",
    }
    assert changes(base, base) == {"symbol": "AAPL"}
    cash_only = msgspec.structs.replace(account("1.00").data, cash=Decimal("2.00"))
    assert changes(account("1.00").data, cash_only) == {"cash": Decimal("2.00")}  # an account has no key


def test_a_field_that_becomes_null_travels_as_null() -> None:
    base = msgspec.structs.replace(order("o-1", "new").data, limit_price=Decimal("10.5"))
    new = msgspec.structs.replace(base, limit_price=None)
    event = OrderEvent(seq=4, ts=TS, data=new)

    frame = msgspec.json.decode(delta_frame(event, base))

    assert frame == {
        "type": "order_delta",
        "seq": 4,
        "ts": TS,
        "channel": "orders",
        "data": {"id": "o-1", "limit_price": None},
    }


def test_a_delta_decoded_strict_or_trusted_applies_to_the_value_it_was_taken_from() -> None:
    base = position("AAPL", "10", "187.20").data
    new = msgspec.structs.replace(base, current_price=Decimal("190.125"), market_value=Decimal("1901.25"))
    frame = encode_batch("e", 0, 1, TS, [delta_frame(PositionEvent(seq=1, ts=TS, data=new), base)])

    for decoder in (server_message_decoder, trusted_server_message_decoder):
        batch = decoder.decode(frame)
        assert isinstance(batch, Batch)
        [delta] = batch.events
        assert isinstance(delta, PositionDeltaEvent)
        assert apply_delta(base, delta) == new
        assert encode(apply_delta(base, delta)) == encode(new)


# ------------------------------------------------------------------ one connection's bases


def test_the_first_event_of_a_key_goes_in_full_and_the_next_as_a_delta() -> None:
    deltas = FieldDeltas()
    first, second = stamp([position("AAPL", "10", "187.20"), position("AAPL", "10", "190.00")])

    out = deltas.encode([first, second], None, full=False)

    assert out[0] == encode(first)
    assert msgspec.json.decode(out[1])["type"] == "position_delta"
    assert len(out[1]) < len(out[0])


def test_fills_and_closed_positions_go_in_full_and_a_reopened_position_starts_in_full() -> None:
    deltas = FieldDeltas()
    events = stamp([position("AAPL"), fill("f-1"), position_closed("AAPL"), position("AAPL", "4")])

    out = deltas.encode(events, [encode(e) for e in events], full=False)

    assert out == [encode(e) for e in events]


def test_a_snapshot_is_the_base_and_a_reset_without_one_forgets_every_base() -> None:
    deltas = FieldDeltas()
    held = position("AAPL", "10", "187.20")
    deltas.reset(Snapshot(epoch="e", seq=1, server_time=TS, positions=[held.data], orders=[], account=None))
    [later] = stamp([position("AAPL", "10", "191.00")], start=1)

    assert msgspec.json.decode(deltas.encode([later], None, full=False)[0])["type"] == "position_delta"
    deltas.reset()
    assert deltas.encode([later], None, full=False) == [encode(later)]


def test_recovered_batches_go_in_full_but_still_set_the_bases() -> None:
    deltas = FieldDeltas()
    first, second = stamp([position("AAPL", "10", "187.20"), position("AAPL", "10", "190.00")])

    assert deltas.encode([first], None, full=True) == [encode(first)]
    assert msgspec.json.decode(deltas.encode([second], None, full=False)[0])["type"] == "position_delta"


def test_subscribed_says_when_deltas_are_on_and_stays_as_it_was_when_not() -> None:
    bus = EventBus(new_epoch=lambda: "e-1")
    stream = bus.user(USER)

    with_deltas = Subscription(window_s=WINDOW).subscribe(Subscribe(id=1, deltas=True), stream, TS)
    without = Subscription(window_s=WINDOW).subscribe(Subscribe(id=1), stream, TS)

    assert with_deltas[0] == Subscribed(channels=list(CHANNELS), recovered=False, deltas=True)
    assert (
        encode(without[0])
        == b'{"type":"subscribed","channels":["positions","orders","account","trades"],"recovered":false}'
    )


# ------------------------------------------------------------------ the property


def _variants() -> tuple[Event, ...]:
    """The pool's events of one symbol and one order (so that values come back to earlier ones,
    where a stale base would show), the accounts and fills, and events that differ from one of
    them in a field or in its spelling alone."""
    pool = [e for e in EVENT_POOL if _key_of(e) in {("position", "AAPL"), ("order", "o-1"), ("", "")}]
    extra: list[Event] = []
    for event in pool:
        if isinstance(event, PositionEvent):
            price = event.data.current_price
            extra.append(replace_data(event, current_price=Decimal(f"{price}0")))  # 187.20 → 187.200
            extra.append(replace_data(event, updated_at="2026-01-05T14:31:00.000Z"))
        elif isinstance(event, OrderEvent):
            extra.append(replace_data(event, limit_price=Decimal("10.50")))
            extra.append(replace_data(event, limit_price=Decimal("10.5"), filled_avg_price=None))
    return (*pool, *extra)


def _key_of(event: Event) -> tuple[str, str]:
    if isinstance(event, PositionEvent | PositionClosedEvent):
        return ("position", event.data.symbol)
    if isinstance(event, OrderEvent):
        return ("order", event.data.id)
    return ("", "")


VARIANTS = _variants()

publish = st.lists(st.sampled_from(VARIANTS), min_size=1, max_size=6).map(lambda e: ("publish", e))
advance = st.sampled_from((0.0, 0.1, 0.3)).map(lambda dt: ("advance", dt))
read = st.integers(1, 3).map(lambda n: ("read", n))
operations = st.lists(
    st.one_of(publish, advance, read, st.just(("resubscribe", 0)), st.just(("resync", 0))), max_size=60
)


@dataclass
class Connection:
    """One connection: the server's Subscription, the frames on the wire, and the client's state."""

    deltas: bool
    subscription: Subscription = field(init=False)
    wire: deque[bytes] = field(default_factory=deque)
    state: PortfolioState = field(default_factory=PortfolioState)

    def __post_init__(self) -> None:
        self.subscription = Subscription(window_s=WINDOW, replay_chunk_bytes=600)  # recoveries in chunks

    def send(self, out: list[Outgoing], epoch: str) -> None:
        """What the session does with what the subscription returns (``_push_batch``, ``_push``)."""
        for item in out:
            if isinstance(item, PendingBatch):
                events = self.subscription.batch_events(item)
                if events is None:
                    all_events: list[StreamEvent] = [*item.events]
                    batch = Batch(epoch=epoch, from_seq=item.from_seq, to_seq=item.to_seq, server_time=TS,
                                  events=all_events)  # fmt: skip
                    self.wire.append(encode(batch))
                else:
                    self.wire.append(encode_batch(epoch, item.from_seq, item.to_seq, TS, events))
            else:
                self.wire.append(encode(item))

    def read(self, count: int | None = None) -> None:
        """The client reads frames as the kernel does (trusted decode; snapshot or batch)."""
        while self.wire and (count is None or count > 0):
            message = trusted_server_message_decoder.decode(self.wire.popleft())
            if isinstance(message, Snapshot):
                self.state.apply_snapshot(message, merge_fills=True)
            elif isinstance(message, Batch):
                outcome = self.state.apply_batch(message)
                assert outcome in (BatchOutcome.APPLIED, BatchOutcome.DUPLICATE), outcome
            count = None if count is None else count - 1

    def subscribe(self, stream_: object) -> Subscribe:
        held = self.state
        resume = None if held.epoch is None or held.seq is None else ResumePoint(held.epoch, held.seq)
        return Subscribe(id=1, resume=resume, deltas=self.deltas)


def held_state(state: PortfolioState) -> tuple[tuple[bytes, bytes, bytes], list[str]]:
    """The state exactly as the wire spells it, and the fills held."""
    return exact_portfolio(state), [f.id for f in state.fills]


@settings(max_examples=500, deadline=None)
@given(operations)
def test_a_client_applying_deltas_ends_in_the_state_of_one_applying_full_events(ops: list) -> None:
    options = JournalOptions(retain_events=10_000, retain_seconds=0.0, max_events=10_000)
    bus = EventBus(new_epoch=lambda: "e-1", journal=options)
    stream = bus.user(USER)
    connections = [Connection(deltas=True), Connection(deltas=False)]
    now = 0.0
    for connection in connections:
        connection.send(
            connection.subscription.subscribe(connection.subscribe(stream), stream, TS), stream.epoch
        )
        bus.subscribe(USER, connection.subscription.add)

    def flush() -> None:
        for connection in connections:
            while (batch := connection.subscription.take_due(now)) is not None:
                connection.send([batch], stream.epoch)

    for kind, arg in ops:
        if kind == "publish":
            bus.publish(USER, list(arg), now)
            flush()
        elif kind == "advance":
            now += arg
            flush()
        elif kind == "read":
            for connection in connections:
                connection.read(arg)
        elif kind == "resubscribe":
            # Sent with what the client holds now; the frames still on the wire arrive before
            # the answer, so the recovery may overlap what the client applies meanwhile.
            for connection in connections:
                out = connection.subscription.subscribe(connection.subscribe(stream), stream, TS)
                connection.send(out, stream.epoch)
                while connection.subscription.replaying:
                    connection.send(connection.subscription.next_replay(stream, TS), stream.epoch)
        elif kind == "resync":
            # The outbox overflowed: what was queued is discarded, a snapshot follows.
            for connection in connections:
                connection.subscription.begin_resync()
                connection.wire.clear()
                snapshot = connection.subscription.end_resync(stream, TS)
                assert snapshot is not None
                connection.send([snapshot], stream.epoch)

    now += 10 * WINDOW
    flush()
    for connection in connections:
        connection.read()
    with_deltas, full = connections
    assert with_deltas.state.seq == full.state.seq == stream.seq
    assert held_state(with_deltas.state) == held_state(full.state)
    server = stream.state
    positions, _, account = exact_portfolio(with_deltas.state)
    server_positions, _, server_account = exact_portfolio(server)
    assert (positions, account) == (server_positions, server_account)  # as the server holds them


def test_a_delta_with_nothing_to_apply_to_stops_the_batch_and_leaves_the_seq() -> None:
    """What was applied before it is upserts and fills by id: the recovery from the seq held
    applies them again to the same effect."""
    state = PortfolioState()
    state.apply_snapshot(Snapshot(epoch="e", seq=0, server_time=TS, positions=[], orders=[], account=None))
    [event] = stamp([position("AAPL", "11")], start=1)
    frame = encode_batch(
        "e", 0, 2, TS, [encode(stamp([fill("f-9")])[0]), delta_frame(event, position("AAPL").data)]
    )  # type: ignore[arg-type]
    batch = trusted_server_message_decoder.decode(frame)
    assert isinstance(batch, Batch)

    assert state.apply_batch(batch) is BatchOutcome.MISSING_BASE
    assert state.seq == 0
    assert "AAPL" not in state.positions


def test_a_recovery_that_overlaps_batches_in_flight_goes_in_full() -> None:
    """The client resubscribes from seq 0 while three live batches are on their way; the recovery
    comes in two chunks, the second straddling the seq the client reaches meanwhile. A delta
    there would be taken against the first chunk's value, not the one the client holds."""
    options = JournalOptions(retain_events=10_000, retain_seconds=0.0, max_events=10_000)
    bus = EventBus(new_epoch=lambda: "e-1", journal=options)
    stream = bus.user(USER)
    at_10, at_12 = position("AAPL", "10", "10.00"), position("AAPL", "10", "12.00")
    big_fill = fill("f-" + "1" * 120, "o-" + "2" * 120)
    connection = Connection(deltas=True)
    chunk = len(encode(stamp([at_10])[0])) + len(encode(stamp([big_fill])[0]))
    connection.subscription = Subscription(window_s=WINDOW, replay_chunk_bytes=chunk)
    connection.send(connection.subscription.subscribe(connection.subscribe(stream), stream, TS), stream.epoch)
    bus.subscribe(USER, connection.subscription.add)
    connection.read()  # the client holds the snapshot at seq 0
    for now, event in ((0.0, at_10), (0.3, big_fill), (0.6, at_12)):
        bus.publish(USER, [event], now)
        connection.send([connection.subscription.take_due(now)], stream.epoch)  # type: ignore[list-item]
    bus.publish(USER, [at_10], 0.65)  # pending in the window when the resubscribe arrives

    connection.send(connection.subscription.subscribe(connection.subscribe(stream), stream, TS), stream.epoch)
    while connection.subscription.replaying:
        connection.send(connection.subscription.next_replay(stream, TS), stream.epoch)
    connection.read()

    assert connection.state.seq == 4
    assert connection.state.positions["AAPL"].current_price == Decimal("10.00")
