"""Alerts: the book's crossing rules with an injected clock, and the stream's alert API fed by hand."""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from alphaflow_live.alerts import Alert, AlertBook, AlertState
from alphaflow_live.client import PortfolioStream
from alphaflow_live.protocol import AccountEvent, Batch, Event, Snapshot

from .factories import TS, D, account, fill, stamp

T0 = datetime(2026, 1, 5, 14, 30, tzinfo=UTC)


@dataclass
class Subject:
    """What conditions look at: one number, set by the test."""

    value: float = 0.0


class Clock:
    """Monotonic seconds and the matching aware wall time, moved by the test."""

    def __init__(self) -> None:
        self.now = 1000.0

    @property
    def at(self) -> datetime:
        return T0 + timedelta(seconds=self.now - 1000.0)


class Harness:
    """A book over a Subject, with the firings its callback received."""

    def __init__(self) -> None:
        self.book: AlertBook[Subject] = AlertBook()
        self.subject = Subject()
        self.clock = Clock()
        self.received: list[Alert] = []
        self.book.subscribe(self.received.append)

    def step(self, value: float, after_s: float = 1.0) -> list[Alert]:
        """Move the clock on, set the value, evaluate; the firings of this evaluation."""
        self.clock.now += after_s
        self.subject.value = value
        return self.book.evaluate(self.subject, self.clock.now, self.clock.at, seq=int(self.clock.now))

    def state(self, name: str) -> AlertState:
        return next(s for s in self.book.states() if s.name == name)


def below(limit: float) -> Callable[[Subject], bool]:
    return lambda s: s.value < limit


@pytest.fixture
def h() -> Harness:
    return Harness()


# ------------------------------------------------------------------ crossings


def test_an_alert_fires_when_its_condition_becomes_true(h: Harness) -> None:
    h.book.add(below(0), "under water", cooldown_s=0)

    assert h.step(5) == []
    fired = h.step(-1)

    assert [a.name for a in fired] == ["under water"]
    assert h.received == fired, "the callback got the firing"


def test_it_does_not_fire_again_while_the_condition_stays_true(h: Harness) -> None:
    h.book.add(below(0), "under water", cooldown_s=0)

    fired = [h.step(v) for v in (-1, -2, -3, -50)]

    assert [len(f) for f in fired] == [1, 0, 0, 0]
    assert h.state("under water").state == "active"


def test_once_false_again_the_next_crossing_fires(h: Harness) -> None:
    h.book.add(below(0), "under water", cooldown_s=0)

    fired = [h.step(v) for v in (-1, -2, 3, -1)]

    assert [len(f) for f in fired] == [1, 0, 0, 1]
    assert [a.fire_count for a in h.received] == [1, 2]


def test_a_condition_true_when_first_evaluated_fires(h: Harness) -> None:
    h.book.add(below(0), "under water")

    assert len(h.step(-1)) == 1


def test_a_flicker_within_the_cooldown_does_not_fire(h: Harness) -> None:
    h.book.add(below(0), "under water", cooldown_s=60)
    h.step(-1)

    fired = [h.step(v, after_s=5) for v in (1, -1, 1, -1)]  # 20 s of flicker

    assert all(f == [] for f in fired)
    assert len(h.received) == 1


def test_a_crossing_within_the_cooldown_fires_when_it_ends_if_still_true(h: Harness) -> None:
    h.book.add(below(0), "under water", cooldown_s=60)
    h.step(-1)
    h.step(1, after_s=10)
    h.step(-1, after_s=10)  # true again 20 s after the firing

    assert h.state("under water").state == "cooling"
    assert h.book.next_due() == h.clock.now - 20 + 60, "the cooldown ends 60 s after the firing"
    assert h.step(-1, after_s=39.5) == []
    fired = h.step(-1, after_s=0.5)

    assert [a.fire_count for a in fired] == [2]
    assert fired[0].fired_at - h.received[0].fired_at == timedelta(seconds=60)
    assert h.book.next_due() is None


def test_a_crossing_that_ends_within_the_cooldown_never_fires(h: Harness) -> None:
    h.book.add(below(0), "under water", cooldown_s=60)
    h.step(-1)
    h.step(1, after_s=10)
    h.step(-1, after_s=10)
    h.step(1, after_s=10)

    assert h.book.next_due() is None
    assert h.step(1, after_s=60) == []
    assert len(h.received) == 1


