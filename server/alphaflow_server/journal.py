"""Journal: one user's epoch, contiguous sequence numbers and replay buffer (no I/O).

Every event the server accepts for a user is stamped here with the next
``seq``. The recent ones are kept so that a client that reconnects with
``resume`` gets exactly what it missed: at least ``retain_events`` events or
``retain_seconds`` of them, whichever is more, and never more than
``max_events`` (the memory bound that protects the server from a flood).

Events are kept encoded, as the JSON they travel as: about a third of the
memory of the decoded structs, and the bytes every connection's frame and the
durable store reuse, so an event is encoded once. A replay decodes them again.

They are kept in blocks of ``block_events``, not as an object per event: a
sealed block is its events' encodings back to back in one ``bytes``, and where
each ends and when it was appended, packed in two more. The garbage collector
visits every element of a container: a deque of a tuple per event made every
full collection walk every kept event of every user, stalls of 50-130 ms every
few seconds under benchmark S2 (1,000 users), growing with the buffers. Bytes
hold no references, so a sealed block's tuple leaves the collector's sight
(a full collection over 1,000 users' 10,000 events: 160 ms before, 3 ms after),
and an event costs its encoding plus about 17 bytes instead of about 100. The
newest block stays open, a list of the very bytes ``append_encoded`` returns,
until it fills and is joined (a bytearray per user, grown in place, made
appends a third slower).
"""

from __future__ import annotations

import itertools
from array import array
from collections import deque
from collections.abc import Iterator, Sequence
from typing import Final

import msgspec

from alphaflow_live.protocol import Event

# Events per block: a few dozen blocks for a user's 10,000 events; a trim frees memory a block
# (about 100 KB of positions) at a time, and the open block is at most this many objects to collect.
BLOCK_EVENTS = 256

# A sealed block: the encodings back to back; the offset in them where each one ends (unsigned
# 64-bit); the monotonic time each was appended, as packed by ``array(_ENDS)`` and ``array(_TIMES)``.
_ENDS: Final = "Q"
_TIMES: Final = "d"
_Sealed = tuple[bytes, bytes, bytes]

_decode = msgspec.json.Decoder(Event).decode
_encoder = msgspec.json.Encoder(decimal_format="string")
_scratch = bytearray(4096)


def _encode_exact(event: Event) -> bytes:
    """``encode(event)`` in a bytes object of exactly its size.

    msgspec's ``encode`` returns bytes with spare capacity: about 595 bytes held
    for a 411-byte position. A replay buffer keeps a million of them, so encode
    into a scratch buffer and copy (measured 453 bytes held; faster, too). The
    journal runs on the event loop's thread only.
    """
    _encoder.encode_into(event, _scratch)
    return bytes(_scratch)


