"""Journal: contiguous seqs, retention ("at least N events or T seconds, whichever is more"), resume."""

from __future__ import annotations

import gc
from dataclasses import dataclass, field

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alphaflow_live.protocol import Event, encode
from alphaflow_server.journal import Journal

from .factories import event_sequences, events, fill, position, stamp

PROPERTY = settings(max_examples=200, deadline=None)


def seqs(items: list[Event]) -> list[int]:
    return [event.seq for event in items]


def filled(journal: Journal, count: int, now: float = 0.0) -> list[Event]:
    return journal.append([fill(f"f-{n}") for n in range(count)], now)


# ---------------------------------------------------------------------- append


def test_append_stamps_contiguous_seqs_from_the_start_seq() -> None:
    journal = Journal("e-1", seq=100)

    first = journal.append([position(), fill()], now=0.0)
    second = journal.append([fill()], now=1.0)

    assert (seqs(first), seqs(second), journal.seq) == ([101, 102], [103], 103)


def test_append_returns_stamped_copies_and_leaves_the_input_untouched() -> None:
    journal = Journal("e-1")
    event = fill("f-1")

    (stamped,) = journal.append([event], now=0.0)

    assert (event.seq, stamped.seq) == (0, 1)
    assert stamped.data == event.data
    assert stamped.ts == event.ts


def test_empty_append_changes_nothing() -> None:
    journal = Journal("e-1", seq=5)

    assert (journal.append([], now=0.0), journal.seq, len(journal)) == ([], 5, 0)


def test_retain_events_above_max_events_is_refused() -> None:
    with pytest.raises(ValueError, match="cannot exceed"):
        Journal("e-1", retain_events=10, max_events=5)


# ------------------------------------------------------------------- retention


def test_old_events_beyond_retain_events_are_trimmed() -> None:
    journal = Journal("e-1", retain_events=3, retain_seconds=10.0)
    filled(journal, 5, now=0.0)

    filled(journal, 1, now=11.0)

    assert len(journal) == 3, f"expected the 3 newest of 6 kept, got {len(journal)}"
    assert journal.first_replayable_seq == 3


def test_events_younger_than_retain_seconds_are_kept_beyond_retain_events() -> None:
    journal = Journal("e-1", retain_events=2, retain_seconds=10.0)
    filled(journal, 5, now=0.0)

    filled(journal, 1, now=9.0)

    assert len(journal) == 6


def test_an_event_just_younger_than_retain_seconds_is_kept() -> None:
    journal = Journal("e-1", retain_events=1, retain_seconds=10.0)
    filled(journal, 3, now=0.0)

    filled(journal, 1, now=9.999)

    assert len(journal) == 4


def test_at_least_retain_events_are_kept_however_old() -> None:
    journal = Journal("e-1", retain_events=4, retain_seconds=1.0)
    filled(journal, 4, now=0.0)

    filled(journal, 1, now=1000.0)

    assert len(journal) == 4
    assert journal.first_replayable_seq == 1


def test_max_events_bounds_even_young_events() -> None:
    journal = Journal("e-1", retain_events=2, retain_seconds=300.0, max_events=5)

    filled(journal, 8, now=0.0)

    assert (len(journal), journal.first_replayable_seq, journal.seq) == (5, 3, 8)


def test_trim_with_a_later_now_drops_expired_events() -> None:
    journal = Journal("e-1", retain_events=1, retain_seconds=5.0)
    filled(journal, 4, now=0.0)

    journal.trim(now=6.0)

    assert len(journal) == 1


# ---------------------------------------------------------------------- resume


def test_first_replayable_seq_of_an_empty_journal_is_its_seq() -> None:
    journal = Journal("e-1", seq=42)

    assert journal.first_replayable_seq == 42
    assert journal.can_resume("e-1", 42)
    assert journal.events_after(42) == []


def test_can_resume_needs_the_same_epoch() -> None:
    journal = Journal("e-1")
    filled(journal, 3)

    assert journal.can_resume("e-1", 1)
    assert not journal.can_resume("e-2", 1)


def test_can_resume_refuses_a_seq_ahead_of_the_journal() -> None:
    journal = Journal("e-1")
    filled(journal, 3)

    assert journal.can_resume("e-1", 3)
    assert not journal.can_resume("e-1", 4)


