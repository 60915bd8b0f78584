"""EventBus: per-user journal and portfolio state, and fan-out to live connections.

Everything a user's stream carries enters here: ``publish`` stamps the events
with the user's next seqs, applies them to the user's PortfolioState (which
answers snapshots) and hands them, synchronously and in seq order, to each
listener (one per open connection of that user). Listeners only queue work;
they never await, so one slow connection cannot hold up another.

This is the in-process bus of a single node; a Redis-backed one can stand
beside it with the same surface.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from alphaflow_live.protocol import Event
from alphaflow_live.state import PortfolioState

from .journal import Journal

log = logging.getLogger("alphaflow.server.bus")

# (stamped events, the same encoded, loop time)
Listener = Callable[[Sequence[Event], Sequence[bytes], float], None]


@dataclass(frozen=True, slots=True)
class Stamped:
    """Events stamped with their seqs, and each one encoded (once, for every connection)."""

    events: list[Event]
    encoded: list[bytes]


@dataclass(eq=False)
class UserStream:
    user_id: str
    journal: Journal
    state: PortfolioState
    listeners: list[Listener] = field(default_factory=list)

    @property
    def epoch(self) -> str:
        return self.journal.epoch

    @property
    def seq(self) -> int:
        return self.journal.seq


@dataclass(frozen=True, slots=True)
class JournalOptions:
    retain_events: int = 10_000
    retain_seconds: float = 300.0
    max_events: int = 1_000_000


class EventBus:
    def __init__(self, *, new_epoch: Callable[[], str], journal: JournalOptions | None = None) -> None:
        self._new_epoch = new_epoch
        self._journal_options = journal or JournalOptions()
        self._users: dict[str, UserStream] = {}

    def __iter__(self) -> Iterator[UserStream]:
        return iter(self._users.values())

    def __contains__(self, user_id: object) -> bool:
        return user_id in self._users

    def user(self, user_id: str) -> UserStream:
        """The user's stream, created (with a fresh epoch) on first use."""
        stream = self._users.get(user_id)
        if stream is None:
            options = self._journal_options
            journal = Journal(
                self._new_epoch(),
                retain_events=options.retain_events,
                retain_seconds=options.retain_seconds,
                max_events=options.max_events,
            )
            state = PortfolioState()
            state.epoch, state.seq = journal.epoch, journal.seq
            stream = self._users[user_id] = UserStream(user_id, journal, state)
        return stream

    def append(self, user_id: str, events: Sequence[Event], now: float, *, owned: bool = False) -> Stamped:
        """Stamp the events with the user's next seqs and journal them (not yet delivered)."""
        return Stamped(*self.user(user_id).journal.append_encoded(events, now, owned=owned))

    def rollback(self, user_id: str, seq: int) -> None:
        """Forget what was appended after ``seq`` (its commit failed; nothing was delivered)."""
        self.user(user_id).journal.truncate_after(seq)

    def deliver(self, user_id: str, stamped: Stamped, now: float) -> None:
        """Apply appended events to the user's state and hand them to every connection."""
        stream = self.user(user_id)
        stream.state.apply_events(stamped.events)
        stream.state.seq = stream.journal.seq
        for listener in list(stream.listeners):
            try:
                listener(stamped.events, stamped.encoded, now)
            except Exception:
                # A broken connection must not stop the others or lose the events:
                # they are journaled already and the client can resume.
                log.exception("event=listener_failed user=%s", user_id)

    def publish(self, user_id: str, events: Sequence[Event], now: float) -> list[Event]:
        """Append and deliver at once, for callers with nothing to commit in between."""
        stamped = self.append(user_id, events, now)
        self.deliver(user_id, stamped, now)
        return stamped.events

    def adopt(self, user_id: str, journal: Journal, state: PortfolioState) -> UserStream:
        """Install a user's stream restored from durable state."""
        stream = self._users[user_id] = UserStream(user_id, journal, state)
        return stream

    def subscribe(self, user_id: str, listener: Listener) -> Callable[[], None]:
        stream = self.user(user_id)
        stream.listeners.append(listener)

        def unsubscribe() -> None:
            if listener in stream.listeners:
                stream.listeners.remove(listener)

        return unsubscribe