class Journal:
    def __init__(
        self,
        epoch: str,
        *,
        seq: int = 0,
        retain_events: int = 10_000,
        retain_seconds: float = 300.0,
        max_events: int = 1_000_000,
        block_events: int = BLOCK_EVENTS,
    ) -> None:
        if retain_events > max_events:
            raise ValueError("retain_events cannot exceed max_events")
        if block_events < 1:
            raise ValueError(f"block_events must be at least 1, got {block_events}")
        self.epoch = epoch
        self.seq = seq
        self._retain_events = retain_events
        self._retain_seconds = retain_seconds
        self._max_events = max_events
        self._block_events = block_events
        # The kept events, oldest first: sealed blocks of exactly ``block_events`` each (of which
        # the first ``_head`` events of the first are trimmed already), then the open block with
        # fewer, as a list and their times. Seqs are contiguous, so an event's seq is its place
        # after ``_first_seq`` (a seq per event would cost 8 bytes more each).
        self._sealed: deque[_Sealed] = deque()
        self._head = 0
        self._open: list[bytes] = []
        self._open_times = array(_TIMES)
        self._count = 0  # len(self), read on every append
        self._first_seq = seq + 1
        # The encoded size of the kept events (what the replay buffer costs, before overheads).
        self.bytes = 0

    def __len__(self) -> int:
        return self._count

    @property
    def first_replayable_seq(self) -> int:
        """The lowest ``resume.seq`` that can still be served from memory."""
        if not self._count:
            return self.seq
        return self._first_seq - 1

    def append(self, events: Sequence[Event], now: float, *, owned: bool = False) -> list[Event]:
        """Stamp the events with the next seqs, keep them, and return the stamped events."""
        return self.append_encoded(events, now, owned=owned)[0]

    def append_encoded(
        self, events: Sequence[Event], now: float, *, owned: bool = False
    ) -> tuple[list[Event], list[bytes]]:
        """``append``, also returning each stamped event encoded.

        The events are copies, unless ``owned``: the caller made them for this
        journal alone, and they are stamped in place (a copy per event is a
        measurable share of a re-mark of thousands of positions).
        """
        stamped: list[Event] = []
        encoded: list[bytes] = []
        if not self._count:
            self._first_seq = self.seq + 1
        for event in events:
            self.seq += 1
            if owned:
                event.seq = self.seq
                sequenced = event
            else:
                sequenced = msgspec.structs.replace(event, seq=self.seq)
            stamped.append(sequenced)
            encoded.append(_encode_exact(sequenced))
        self._keep(encoded, now)
        self.trim(now)
        return stamped, encoded

    def append_stamped(self, first_seq: int, encoded: Sequence[bytes], now: float) -> None:
        """Keep events stamped elsewhere (a cluster's commit log), as the bytes they were stamped in.

        They must follow on: the first at ``seq + 1``, or anywhere when nothing is kept yet (a
        replay buffer that starts where Redis's does).
        """
        empty = not self._count
        if (not empty or self.seq) and first_seq != self.seq + 1:
            raise ValueError(f"events from seq {first_seq} do not follow seq {self.seq}")
        if empty:
            self._first_seq = first_seq
        self._keep(encoded, now)
        self.seq = first_seq + len(encoded) - 1
        self.trim(now)

    def restore(self, entries: Sequence[tuple[float, Event]]) -> None:
        """Load previously journaled events (oldest first), as after a restart."""
        for appended_at, event in entries:
            if not self._count:
                self._first_seq = event.seq
            elif event.seq != self._last_seq + 1:
                raise ValueError(f"journal entries are not contiguous at seq {event.seq}")
            self._keep((_encode_exact(event),), appended_at)
        if self._count:
            self.seq = max(self.seq, self._last_seq)

    @property
    def _last_seq(self) -> int:
        return self._first_seq + self._count - 1

    def truncate_after(self, seq: int) -> None:
        """Drop entries above ``seq`` and make it the current seq again."""
        self._drop_last(min(self._count, max(0, self._last_seq - seq)))
        self.seq = seq

    def trim(self, now: float) -> None:
        most = self._count - self._retain_events
        if most <= 0:
            return  # the floor keeps them all (and it is below the cap)
        horizon = now - self._retain_seconds
        drop = max(0, self._count - self._max_events)
        # Beyond the cap, the oldest go while they are expired: walk from the oldest kept.
        for block, k, end in self._runs(drop, most):
            times = self._open_times if block is None else memoryview(block[2]).cast(_TIMES)
            for at in times[k:end]:
                if at > horizon:
                    self._drop_first(drop)
                    return
                drop += 1
        self._drop_first(drop)

    def can_resume(self, epoch: str, seq: int) -> bool:
        return epoch == self.epoch and self.first_replayable_seq <= seq <= self.seq

    def events_after(
        self, seq: int, *, until: int | None = None, max_bytes: int | None = None
    ) -> list[Event]:
        """The kept events with seqs above ``seq`` (up to ``until``), in order; callers check
        ``can_resume`` first. With ``max_bytes``, only the first ones whose encodings add up to
        that much (at least one, if there is any): a replay goes out in frames of bounded size."""
        if not self.first_replayable_seq <= seq <= self.seq:
            raise ValueError(
                f"seq {seq} is outside the replayable range {self.first_replayable_seq}..{self.seq}"
            )
        skip = seq - self.first_replayable_seq
        stop = len(self) if until is None else min(len(self), max(skip, until - self.first_replayable_seq))
        kept = self._encodings(skip, stop)
        if max_bytes is None:
            return [_decode(raw) for raw in kept]
        events: list[Event] = []
        size = 0
        for raw in kept:
            if events and size + len(raw) > max_bytes:
                break
            events.append(_decode(raw))
            size += len(raw)
        return events

    # --------------------------------------------------------------- storage

    def _keep(self, encoded: Sequence[bytes], now: float) -> None:
        self._count += len(encoded)
        self.bytes += sum(map(len, encoded))
        size = self._block_events
        done = 0
        while True:
            part = encoded[done : done + size - len(self._open)]
            done += len(part)
            self._open += part
            self._open_times.extend(itertools.repeat(now, len(part)))
            if len(self._open) < size:
                return
            ends = array(_ENDS, itertools.accumulate(map(len, self._open)))
            self._sealed.append((b"".join(self._open), ends.tobytes(), self._open_times.tobytes()))
            self._open, self._open_times = [], array(_TIMES)

    def _runs(self, start: int, stop: int) -> Iterator[tuple[_Sealed | None, int, int]]:
        """The kept events ``start`` to ``stop`` (0 is the oldest kept) as runs within a block:
        the sealed block (None for the open one), the run's first index there and the one after."""
        size = self._block_events
        full = len(self._sealed) * size
        at, stop = self._head + start, self._head + stop
        while at < stop:
            if at < full:
                k = at % size
                end = min(size, k + stop - at)
                yield self._sealed[at // size], k, end
            else:
                k = at - full
                end = k + stop - at
                yield None, k, end
            at += end - k

    def _encodings(self, start: int, stop: int) -> Iterator[bytes]:
        for block, k, end in self._runs(start, stop):
            if block is None:
                yield from self._open[k:end]
                continue
            data, packed_ends, _ = block
            ends = memoryview(packed_ends).cast(_ENDS)
            begin = ends[k - 1] if k else 0
            for finish in ends[k:end]:
                yield data[begin:finish]
                begin = finish

    def _drop_first(self, count: int) -> None:
        """Trim the ``count`` oldest events; a sealed block's memory goes when all of it has."""
        self._first_seq += count
        self._count -= count
        size = self._block_events
        while count and self._sealed:
            ends = memoryview(self._sealed[0][1]).cast(_ENDS)
            head = self._head
            taken = min(count, size - head)
            self.bytes -= ends[head + taken - 1] - (ends[head - 1] if head else 0)
            count -= taken
            self._head = head + taken
            if self._head == size:
                self._sealed.popleft()
                self._head = 0
        if count:  # the open block is the first
            self.bytes -= sum(map(len, self._open[:count]))
            del self._open[:count], self._open_times[:count]

    def _drop_last(self, count: int) -> None:
        """Drop the ``count`` newest events (a rollback), reopening sealed blocks as needed."""
        self._count -= count
        while count:
            if not self._open:
                self._reopen()
            keep = max(0, len(self._open) - count)
            self.bytes -= sum(map(len, self._open[keep:]))
            count -= len(self._open) - keep
            del self._open[keep:], self._open_times[keep:]

    def _reopen(self) -> None:
        """Make the last sealed block the open one again (the open one is empty)."""
        data, packed_ends, packed_times = self._sealed.pop()
        ends = memoryview(packed_ends).cast(_ENDS)
        self._open = [data[begin:finish] for begin, finish in itertools.pairwise(itertools.chain((0,), ends))]
        self._open_times = array(_TIMES, packed_times)
        if not self._sealed:  # it was the first, so its trimmed events go now
            del self._open[: self._head], self._open_times[: self._head]
            self._head = 0