def test_resume_range_excludes_trimmed_events() -> None:
    journal = Journal("e-1", retain_events=3, retain_seconds=0.0, max_events=3)
    filled(journal, 10)

    assert journal.first_replayable_seq == 7
    assert journal.can_resume("e-1", 7)
    assert not journal.can_resume("e-1", 6)


def test_events_after_returns_exactly_the_later_events() -> None:
    journal = Journal("e-1", seq=10)
    filled(journal, 5)

    assert seqs(journal.events_after(12)) == [13, 14, 15]
    assert journal.events_after(15) == []


@pytest.mark.parametrize("seq", [5, 16])
def test_events_after_outside_the_replayable_range_raises(seq: int) -> None:
    journal = Journal("e-1", retain_events=3, max_events=3)
    filled(journal, 10)
    journal.append([fill()], now=0.0)

    with pytest.raises(ValueError, match="outside the replayable range"):
        journal.events_after(seq)


# --------------------------------------------------------------------- restore


def test_restore_loads_entries_and_continues_their_seqs() -> None:
    journal = Journal("e-1")
    journal.restore([(0.0, event) for event in stamp([position(), fill()], start=20)])

    appended = journal.append([fill()], now=1.0)

    assert (journal.first_replayable_seq, seqs(appended)) == (20, [23])
    assert seqs(journal.events_after(20)) == [21, 22, 23]


def test_restore_refuses_non_contiguous_entries() -> None:
    journal = Journal("e-1")
    first, second = stamp([position(), fill()])

    with pytest.raises(ValueError, match="not contiguous"):
        journal.restore([(0.0, first), (0.0, second), (0.0, first)])


# --------------------------------------------------------------------- property


@st.composite
def journal_runs(draw: st.DrawFn) -> tuple[dict[str, float | int], list[tuple[float, list[Event]]]]:
    retain_events = draw(st.integers(min_value=0, max_value=8))
    params: dict[str, float | int] = {
        "seq": draw(st.integers(min_value=0, max_value=1000)),
        "retain_events": retain_events,
        "retain_seconds": draw(st.sampled_from([0.0, 0.5, 1.0, 3.0])),
        "max_events": draw(st.integers(min_value=max(retain_events, 1), max_value=16)),
    }
    now = 0.0
    appends = []
    for _ in range(draw(st.integers(min_value=0, max_value=12))):
        now += draw(st.sampled_from([0.0, 0.1, 0.25, 0.5, 1.0, 2.0]))
        appends.append((now, draw(st.lists(events, max_size=5))))
    return params, appends


@PROPERTY
@given(journal_runs())
def test_journal_keeps_contiguous_seqs_replays_exactly_and_retains_as_promised(
    run: tuple[dict[str, float | int], list[tuple[float, list[Event]]]],
) -> None:
    params, appends = run
    start = int(params["seq"])
    journal = Journal("e-1", **params)  # type: ignore[arg-type]
    appended: list[tuple[float, Event]] = []
    for now, batch in appends:
        stamped = journal.append(batch, now)
        appended.extend((now, event) for event in stamped)

    # Seqs are contiguous from the start seq, and payloads are unchanged.
    total = len(appended)
    assert seqs([e for _, e in appended]) == list(range(start + 1, start + total + 1))
    assert journal.seq == start + total
    assert [e.data for _, e in appended] == [e.data for _, batch in appends for e in batch]

    # Retention: at least min(retain_events, total) and everything younger than
    # retain_seconds, never more than max_events, and always the newest ones.
    # An event exactly retain_seconds old may go either way.
    last_now = appends[-1][0] if appends else 0.0
    horizon = last_now - float(params["retain_seconds"])
    at_least = min(int(params["retain_events"]), total)
    younger = sum(1 for at, _ in appended if at > horizon)
    not_older = sum(1 for at, _ in appended if at >= horizon)
    cap = int(params["max_events"])
    low, high = min(cap, max(at_least, younger)), min(cap, max(at_least, not_older))
    assert low <= len(journal) <= high, f"expected {low}..{high} events kept, got {len(journal)}"
    assert journal.first_replayable_seq == journal.seq - len(journal), "the kept events are not the newest"

    # events_after(s) is exactly the events with seq > s for every replayable s.
    for s in range(journal.first_replayable_seq, journal.seq + 1):
        assert journal.can_resume("e-1", s)
        expected = [e for _, e in appended if e.seq > s]
        got = journal.events_after(s)
        assert got == expected, f"events_after({s}): expected {seqs(expected)}, got {seqs(got)}"
    assert not journal.can_resume("e-1", journal.seq + 1)
    if journal.first_replayable_seq > start:
        assert not journal.can_resume("e-1", journal.first_replayable_seq - 1)


