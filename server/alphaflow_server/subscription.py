"""Subscription: one portfolio connection's channels, resume, batching and resync (no I/O).

The rules, as PROTOCOL.md states them, that this class keeps:

* ``subscribed`` is the first frame after every ``subscribe``; then either a
  ``snapshot`` (after ``resume_unavailable`` when a resume point could not be
  served) or the recovered batches, never both. What was missed goes out
  as contiguous batches of at most ``replay_chunk_bytes`` of events each (one,
  possibly empty, for a short range): the first with the answer, the rest one
  at a time as the socket takes them (``next_replay``), so a large range never
  swamps the outbox. Live events wait in the batcher until the last recovered
  batch is out; should the journal drop the rest of the range meanwhile, a
  snapshot at the current seq takes its place.
* Batches are contiguous on the connection: each starts where the previous
  batch or the last snapshot ended. A (re)subscribe restarts the batcher at
  the journal's seq, which the snapshot or the recovered batch just reached;
  an unsubscribe first flushes what is pending for the remaining channels.
* Field deltas, when the subscribe asked for them: every subscribe and every
  snapshot resets the connection's bases (``FieldDeltas``), and recovered
  batches carry full events, so the client and this side always agree on
  what a delta applies to.
* While a resync is pending (the outbox overflowed and was discarded), live
  events and due batches are dropped: the snapshot that ends the resync, taken
  at the user's current seq, supersedes them.

The shell (``session``) feeds it client messages and live events with the
time, and moves what it returns into the outbox. A ``PendingBatch`` returned
is a ``batch`` frame still to be stamped with the epoch and the server time.
"""

from __future__ import annotations

from collections.abc import Sequence

from msgspec import UNSET

from alphaflow_live.protocol import (
    CHANNELS,
    Channel,
    Error,
    ErrorCode,
    Event,
    MessageError,
    MessageId,
    ResumePoint,
    Snapshot,
    Subscribe,
    Subscribed,
    Unsubscribe,
    validate_channels,
)

from .batcher import Batcher, PendingBatch, coalesce
from .bus import UserStream
from .field_deltas import FieldDeltas

Outgoing = Error | Subscribed | Snapshot | PendingBatch

# Events per recovered batch, in encoded bytes: a frame any client accepts (websockets' default
# max_size is 1 MiB), several of which stay well within a connection's backlog bound.
REPLAY_CHUNK_BYTES = 256 * 1024