def test_the_states_say_armed_active_and_cooling(h: Harness) -> None:
    h.book.add(below(0), "under water", cooldown_s=60)
    seen = [h.state("under water").state]
    for value in (-1, 1, -1):
        h.step(value)
        seen.append(h.state("under water").state)

    assert seen == ["armed", "active", "armed", "cooling"]
    state = h.state("under water")
    assert (state.fire_count, state.last_fired, state.cooldown_s) == (1, T0 + timedelta(seconds=1), 60.0)


def test_a_firing_carries_its_name_text_time_value_count_and_seq(h: Harness) -> None:
    h.book.add(lambda s: s.value < 0 and s.value, "under water", name="uw")

    (alert,) = h.step(-7)

    assert alert == Alert(name="uw", message="under water", fired_at=T0 + timedelta(seconds=1),
                          value=-7, fire_count=1, seq=1001)  # fmt: skip
    assert alert.fired_at.tzinfo is UTC


def test_a_look_is_scheduled_once_until_it_ran_or_an_earlier_one_is_wanted(h: Harness) -> None:
    wanted = [h.book.schedule(at) for at in (1060.0, 1060.0, 1070.0, 1050.0)]
    h.book.looked(1060.0)  # the later of the two scheduled ran: the earlier is still pending
    after_a_stale_run = h.book.schedule(1080.0)
    h.book.looked(1050.0)

    assert wanted == [True, False, False, True]
    assert after_a_stale_run is False
    assert h.book.schedule(1080.0) is True


# ------------------------------------------------------------------ naming, messages, cancel


def test_the_name_defaults_to_the_message_or_a_number(h: Harness) -> None:
    first = h.book.add(below(0), "under water")
    second = h.book.add(below(0), lambda s: f"at {s.value}")

    assert (first.name, second.name) == ("under water", "alert-1")


def test_adding_a_name_again_replaces_the_alert(h: Harness) -> None:
    old = h.book.add(below(0), "under water", cooldown_s=0)
    new = h.book.add(below(-10), "under water", cooldown_s=0)

    assert old.cancelled and not new.cancelled
    assert [s.name for s in h.book.states()] == ["under water"]
    assert h.step(-1) == [], "the old condition is gone"
    old.cancel()
    assert len(h.step(-11)) == 1, "cancelling the replaced handle leaves the new alert alone"


def test_a_message_function_makes_the_text_when_it_fires(h: Harness) -> None:
    h.book.add(below(0), lambda s: f"equity at {s.value:,.0f}", name="uw")

    assert h.state("uw").message is None
    (alert,) = h.step(-1200)

    assert alert.message == "equity at -1,200"
    assert h.state("uw").message == "equity at -1,200"


def test_a_raising_message_fires_with_the_name(h: Harness, caplog: pytest.LogCaptureFixture) -> None:
    h.book.add(below(0), lambda s: 1 / 0, name="uw")

    with caplog.at_level(logging.WARNING, logger="alphaflow_live"):
        (alert,) = h.step(-1)

    assert alert.message == "uw"
    assert "alert 'uw': its message raised ZeroDivisionError" in caplog.text


def test_a_cancelled_alert_never_fires_and_leaves_the_book(h: Harness) -> None:
    handle = h.book.add(below(0), "under water", cooldown_s=0)
    h.step(-1)
    h.step(1)

    handle.cancel()
    handle.cancel()  # idempotent

    assert h.step(-1) == [] and h.step(1) == [] and h.step(-1) == []
    assert h.book.states() == [] and len(h.book) == 0
    assert handle.cancelled and handle.state is None
    assert "cancelled" in repr(handle)


def test_an_alert_cancelled_by_a_callback_reaches_no_further_callback(h: Harness) -> None:
    handle = h.book.add(below(0), "under water")
    later: list[Alert] = []
    h.received.clear()
    h.book.subscribe(lambda alert: handle.cancel())
    h.book.subscribe(later.append)

    h.step(-1)

    assert len(h.received) == 1, "the callback before the cancel got it"
    assert later == []