@PROPERTY
@given(event_sequences(max_size=20), st.integers(min_value=0, max_value=20))
def test_restored_journal_replays_like_the_original(items: list[Event], cut: int) -> None:
    original = Journal("e-1")
    original.append([event for event in items], now=0.0)

    restored = Journal("e-1")
    restored.restore([(0.0, event) for event in original.events_after(0)])

    s = min(cut, original.seq)
    assert restored.seq == original.seq
    assert restored.events_after(s) == original.events_after(s)


@PROPERTY
@given(st.lists(st.integers(min_value=0, max_value=6), max_size=12), st.integers(min_value=0, max_value=6))
def test_the_byte_count_follows_every_append_trim_and_truncation(sizes: list[int], cut: int) -> None:
    journal = Journal("e-1", retain_events=3, retain_seconds=1.0, max_events=8)
    for now, size in enumerate(sizes):
        journal.append([fill(f"f-{now}-{k}") for k in range(size)], now=float(now))
        kept = journal.events_after(journal.first_replayable_seq)
        assert journal.bytes == sum(len(msgspec.json.encode(e)) for e in kept)
    journal.truncate_after(max(journal.first_replayable_seq, journal.seq - cut))
    kept = journal.events_after(journal.first_replayable_seq)
    assert journal.bytes == sum(len(msgspec.json.encode(e)) for e in kept)


# ---------------------------------------------------------------------- blocks


def test_a_rollback_across_a_block_boundary_reopens_the_sealed_block() -> None:
    journal = Journal("e-1", block_events=3)
    filled(journal, 4)

    journal.truncate_after(2)
    filled(journal, 2)

    assert (len(journal), journal.seq) == (4, 4)
    assert seqs(journal.events_after(0)) == [1, 2, 3, 4]
    assert [e.data.id for e in journal.events_after(0)] == ["f-0", "f-1", "f-0", "f-1"]  # type: ignore[union-attr]


def test_a_rollback_of_everything_leaves_an_empty_journal_that_continues() -> None:
    journal = Journal("e-1", retain_events=2, retain_seconds=0.0, max_events=2, block_events=3)
    filled(journal, 5)

    journal.truncate_after(1)

    assert (len(journal), journal.bytes, journal.first_replayable_seq) == (0, 0, 1)
    assert seqs(filled(journal, 4)) == [2, 3, 4, 5]
    assert seqs(journal.events_after(3)) == [4, 5]


def test_block_events_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="block_events must be at least 1"):
        Journal("e-1", block_events=0)


def test_kept_events_are_out_of_the_garbage_collectors_sight() -> None:
    journal = Journal("e-1", block_events=64)
    journal.append([fill(f"f-{n}") for n in range(5_000)], now=0.0)
    gc.collect()  # a collection untracks the tuples of sealed blocks, which hold only bytes

    # Every object the collector would walk from the journal, and the pointers it would visit.
    seen: set[int] = set()
    stack: list[object] = [journal]
    visits = 0
    while stack:
        obj = stack.pop()
        if id(obj) in seen or not gc.is_tracked(obj) or isinstance(obj, type):
            continue
        seen.add(id(obj))
        referents = gc.get_referents(obj)
        visits += len(referents)
        stack.extend(referents)

    blocks = 5_000 // 64
    assert len(journal) == 5_000
    assert visits < 2 * blocks, f"expected about one pointer per block ({blocks}) to visit, got {visits}"


# ------------------------------------------------------- against a reference model


