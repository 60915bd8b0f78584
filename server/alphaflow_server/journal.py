"""Journal: one user's epoch, contiguous sequence numbers and replay buffer (no I/O).

Every event the server accepts for a user is stamped here with the next
``seq``. The recent ones are kept so that a client that reconnects with
``resume`` gets exactly what it missed: at least ``retain_events`` events or
``retain_seconds`` of them, whichever is more, and never more than
``max_events`` (the memory bound that protects the server from a flood).

Events are kept encoded, as the JSON they travel as: about a third of the
memory of the decoded structs, and the bytes every connection's frame and the
durable store reuse, so an event is encoded once. A replay decodes them again.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Sequence

import msgspec

from alphaflow_live.protocol import Event

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
    ) -> None:
        if retain_events > max_events:
            raise ValueError("retain_events cannot exceed max_events")
        self.epoch = epoch
        self.seq = seq
        self._retain_events = retain_events
        self._retain_seconds = retain_seconds
        self._max_events = max_events
        # (monotonic time appended, the event encoded), oldest first. Seqs are contiguous, so an
        # entry's seq is its place after ``_first_seq`` (a seq per entry would cost 36 bytes each;
        # the time is one float shared by all the events of an append).
        self._entries: deque[tuple[float, bytes]] = deque()
        self._first_seq = seq + 1
        # The encoded size of the kept events (what the replay buffer costs, before overheads).
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def first_replayable_seq(self) -> int:
        """The lowest ``resume.seq`` that can still be served from memory."""
        if not self._entries:
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
        entries = self._entries
        if not entries:
            self._first_seq = self.seq + 1
        for event in events:
            self.seq += 1
            if owned:
                event.seq = self.seq
                sequenced = event
            else:
                sequenced = msgspec.structs.replace(event, seq=self.seq)
            raw = _encode_exact(sequenced)
            entries.append((now, raw))
            self.bytes += len(raw)
            stamped.append(sequenced)
            encoded.append(raw)
        self.trim(now)
        return stamped, encoded

    def append_stamped(self, first_seq: int, encoded: Sequence[bytes], now: float) -> None:
        """Keep events stamped elsewhere (a cluster's commit log), as the bytes they were stamped in.

        They must follow on: the first at ``seq + 1``, or anywhere when nothing is kept yet (a
        replay buffer that starts where Redis's does).
        """
        entries = self._entries
        if (entries or self.seq) and first_seq != self.seq + 1:
            raise ValueError(f"events from seq {first_seq} do not follow seq {self.seq}")
        if not entries:
            self._first_seq = first_seq
        for raw in encoded:
            entries.append((now, raw))
            self.bytes += len(raw)
        self.seq = first_seq + len(encoded) - 1
        self.trim(now)

    def restore(self, entries: Sequence[tuple[float, Event]]) -> None:
        """Load previously journaled events (oldest first), as after a restart."""
        for appended_at, event in entries:
            if not self._entries:
                self._first_seq = event.seq
            elif event.seq != self._last_seq + 1:
                raise ValueError(f"journal entries are not contiguous at seq {event.seq}")
            raw = _encode_exact(event)
            self._entries.append((appended_at, raw))
            self.bytes += len(raw)
        if self._entries:
            self.seq = max(self.seq, self._last_seq)

    @property
    def _last_seq(self) -> int:
        return self._first_seq + len(self._entries) - 1

    def truncate_after(self, seq: int) -> None:
        """Drop entries above ``seq`` and make it the current seq again."""
        while self._entries and self._last_seq > seq:
            self.bytes -= len(self._entries.pop()[1])
        self.seq = seq

    def trim(self, now: float) -> None:
        entries = self._entries
        horizon = now - self._retain_seconds
        while entries and (
            len(entries) > self._max_events
            or (len(entries) > self._retain_events and entries[0][0] <= horizon)
        ):
            self.bytes -= len(entries.popleft()[1])
            self._first_seq += 1

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
        stop = None if until is None else max(skip, until - self.first_replayable_seq)
        kept = itertools.islice(self._entries, skip, stop)
        if max_bytes is None:
            return [_decode(raw) for _, raw in kept]
        events: list[Event] = []
        size = 0
        for _, raw in kept:
            if events and size + len(raw) > max_bytes:
                break
            events.append(_decode(raw))
            size += len(raw)
        return events