def test_an_unsubscribed_callback_is_not_called(h: Harness) -> None:
    other: list[Alert] = []
    unsubscribe = h.book.subscribe(other.append)
    h.book.add(below(0), "under water", cooldown_s=0)
    unsubscribe()
    unsubscribe()

    h.step(-1)

    assert other == [] and len(h.received) == 1


# ------------------------------------------------------------------ failures


def test_a_raising_condition_counts_as_false_is_logged_once_and_spares_the_others(
    h: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    broken = {"on": True}

    def fragile(s: Subject) -> bool:
        if broken["on"]:
            raise KeyError("AAPL")
        return s.value < 0

    h.book.add(fragile, "fragile", cooldown_s=0)
    h.book.add(below(0), "sturdy", cooldown_s=0)

    with caplog.at_level(logging.WARNING, logger="alphaflow_live"):
        fired = [h.step(v) for v in (-1, -2, -3)]

    assert [[a.name for a in f] for f in fired] == [["sturdy"], [], []]
    failures = [r for r in caplog.records if "alert 'fragile'" in r.getMessage()]
    assert len(failures) == 1, [r.getMessage() for r in failures]
    assert "its condition raised KeyError: 'AAPL'" in failures[0].getMessage()
    assert h.state("fragile").error == "KeyError: 'AAPL'"
    assert h.state("fragile").state == "armed"

    broken["on"] = False
    assert [a.name for a in h.step(-4)] == ["fragile"], "treated as false, so the next true is a crossing"
    assert h.state("fragile").error is None


def test_a_condition_that_is_no_truth_value_is_reported(h: Harness, caplog: pytest.LogCaptureFixture) -> None:
    class Ambiguous:
        def __bool__(self) -> bool:
            raise ValueError("the truth value of a Series is ambiguous")

    h.book.add(lambda s: Ambiguous(), "series", cooldown_s=0)

    with caplog.at_level(logging.WARNING, logger="alphaflow_live"):
        assert h.step(-1) == []

    assert "ambiguous" in (h.state("series").error or "")
    assert "alert 'series'" in caplog.text


def test_a_raising_callback_is_logged_and_the_others_still_get_the_alert(
    h: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    after: list[Alert] = []
    h.received.clear()
    h.book.subscribe(lambda alert: 1 / 0)
    h.book.subscribe(after.append)
    h.book.add(below(0), "under water", cooldown_s=0)

    with caplog.at_level(logging.ERROR, logger="alphaflow_live"):
        fired = h.step(-1)

    assert len(fired) == 1 and len(h.received) == 1 and len(after) == 1
    assert "an 'alert' callback raised (alert 'under water')" in caplog.text


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"condition": "equity < 0"}, TypeError),
        ({"message": 42}, TypeError),
        ({"cooldown_s": -1}, ValueError),
        ({"cooldown_s": float("nan")}, ValueError),
        ({"name": ""}, ValueError),
    ],
)
def test_a_wrong_argument_is_refused_with_what_was_expected(
    h: Harness, kwargs: dict[str, Any], error: type[Exception]
) -> None:
    arguments: dict[str, Any] = {"condition": below(0), "message": "m", **kwargs}

    with pytest.raises(error, match="must be"):
        h.book.add(arguments.pop("condition"), arguments.pop("message"), **arguments)


# ------------------------------------------------------------------ properties

steps = st.lists(st.tuples(st.booleans(), st.floats(0.0, 30.0)), max_size=60)


@given(steps, st.sampled_from([0.0, 10.0, 60.0]))
def test_firings_follow_crossings_and_keep_the_cooldown(
    sequence: list[tuple[bool, float]], cooldown: float
) -> None:
    h = Harness()
    h.book.add(lambda s: s.value < 0, "x", cooldown_s=cooldown)
    history: list[tuple[float, bool, bool]] = []  # (time, condition, fired)
    for true, after_s in sequence:
        fired = h.step(-1 if true else 1, after_s)
        history.append((h.clock.now, true, bool(fired)))

    fire_times = [t for t, _, fired in history if fired]
    assert all(b - a >= cooldown for a, b in itertools.pairwise(fire_times)), "the cooldown holds"
    last_fire: float | None = None
    false_since = True
    for at, true, fired in history:
        if fired:
            assert true and false_since, "a firing needs a true that follows a false (or the start)"
            last_fire, false_since = at, False
        elif true and false_since:
            assert last_fire is not None and at - last_fire < cooldown, (
                "a crossing outside the cooldown fires"
            )
        if not true:
            false_since = True


