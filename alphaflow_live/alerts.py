"""Alerts: conditions on the stream that fire once per crossing (no I/O, no clock of its own).

For each alert in the book:

- It fires when its condition is true at an evaluation while it is armed. It
  starts armed, and a firing disarms it: while the condition stays true it
  does not fire again. An evaluation that finds the condition false arms it
  again, so the next true fires: once per crossing.
- After a firing it does not fire for ``cooldown_s`` seconds, however often
  the condition flickers. A crossing within the cooldown waits ("cooling")
  and fires at the first evaluation after the cooldown if the condition is
  still true then; ``next_due`` says when that is, so the shell can look again.
- A condition that raises counts as false. The failure is logged once, with
  the alert's name, until the condition evaluates cleanly again, and shows
  in the alert's ``error`` meanwhile. It never stops the other alerts.
- Cancelled, an alert never fires again and leaves the book. Adding a name
  the book holds replaces that alert, so a notebook cell run twice keeps one.

``evaluate`` runs the user's code (conditions, messages, callbacks) holding
no lock: the book's lock guards only its bookkeeping. Passes are serialised.
The caller passes ``now`` (monotonic seconds, for cooldowns) and ``at`` (the
aware wall-clock time a firing carries); the stream calls ``evaluate`` after
each snapshot or batch it applied, on the thread that applied it.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any, Final, Generic, Literal, TypeVar

log = logging.getLogger("alphaflow_live")

S = TypeVar("S")  # what conditions and messages are given: the stream

# A condition, and a message function, take the stream.
Condition = Callable[[S], object]
Message = str | Callable[[S], object]

# armed: the next true fires · active: fired, and still true · cooling: true again within the cooldown
AlertStatus = Literal["armed", "active", "cooling"]


@dataclass(frozen=True, slots=True)
class Alert:
    """One firing, as ``on("alert", callback)`` callbacks receive it."""

    name: str
    message: str
    fired_at: datetime  # aware, UTC
    value: Any  # what the condition returned (True, or whatever truthy value it chose)
    fire_count: int  # 1 at the alert's first firing
    seq: int | None  # the stream's seq when it fired (None before any data)


@dataclass(frozen=True, slots=True)
class AlertState:
    """An alert in the book, as ``live.alerts`` lists it."""

    name: str
    message: str | None  # the text; for a message function, the last text it made (None before)
    state: AlertStatus
    cooldown_s: float
    fire_count: int
    last_fired: datetime | None
    error: str | None  # why the condition raised at its last evaluation, else None


ALERT_STATE_FIELDS: Final = tuple(f.name for f in fields(AlertState))


class _Rule(Generic[S]):
    """One alert's condition and crossing state (changed under the book's lock only)."""

    def __init__(self, name: str, condition: Condition[S], message: Message[S], cooldown_s: float) -> None:
        self.name, self.condition, self.message, self.cooldown_s = name, condition, message, cooldown_s
        self.armed = True
        self.true = False  # the condition at the last evaluation
        self.cancelled = False
        self.fire_count = 0
        self.fired_mono: float | None = None
        self.last_fired: datetime | None = None
        self.last_message = message if isinstance(message, str) else None
        self.error: str | None = None

    def observe(self, true: bool, now: float) -> bool:
        """The condition's value at ``now``: True if this is a firing."""
        self.true = true
        if not true:
            self.armed = True
            return False
        if not self.armed or self.cooling(now):
            return False
        self.armed = False
        self.fire_count += 1
        self.fired_mono = now
        return True

    def cooling(self, now: float) -> bool:
        return self.fired_mono is not None and now - self.fired_mono < self.cooldown_s

    @property
    def status(self) -> AlertStatus:
        if not self.true:
            return "armed"
        return "cooling" if self.armed else "active"

    def snapshot(self) -> AlertState:
        return AlertState(self.name, self.last_message, self.status, self.cooldown_s, self.fire_count,
                          self.last_fired, self.error)  # fmt: skip


class AlertHandle:
    """What adding an alert returns: ``cancel()`` removes it for good."""

    def __init__(self, book: AlertBook[Any], rule: _Rule[Any]) -> None:
        self._book, self._rule = book, rule

    @property
    def name(self) -> str:
        return self._rule.name

    @property
    def cancelled(self) -> bool:
        """True once cancelled, or replaced by an alert of the same name."""
        return self._rule.cancelled

    @property
    def state(self) -> AlertState | None:
        """The alert as it stands now (None once cancelled)."""
        return self._book._state_of(self._rule)

    def cancel(self) -> None:
        """Never fire again and leave the book (idempotent)."""
        self._book._cancel(self._rule)

    def __repr__(self) -> str:
        state = self.state
        shown = "cancelled" if state is None else f"{state.state} fired={state.fire_count}"
        return f"<AlertHandle {self.name!r} {shown}>"


