"""Batcher: one connection's channel filter, coalescing and flush policy (no I/O).

Events arrive stamped with contiguous seqs. A batch covers every seq since the
previous one (``from_seq`` is the previous ``to_seq``), carrying the events of
the subscribed channels, coalesced. When to flush:

* leading edge: an event that arrives when nothing was sent for a whole window
  goes out at once, so an isolated fill reaches the client in milliseconds;
* otherwise the batch waits until a window has passed since the last flush, so a
  burst of price ticks becomes one frame per window. "Since the last flush"
  counts from when it was due, not from when a busy loop got to it, and a
  batch may go a tenth of a window early (``EARLY``): re-marks come once a
  window, on the user's phase, and with a window counted from each late flush
  they arrived just before it was up and waited nearly all of it, a lag that
  grew by every flush's lateness (S2's p99);
* with ``leading_edge=False`` every batch waits a full window from its first
  event (the behaviour of a plain periodic batcher);
* a window of 0 sends every event at once, in a frame of its own (no batching
  at all: the baseline the benchmarks compare batching with).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from alphaflow_live.protocol import (
    AccountEvent,
    Event,
    FillEvent,
    OrderEvent,
    PositionClosedEvent,
    PositionEvent,
)

# How early in its window a batch may go (a fraction of the window); see the module's docstring.
EARLY: Final = 0.1


def coalesce(events: Sequence[Event]) -> list[Event]:
    """Keep the last position per symbol, order per id and account; every fill stays.

    The survivors keep their seq order. Applying the result gives the same
    state as applying every event, which the property tests check.
    """
    return [events[i] for i in survivors(events)]


def survivors(events: Sequence[Event]) -> list[int]:
    """The indices of the events ``coalesce`` keeps, ascending."""
    seen: set[tuple[str, str]] = set()
    kept: list[int] = []
    for i in range(len(events) - 1, -1, -1):
        event = events[i]
        key: tuple[str, str]
        if isinstance(event, FillEvent):
            kept.append(i)
            continue
        if isinstance(event, PositionEvent | PositionClosedEvent):
            key = ("position", event.data.symbol)
        elif isinstance(event, OrderEvent):
            key = ("order", event.data.id)
        elif isinstance(event, AccountEvent):
            key = ("account", "")
        else:  # pragma: no cover - the Event union is closed
            raise TypeError(f"unexpected event {type(event).__name__}")
        if key not in seen:
            seen.add(key)
            kept.append(i)
    kept.reverse()
    return kept


@dataclass(frozen=True, slots=True)
class PendingBatch:
    from_seq: int
    to_seq: int
    events: list[Event]
    # How many events of the subscribed channels went in before coalescing.
    events_in: int
    # When the oldest of them was added (for delivery latency); None if empty.
    oldest_added_at: float | None
    # ``events`` encoded, when every event came with its encoding (then a frame is a join).
    encoded: list[bytes] | None = None
    # Part of a recovery (resume): its events go out in full even where field deltas are on.
    recovered: bool = False


class Batcher:
    def __init__(
        self,
        *,
        window_s: float,
        channels: Iterable[str],
        cursor: int,
        leading_edge: bool = True,
    ) -> None:
        if window_s < 0:
            raise ValueError("window_s must be >= 0")
        self.window_s = window_s
        self.leading_edge = leading_edge
        self.channels = frozenset(channels)
        self.cursor = cursor
        self._upto = cursor
        self._pending: list[Event] = []
        # The pending events encoded, while every add brought the encodings along.
        self._pending_encoded: list[bytes] | None = []
        self._first_pending_at: float | None = None
        self._last_flush_at = -math.inf

    def reset(self, cursor: int, *, channels: Iterable[str] | None = None) -> None:
        """Start over from ``cursor`` (after a snapshot or a replay the client now holds)."""
        if channels is not None:
            self.channels = frozenset(channels)
        self.cursor = cursor
        self._upto = cursor
        self._pending = []
        self._pending_encoded = []
        self._first_pending_at = None

    def narrow(self, channels: Iterable[str]) -> None:
        """Subscribe to ``channels`` alone from now on, dropping what is pending of the others
        (an unsubscribe while nothing pending may go out yet)."""
        self.channels = frozenset(channels)
        raws = self._pending_encoded
        kept = [i for i, event in enumerate(self._pending) if event.channel in self.channels]
        self._pending = [self._pending[i] for i in kept]
        if raws is not None:
            self._pending_encoded = [raws[i] for i in kept]
        if not self._pending:
            self._first_pending_at = None

    @property
    def upto(self) -> int:
        """The highest seq handed to this batcher."""
        return self._upto

    def add(self, events: Sequence[Event], now: float, encoded: Sequence[bytes] | None = None) -> None:
        """Take events (and, optionally, each one encoded) stamped with the next seqs."""
        upto = self._upto
        start = 0
        while start < len(events) and events[start].seq <= upto:
            start += 1  # what a snapshot or replay covered already
        # Check before changing anything, so a broken call cannot lose the events before its gap.
        for expected, event in enumerate(events[start:], start=upto + 1):
            if event.seq != expected:
                raise ValueError(f"events must be contiguous: expected seq {expected}, got {event.seq}")
        pending, raws, channels = self._pending, self._pending_encoded, self.channels
        if encoded is None:
            raws = self._pending_encoded = None
        for i in range(start, len(events)):
            event = events[i]
            if event.channel in channels:
                pending.append(event)
                if raws is not None and encoded is not None:
                    raws.append(encoded[i])
        if len(events) > start:
            self._upto = events[-1].seq
        if pending and self._first_pending_at is None:
            self._first_pending_at = now

    def deadline(self) -> float | None:
        """When the pending batch is due (monotonic seconds), or None if nothing is pending."""
        first = self._first_pending_at
        if first is None:
            return None
        if self.window_s == 0:
            return first
        if self.leading_edge:
            return max(first, self._last_flush_at + self.window_s * (1 - EARLY))
        return first + self.window_s

    def take(self, now: float, *, force: bool = False) -> PendingBatch | None:
        """The pending batch if it is due (or ``force``), advancing the cursor."""
        deadline = self.deadline()
        if deadline is None:
            if force and self._upto > self.cursor:
                return self._emit([], now)
            return None
        if not force and now < deadline:
            return None
        # The window that follows counts from when this batch was due, however late it goes.
        due = min(now, deadline)
        if self.window_s == 0 and not force and len(self._pending) > 1:
            # One frame per event; the next call takes the next one (``force`` takes them all).
            first, *rest = self._pending
            raws = self._pending_encoded
            batch = PendingBatch(
                self.cursor, first.seq, [first], 1, self._first_pending_at, None if raws is None else raws[:1]
            )
            self.cursor = first.seq
            self._pending = rest
            if raws is not None:
                del raws[0]
            self._last_flush_at = due
            return batch
        return self._emit(self._pending, due)

    def _emit(self, pending: list[Event], flushed_at: float) -> PendingBatch:
        kept = survivors(pending)
        raws = self._pending_encoded
        batch = PendingBatch(
            from_seq=self.cursor,
            to_seq=self._upto,
            events=[pending[i] for i in kept],
            events_in=len(pending),
            oldest_added_at=self._first_pending_at,
            encoded=None if raws is None else [raws[i] for i in kept],
        )
        self.cursor = self._upto
        self._pending = []
        self._pending_encoded = []
        self._first_pending_at = None
        self._last_flush_at = flushed_at
        return batch