# ------------------------------------------------------------------ on the stream, fed by hand


def stream() -> PortfolioStream:
    live = PortfolioStream("ws://127.0.0.1:9/ws/portfolio", "t", start=False)
    opening = day("100000.00").data
    live.feed(
        Snapshot(epoch="e-1", seq=1, server_time=TS, positions=[], orders=[], account=opening, fills=[])
    )
    return live


def day(equity: str) -> AccountEvent:
    """An account at ``equity`` whose day started at 100,000."""
    event = account(cash=equity, equity=equity)
    event.data.last_equity = D("100000.00")
    return event


def feed(live: PortfolioStream, *events: Event) -> None:
    seq = live.seq or 0
    live.feed(Batch(epoch="e-1", from_seq=seq, to_seq=seq + len(events), server_time=TS,
                    events=stamp(events, seq)))  # fmt: skip


def test_the_day_loss_example_fires_on_the_account_series_as_written() -> None:
    live = stream()
    received: list[Alert] = []
    live.on("alert", received.append)
    live.alert(
        lambda live: live.account["equity"] - live.account["last_equity"] < -1_000, "day loss over 1,000"
    )

    feed(live, day("99500.00"))
    feed(live, day("98999.00"))
    feed(live, day("98000.00"))

    assert [(a.name, a.message, a.seq) for a in received] == [
        ("day loss over 1,000", "day loss over 1,000", 3)
    ]
    assert isinstance(live.account["equity"], float)
    live.close()


def test_conditions_run_once_per_batch_not_once_per_event() -> None:
    live = stream()
    seen: list[float] = []
    live.alert(lambda live: seen.append(live.account["equity"]), "probe")

    feed(live, day("99000.00"), fill("f-1"), day("98000.00"), day("97000.00"))

    assert seen == [97000.0], "one evaluation, after the whole batch was applied"
    live.close()


def test_conditions_run_with_the_states_lock_released() -> None:
    live = stream()
    entered: list[bool] = []

    def reader() -> None:
        with live.reading():
            entered.append(True)

    def condition(stream: PortfolioStream) -> bool:
        other = threading.Thread(target=reader)
        other.start()
        other.join(2.0)
        return False

    live.alert(condition, "probe")
    feed(live, day("99000.00"))

    assert entered == [True], "another thread could read the state while the condition ran"
    live.close()


def test_on_accepts_alert_and_names_it_among_the_events_it_refuses() -> None:
    live = stream()

    with pytest.raises(ValueError, match="one of: fill, position, order, account, status, alert"):
        live.on("alerts", print)
    unsubscribe = live.on("alert", print)
    unsubscribe()
    live.close()


def test_live_alerts_is_a_frame_of_the_alerts_and_their_state() -> None:
    live = stream()
    assert live.alerts.empty and list(live.alerts.columns) == [
        "message", "state", "cooldown_s", "fire_count", "last_fired", "error"
    ]  # fmt: skip
    live.alert(
        lambda live: live.account["equity"] < 99_000,
        lambda live: f"equity {live.account['equity']:,.0f}",
        name="low",
        cooldown_s=0,
    )
    handle = live.alert(lambda live: live.account["cash"] < 0, "overdrawn")

    feed(live, day("98000.00"))
    frame = live.alerts

    assert list(frame.index) == ["low", "overdrawn"]
    assert frame.loc["low", "state"] == "active" and frame.loc["overdrawn", "state"] == "armed"
    assert frame.loc["low", "message"] == "equity 98,000"
    assert frame["fire_count"].tolist() == [1, 0]
    assert str(frame["last_fired"].dtype) == "datetime64[ns, UTC]"
    assert frame["last_fired"].isna().tolist() == [False, True]
    handle.cancel()
    assert list(live.alerts.index) == ["low"]
    live.close()
