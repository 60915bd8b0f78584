"""The client's half of the stream protocol, as decisions (no I/O): messages in, actions out.

``Tracker`` decides what each server message means for the portfolio held:
apply it, note that the data is current, or resubscribe with ``resume`` to
heal a gap. ``Policy`` decides what follows each connection attempt:
reconnect after a backoff, poll the REST snapshot for a while, or stop. The
asyncio shell (``connection``) only carries these actions out against a
``StreamSink`` and a socket.

The invariants:

* a batch is applied only when it starts where the portfolio held ends
  (``state.batch_fit``), so the client holds every change or knows it must resync;
* a batch that does not fit starts one heal (a resubscribe with resume); until
  its reply arrives (a recovered batch or a snapshot), further misfits are
  ignored, because that reply covers them;
* a heartbeat whose seq is ahead of what is held is a gap too;
* refused credentials (401/403) stop the stream for good; streaming switched
  off by the operator (503 ``streaming_disabled``, close 4003), or failing
  ``fallback_after_failures`` times in a row, means polling while the stream
  is retried; a stream that ran and dropped is resumed at once-ish.
"""

from __future__ import annotations

import enum
import json
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from .backoff import Backoff
from .codes import CLOSE_STREAMING_DISABLED, Refusal
from .errors import AuthError
from .freshness import Status
from .protocol import Batch, Error, Heartbeat, ResumePoint, Snapshot, Subscribe, Welcome
from .state import BatchOutcome, batch_fit

# ------------------------------------------------------------------ actions


@dataclass(frozen=True, slots=True)
class Apply:
    """Apply this snapshot or (fitting) batch to the portfolio held."""

    message: Snapshot | Batch


@dataclass(frozen=True, slots=True)
class Send:
    """Send this message on the connection (a subscribe, or a resubscribe that heals a gap)."""

    message: Subscribe


@dataclass(frozen=True, slots=True)
class Touch:
    """Nothing changed, but the data held is current as of ``server_time``."""

    server_time: str


@dataclass(frozen=True, slots=True)
class SetStatus:
    status: Status
    # Why, when it is not simply live: shown as ``live.status_reason`` and in the widgets' banner.
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Count:
    """Add ``amount`` to the client-side counter ``name`` (``live.stats()``)."""

    name: str
    amount: int = 1


@dataclass(frozen=True, slots=True)
class Note:
    """A line for the log, at ``level``."""

    level: int
    text: str


Action = Apply | Send | Touch | SetStatus | Count | Note


class StreamSink(Protocol):
    """What the connection shell needs of the stream it feeds."""

    def held(self) -> ResumePoint | None:
        """Where the portfolio held stands (None before the first snapshot)."""

    def apply(self, message: Snapshot | Batch) -> BatchOutcome | None: ...
    def touch(self, server_time: str) -> None: ...
    def set_status(self, status: Status, reason: str = "") -> None: ...
    def fail(self, error: Exception) -> None: ...
    def count(self, name: str, amount: int = 1) -> None: ...
    def endpoint(self, url: str) -> None:
        """The URL the stream is trying, or streaming from."""


# ------------------------------------------------------------------ messages


class Tracker:
    """One connection's message decisions; ``healing`` while a resubscribe is under way."""

    def __init__(self, channels: list[str], *, deltas: bool = False) -> None:
        self.channels = channels
        self.deltas = deltas
        self.healing = False

    def opened(self, held: ResumePoint | None) -> list[Action]:
        """A new connection: subscribe, resuming from what is held."""
        self.healing = False
        return [Send(self._subscribe(held))]

    def receive(self, message: Any, held: ResumePoint | None) -> list[Action]:
        if isinstance(message, Snapshot):
            self.healing = False
            return [Apply(message), SetStatus("live")]
        if isinstance(message, Batch):
            outcome = batch_fit(*_position(held), message)
            if outcome is BatchOutcome.APPLIED:
                self.healing = False
                return [Apply(message), SetStatus("live")]
            if outcome is BatchOutcome.DUPLICATE or self.healing:
                return []
            seq = None if held is None else held.seq
            return [Note(logging.INFO, f"{outcome.value} at seq {seq}; resubscribing to heal"),
                    *self._heal(held)]  # fmt: skip
        if isinstance(message, Heartbeat):
            actions: list[Action] = [Touch(message.server_time)]
            if held is not None and message.seq > held.seq and not self.healing:
                actions += self._heal(held)  # the server delivered more than we hold
            return actions
        if isinstance(message, Error):
            level = logging.INFO if message.code == "resume_unavailable" else logging.WARNING
            return [Note(level, f"server says {message.code}: {message.message}")]
        if isinstance(message, Welcome):
            return [Count("connections")]
        return []

    def unapplied(self, outcome: BatchOutcome, held: ResumePoint | None) -> list[Action]:
        """A batch that fitted could not be applied (a field delta with nothing to apply to):
        resubscribe with resume; the server sends every key in full again before any delta."""
        if self.healing:
            return []
        return [Note(logging.WARNING, f"{outcome.value}: a batch could not be applied; resubscribing"),
                *self._heal(held)]  # fmt: skip

    def _heal(self, held: ResumePoint | None) -> list[Action]:
        self.healing = True
        return [Count("resyncs"), Send(self._subscribe(held))]

    def _subscribe(self, held: ResumePoint | None) -> Subscribe:
        return Subscribe(id=1, channels=self.channels, resume=held, deltas=self.deltas)


def _position(held: ResumePoint | None) -> tuple[str | None, int | None]:
    return (None, None) if held is None else (held.epoch, held.seq)