class AlertBook(Generic[S]):
    """The alerts of one stream, and the callbacks their firings go to."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # bookkeeping only: never held while user code runs
        self._passing = threading.RLock()  # one evaluation at a time (a callback may feed again)
        self._rules: dict[str, _Rule[S]] = {}
        self._callbacks: list[Callable[[Alert], None]] = []
        self._numbers = itertools.count(1)
        self._look_at: float | None = None  # when the shell is to evaluate again (monotonic)

    def __len__(self) -> int:
        return len(self._rules)

    def add(
        self,
        condition: Condition[S],
        message: Message[S],
        *,
        name: str | None = None,
        cooldown_s: float = 60.0,
    ) -> AlertHandle:
        """A new alert, armed; it replaces one of the same name. ``name`` defaults to the
        message when that is text, else ``alert-N``."""
        if not callable(condition):
            raise TypeError(f"condition must be a function of the stream, got {type(condition).__name__}")
        if not (isinstance(message, str) or callable(message)):
            raise TypeError(f"message must be text or a function of the stream, got {type(message).__name__}")
        if not cooldown_s >= 0:
            raise ValueError(f"cooldown_s must be >= 0 seconds, got {cooldown_s!r}")
        with self._lock:
            if name is None:
                name = message if isinstance(message, str) and message else f"alert-{next(self._numbers)}"
            elif not isinstance(name, str) or not name:
                raise ValueError(f"name must be a non-empty string, got {name!r}")
            rule = _Rule(name, condition, message, float(cooldown_s))
            replaced = self._rules.get(name)
            if replaced is not None:
                replaced.cancelled = True
            self._rules[name] = rule
        return AlertHandle(self, rule)

    def subscribe(self, callback: Callable[[Alert], None]) -> Callable[[], None]:
        """Call ``callback`` with every firing; returns a function that unsubscribes it."""
        with self._lock:
            self._callbacks.append(callback)

        def unsubscribe() -> None:
            with self._lock:
                if callback in self._callbacks:
                    self._callbacks.remove(callback)

        return unsubscribe

    def states(self) -> list[AlertState]:
        """Every alert in the book, in the order they were added."""
        with self._lock:
            return [rule.snapshot() for rule in self._rules.values()]

    def next_due(self) -> float | None:
        """When (monotonic) the earliest cooldown of an alert that waits on one ends, else None."""
        with self._lock:
            due = [rule.fired_mono + rule.cooldown_s for rule in self._rules.values()
                   if rule.status == "cooling" and rule.fired_mono is not None]  # fmt: skip
        return min(due) if due else None

    def schedule(self, at: float) -> bool:
        """The shell wants an evaluation at ``at`` (monotonic): True if it must schedule one,
        False if one is scheduled by then already. It calls ``looked(at)`` when that one runs."""
        with self._lock:
            if self._look_at is not None and self._look_at <= at:
                return False
            self._look_at = at
            return True

    def looked(self, at: float) -> None:
        with self._lock:
            if self._look_at == at:
                self._look_at = None

    def evaluate(self, subject: S, now: float, at: datetime, seq: int | None = None) -> list[Alert]:
        """Evaluate every alert's condition on ``subject``; deliver and return the firings."""
        with self._passing:
            with self._lock:
                rules = list(self._rules.values())
            fired = []
            for rule in rules:
                alert = self._check(rule, subject, now, at, seq)
                if alert is not None:
                    fired.append(alert)
                    self._deliver(rule, alert)
            return fired

    # ------------------------------------------------------------- internals

    def _check(self, rule: _Rule[S], subject: S, now: float, at: datetime, seq: int | None) -> Alert | None:
        try:
            value = rule.condition(subject)
            true = bool(value)
        except Exception as exc:
            with self._lock:
                first = rule.error is None
                rule.error = f"{type(exc).__name__}: {exc}"
                rule.observe(False, now)
            if first:
                log.warning("alphaflow-live: alert %r: its condition raised %s; it counts as false "
                            "(logged once, until it evaluates cleanly)", rule.name, rule.error,
                            exc_info=True)  # fmt: skip
            return None
        with self._lock:
            rule.error = None
            if rule.cancelled or not rule.observe(true, now):
                return None
            rule.last_fired, count = at, rule.fire_count
        text = _render(rule, subject)
        with self._lock:
            rule.last_message = text
        log.info("alphaflow-live: alert fired name=%r count=%d seq=%s", rule.name, count, seq)
        return Alert(rule.name, text, at, value, count, seq)

    def _deliver(self, rule: _Rule[S], alert: Alert) -> None:
        with self._lock:
            callbacks = list(self._callbacks)
        for callback in callbacks:
            if rule.cancelled:  # cancelled while its firing was being delivered
                return
            try:
                callback(alert)
            except Exception:
                log.exception("alphaflow-live: an 'alert' callback raised (alert %r); the stream goes on",
                              alert.name)  # fmt: skip

    def _cancel(self, rule: _Rule[S]) -> None:
        with self._lock:
            rule.cancelled = True
            if self._rules.get(rule.name) is rule:
                del self._rules[rule.name]

    def _state_of(self, rule: _Rule[S]) -> AlertState | None:
        with self._lock:
            return None if rule.cancelled else rule.snapshot()


def _render(rule: _Rule[S], subject: S) -> str:
    message = rule.message
    if isinstance(message, str):
        return message
    try:
        return str(message(subject))
    except Exception as exc:
        log.warning("alphaflow-live: alert %r: its message raised %s: %s; it fired with its name as the "
                    "message", rule.name, type(exc).__name__, exc, exc_info=True)  # fmt: skip
        return rule.name