class Subscription:
    """One connection's subscription: its channels, its Batcher (from the first subscribe), its resync."""

    def __init__(
        self, *, window_s: float, leading_edge: bool = True, replay_chunk_bytes: int = REPLAY_CHUNK_BYTES
    ) -> None:
        self._window_s = window_s
        self._leading_edge = leading_edge
        self._replay_chunk_bytes = replay_chunk_bytes
        # None until the first subscribe.
        self.batcher: Batcher | None = None
        # The outbox overflowed: nothing more goes out until the resync's snapshot.
        self.resyncing = False
        # A recovery still going out: (the seq the client has been sent, the seq it ends at).
        self._replay: tuple[int, int] | None = None
        # The connection's bases when the last subscribe asked for field deltas.
        self.deltas: FieldDeltas | None = None

    @property
    def replaying(self) -> bool:
        """Whether recovered batches are still to go out (``next_replay``) before live ones."""
        return self._replay is not None

    @property
    def active(self) -> bool:
        """Whether a subscribe was accepted (then the connection listens to the user's events)."""
        return self.batcher is not None

    @property
    def channels(self) -> list[Channel]:
        """The subscribed channels, in protocol order."""
        batcher = self.batcher
        return [] if batcher is None else [c for c in CHANNELS if c in batcher.channels]

    # -------------------------------------------------------- client messages

    def subscribe(self, message: Subscribe, stream: UserStream, server_time: str) -> list[Outgoing]:
        """The frames that answer ``message``, in order; an invalid one changes nothing."""
        try:
            channels = _channels(CHANNELS if message.channels is None else message.channels, message.id)
        except MessageError as exc:
            return [exc.to_error()]
        if not channels:
            return [_error("invalid_channel", "subscribe needs at least one channel", message.id)]
        journal = stream.journal
        resume = message.resume
        if self.batcher is None:
            self.batcher = Batcher(
                window_s=self._window_s,
                leading_edge=self._leading_edge,
                channels=channels,
                cursor=journal.seq,
            )
        else:
            self.batcher.reset(journal.seq, channels=channels)
        self.deltas = FieldDeltas() if message.deltas else None
        deltas = True if message.deltas else UNSET
        if resume is not None and journal.can_resume(resume.epoch, resume.seq):
            self._replay = (resume.seq, journal.seq)
            subscribed = Subscribed(channels=channels, recovered=True, deltas=deltas)
            return [subscribed, *self.next_replay(stream, server_time)]
        self._replay = None
        out: list[Outgoing] = [Subscribed(channels=channels, recovered=False, deltas=deltas)]
        if resume is not None:
            out.append(_resume_unavailable(resume, stream, message.id))
        out.append(self._snapshot(stream, server_time))
        return out

    def next_replay(self, stream: UserStream, server_time: str) -> list[Outgoing]:
        """The next recovered batch (nothing once the recovery is out).

        The range was replayable when the client subscribed; if the journal has
        trimmed what is left of it since, a snapshot at the current seq ends the
        recovery instead (the batcher restarts there).
        """
        if self._replay is None or self.batcher is None:
            return []
        sent, end = self._replay
        journal = stream.journal
        if not journal.can_resume(journal.epoch, sent):
            self._replay = None
            self.batcher.reset(stream.seq)
            return [self._snapshot(stream, server_time)]
        events = journal.events_after(sent, until=end, max_bytes=self._replay_chunk_bytes)
        to_seq = sent + len(events)
        self._replay = (to_seq, end) if to_seq < end else None
        missed = [e for e in events if e.channel in self.batcher.channels]
        return [PendingBatch(sent, to_seq, coalesce(missed), len(missed), None, recovered=True)]

    def unsubscribe(self, message: Unsubscribe, now: float) -> list[Outgoing]:
        """The pending events of the remaining channels (if any), then ``subscribed``."""
        try:
            removed = set(_channels(message.channels, message.id))
        except MessageError as exc:
            return [exc.to_error()]
        batcher = self.batcher
        if batcher is None:
            return [_error("invalid_message", "not subscribed: send subscribe first", message.id)]
        remaining = [c for c in CHANNELS if c in batcher.channels and c not in removed]
        if self.replaying:
            # Nothing live may go out before the recovery: what is pending follows it, narrowed.
            batcher.narrow(remaining)
            return [Subscribed(channels=remaining, recovered=True)]
        pending = batcher.take(now, force=True)
        batcher.channels = frozenset(remaining)
        out: list[Outgoing] = [] if pending is None else [_filtered(pending, remaining)]
        out.append(Subscribed(channels=remaining, recovered=True))
        return out

    # ------------------------------------------------------------ live events

    def add(self, events: Sequence[Event], encoded: Sequence[bytes], now: float) -> None:
        """Take the user's new events (stamped, and each encoded)."""
        if self.batcher is not None and not self.resyncing:
            self.batcher.add(events, now, encoded)

    def deadline(self) -> float | None:
        """When the next batch is due; None when nothing is pending or a resync is."""
        if self.batcher is None or self.resyncing or self.replaying:
            return None
        return self.batcher.deadline()

    def take_due(self, now: float) -> PendingBatch | None:
        """The next due batch (call again until None: a window of 0 gives one per event)."""
        if self.batcher is None or self.resyncing or self.replaying:
            return None
        return self.batcher.take(now)

    def heartbeat_seq(self, stream: UserStream) -> int:
        """The seq a heartbeat vouches for: what the client has been sent, or the user's seq."""
        if self._replay is not None:
            return self._replay[0]
        return self.batcher.cursor if self.batcher is not None else stream.seq

    # ----------------------------------------------------------------- resync

    def begin_resync(self) -> None:
        """The outbox overflowed and discarded its backlog: send nothing until ``end_resync``."""
        self.resyncing = True

    def end_resync(self, stream: UserStream, server_time: str) -> Snapshot | None:
        """The snapshot that replaces the discarded backlog, now that the socket drained.

        None while there is no subscription yet: the resync ends with the first subscribe.
        """
        if not self.resyncing or self.batcher is None:
            return None
        self.resyncing = False
        self._replay = None
        self.batcher.reset(stream.seq)
        return self._snapshot(stream, server_time)

    # ---------------------------------------------------------------- frames

    def batch_events(self, batch: PendingBatch) -> list[bytes] | None:
        """``batch``'s events encoded as they go out on this connection (deltas where asked for);
        None when the batch has no encodings and needs none of its own (encode it whole)."""
        if self.deltas is not None:
            return self.deltas.encode(batch.events, batch.encoded, full=batch.recovered)
        return batch.encoded

    def _snapshot(self, stream: UserStream, server_time: str) -> Snapshot:
        snapshot = stream.state.to_snapshot(server_time, self.channels)
        if self.deltas is not None:
            self.deltas.reset(snapshot)
        return snapshot


def _error(code: ErrorCode, message: str, ref: MessageId | None) -> Error:
    return MessageError(code, message, ref).to_error()


def _channels(names: Sequence[str], ref: MessageId | None) -> list[Channel]:
    try:
        return validate_channels(names)
    except MessageError as exc:
        exc.ref = ref
        raise


def _filtered(batch: PendingBatch, channels: Sequence[str]) -> PendingBatch:
    kept = [e for e in batch.events if e.channel in channels]
    return PendingBatch(batch.from_seq, batch.to_seq, kept, batch.events_in, batch.oldest_added_at)


def _resume_unavailable(resume: ResumePoint, stream: UserStream, ref: MessageId | None) -> Error:
    journal = stream.journal
    if resume.epoch != journal.epoch:
        text = f"epoch {resume.epoch!r} is not the current epoch {journal.epoch!r}; a snapshot follows"
    else:
        text = (
            f"seq {resume.seq} is outside the replayable range "
            f"{journal.first_replayable_seq}..{journal.seq}; a snapshot follows"
        )
    return _error("resume_unavailable", text, ref)