@dataclass
class Reference:
    """The journal as a plain list of (time appended, encoding), the way it was first written."""

    seq: int
    retain_events: int
    retain_seconds: float
    max_events: int
    entries: list[tuple[float, bytes]] = field(default_factory=list)
    first_seq: int = 0

    def __post_init__(self) -> None:
        self.first_seq = self.seq + 1

    @property
    def first_replayable_seq(self) -> int:
        return self.first_seq - 1 if self.entries else self.seq

    def keep(self, encoded: list[bytes], now: float) -> None:
        if not self.entries:
            self.first_seq = self.seq + 1
        self.entries.extend((now, raw) for raw in encoded)
        self.seq += len(encoded)
        self.trim(now)

    def truncate_after(self, seq: int) -> None:
        while self.entries and self.first_seq + len(self.entries) - 1 > seq:
            self.entries.pop()
        self.seq = seq

    def trim(self, now: float) -> None:
        horizon = now - self.retain_seconds
        while self.entries and (
            len(self.entries) > self.max_events
            or (len(self.entries) > self.retain_events and self.entries[0][0] <= horizon)
        ):
            self.entries.pop(0)
            self.first_seq += 1

    def events_after(self, seq: int, until: int | None, max_bytes: int | None) -> list[bytes]:
        kept = [raw for n, (_, raw) in enumerate(self.entries, self.first_seq) if n > seq]
        kept = [raw for n, raw in enumerate(kept, seq + 1) if until is None or n <= until]
        if max_bytes is None or not kept:
            return kept
        chunk, size = [kept[0]], len(kept[0])
        for raw in kept[1:]:
            if size + len(raw) > max_bytes:
                break
            chunk.append(raw)
            size += len(raw)
        return chunk


Operation = tuple[str, float, int, list[Event]]

operations = st.tuples(
    st.sampled_from(["append", "append_stamped", "truncate_after", "trim"]),
    st.sampled_from([0.0, 0.4, 1.0, 2.5, -1.0]),  # the clock's step; it may go back
    st.integers(min_value=0, max_value=5),  # how many events a truncation drops
    st.lists(events, max_size=7),
)


@settings(max_examples=300, deadline=None)
@given(
    st.integers(min_value=0, max_value=50),
    st.integers(min_value=0, max_value=9),
    st.sampled_from([0.0, 1.0, 3.0]),
    st.integers(min_value=0, max_value=8),
    st.integers(min_value=1, max_value=4),
    st.lists(operations, max_size=25),
)
def test_the_journal_behaves_like_a_list_of_its_events(
    start: int,
    retain_events: int,
    retain_seconds: float,
    cap_extra: int,
    block_events: int,
    ops: list[Operation],
) -> None:
    max_events = max(retain_events, 1) + cap_extra
    journal = Journal(
        "e-1",
        seq=start,
        retain_events=retain_events,
        retain_seconds=retain_seconds,
        max_events=max_events,
        block_events=block_events,
    )
    model = Reference(start, retain_events, retain_seconds, max_events)
    now = 0.0
    for name, step, cut, batch in ops:
        now += step
        if name == "append":
            stamped, encoded = journal.append_encoded(batch, now)
            assert encoded == [encode(event) for event in stamped]
            assert all(type(raw) is bytes for raw in encoded)
            model.keep(encoded, now)
        elif name == "append_stamped":
            encoded = [encode(event) for event in stamp(batch, start=journal.seq)]
            journal.append_stamped(journal.seq + 1, encoded, now)
            model.keep(encoded, now)
        elif name == "truncate_after":
            journal.truncate_after(journal.seq - cut)
            model.truncate_after(model.seq - cut)
        else:
            journal.trim(now)
            model.trim(now)

        assert (journal.seq, len(journal), journal.first_replayable_seq) == (
            model.seq,
            len(model.entries),
            model.first_replayable_seq,
        )
        assert journal.bytes == sum(len(raw) for _, raw in model.entries)
        last = journal.seq
        for s in range(journal.first_replayable_seq, last + 1):
            for until in (None, s, s + 1, s + 3):
                for max_bytes in (None, 0, 1, 400, 900):
                    got = [encode(e) for e in journal.events_after(s, until=until, max_bytes=max_bytes)]
                    expected = model.events_after(s, until, max_bytes)
                    assert got == expected, (
                        f"events_after({s}, until={until}, max_bytes={max_bytes}): "
                        f"expected {len(expected)} events, got {len(got)}"
                    )