def polled(snapshot: Snapshot, reason: str) -> list[Action]:
    """A snapshot fetched by polling: the portfolio as of its seq, while the stream is away (why:
    ``reason``)."""
    return [Count("polls"), Apply(snapshot), SetStatus("polling", reason)]


# ------------------------------------------------------------------ attempts


class Outcome(enum.Enum):
    DROPPED = "dropped"  # it was streaming, then the connection ended
    FAILED = "failed"  # could not connect, or refused for now
    DISABLED = "disabled"  # the operator switched streaming off
    FATAL = "fatal"  # credentials refused
    STOPPED = "stopped"  # the user closed the stream


@dataclass(frozen=True, slots=True)
class Attempt:
    """How one connection attempt ended, and why (the reason a status shows while it lasts)."""

    outcome: Outcome
    reason: str = ""
    # The server asked for this much quiet before the next try (``Retry-After``).
    retry_after_s: float | None = None
    # A refusal the user has to act on (a connection limit reached), as opposed to a network blip.
    notable: bool = False


@dataclass(frozen=True, slots=True)
class Refused:
    """How an HTTP refusal (of the handshake or of a poll) ends the attempt."""

    attempt: Attempt
    error: AuthError | None = None

    @property
    def outcome(self) -> Outcome:
        return self.attempt.outcome

    @property
    def message(self) -> str:
        return self.attempt.reason


def refused(status: int, body: bytes, retry_after: str | None = None) -> Refused:
    """Classify a refusal by its HTTP status, JSON body (``{"error": code, "message": text}``)
    and ``Retry-After`` header."""
    try:
        detail = json.loads(body)
    except ValueError:
        detail = None
    if not isinstance(detail, dict):
        detail = {}
    message = str(detail.get("message") or body.decode(errors="replace")[:200])
    if status in (401, 403):
        error = AuthError(f"the server refused the token (HTTP {status}): {message}")
        return Refused(Attempt(Outcome.FATAL, str(error)), error)
    if status == 503 and detail.get("error") == Refusal.STREAMING_DISABLED:
        return Refused(Attempt(Outcome.DISABLED, "streaming is switched off by the server"))
    limited = detail.get("error") in (Refusal.TOO_MANY_CONNECTIONS, Refusal.SERVER_FULL)
    return Refused(
        Attempt(
            Outcome.FAILED,
            f"the server refused the stream (HTTP {status}): {message}",
            retry_after_s=_seconds(retry_after),
            notable=limited,
        )
    )


def _seconds(retry_after: str | None) -> float | None:
    try:
        seconds = float(retry_after) if retry_after is not None else None
    except ValueError:
        return None  # an HTTP date: not worth parsing for a hint
    return None if seconds is None or not 0 <= seconds <= 3600 else seconds


def ended(*, streamed: bool, close_code: int | None, stopping: bool, reason: str = "") -> Attempt:
    """How a connection that opened (or failed to) ends the attempt."""
    if stopping:
        return Attempt(Outcome.STOPPED)
    if close_code == CLOSE_STREAMING_DISABLED.code:
        return Attempt(Outcome.DISABLED, "streaming was switched off by the server")
    return Attempt(Outcome.DROPPED if streamed else Outcome.FAILED, reason)


@dataclass(frozen=True, slots=True)
class Reconnect:
    delay_s: float


@dataclass(frozen=True, slots=True)
class Poll:
    """Poll the snapshot for about ``duration_s`` (at least once), then try the stream again."""

    duration_s: float
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Stop:
    pass


Step = Reconnect | Poll | Stop


class Endpoints:
    """The server URLs a stream may use, tried in a shuffled order: the first attempt goes to a
    random one (clients spread over the nodes of a cluster), and after a drop or a failure the
    next attempt goes to the next one, reshuffled after each round and never the same twice in a
    row (a dead node is left at once). Every node serves every user, with one epoch and seq, so
    the stream resumes wherever it lands."""

    def __init__(self, urls: Sequence[str], rng: random.Random | None = None) -> None:
        if not urls:
            raise ValueError("no server URL")
        self.urls = tuple(urls)
        self._rng = rng or random.Random()
        self._round: list[str] = []
        self.current = self._next()

    def _next(self) -> str:
        if not self._round:
            previous = getattr(self, "current", None)
            self._round = list(self.urls)
            self._rng.shuffle(self._round)
            if len(self._round) > 1 and self._round[-1] == previous:
                self._round[0], self._round[-1] = self._round[-1], self._round[0]
        return self._round.pop()

    def advance(self) -> str:
        """Move on to the next URL (after an attempt that did not keep streaming)."""
        self.current = self._next()
        return self.current


class Policy:
    """What follows each attempt: a stream that ran is resumed soon; failures back off, then poll."""

    def __init__(self, backoff: Backoff, *, fallback_after_failures: int) -> None:
        self.backoff = backoff
        self.fallback_after_failures = fallback_after_failures
        self.failures = 0

    def after(self, attempt: Attempt) -> Step:
        outcome = attempt.outcome
        if outcome in (Outcome.FATAL, Outcome.STOPPED):
            return Stop()
        if outcome is Outcome.DROPPED:
            self.backoff.reset()
            self.failures = 0
        else:
            self.failures += 1
        delay = max(self.backoff.next_delay(), attempt.retry_after_s or 0.0)
        if outcome is Outcome.DISABLED:
            return Poll(delay, attempt.reason)
        if self.failures >= self.fallback_after_failures:
            times = "once" if self.failures == 1 else f"{self.failures} times in a row"
            return Poll(delay, f"the stream failed {times}; last: {attempt.reason or 'dropped'}")
        return Reconnect(delay)
