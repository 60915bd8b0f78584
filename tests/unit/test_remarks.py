"""RemarkSchedule: a leading edge, then at most one re-mark per user per interval, each user in its phase."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alphaflow_server.remarks import RemarkSchedule

INTERVAL = 0.25


def test_a_user_stale_after_a_quiet_interval_is_due_at_once() -> None:
    schedule = RemarkSchedule(INTERVAL)

    schedule.stale(["alice"], now=10.0)

    assert schedule.next_due() == 10.0
    assert schedule.take_due(10.0) == ["alice"]
    assert schedule.next_due() is None


def test_a_user_stale_again_within_the_interval_waits_for_its_phase_after_the_interval() -> None:
    schedule = RemarkSchedule(INTERVAL)
    schedule.stale(["alice"], now=10.0)
    schedule.take_due(10.0)

    schedule.stale(["alice"], now=10.1)
    due = schedule.next_due()

    assert due is not None and 10.0 + INTERVAL <= due < 10.0 + 2 * INTERVAL
    assert schedule.take_due(due - 0.001) == []
    assert schedule.take_due(due) == ["alice"]


def test_under_steady_ticks_a_user_is_re_marked_every_interval_on_its_phase() -> None:
    schedule = RemarkSchedule(INTERVAL)
    turns = []
    now = 10.0
    while now < 13.0:
        schedule.stale(["alice"], now)
        if schedule.take_due(now):
            turns.append(now)
        now = round(now + 0.005, 3)

    gaps = [round(b - a, 3) for a, b in itertools.pairwise(turns[1:])]
    assert turns[0] == 10.0, "the first mark of a quiet spell goes at once"
    assert set(gaps) == {INTERVAL}, f"after settling on its phase, one turn per interval: {gaps}"


def test_phases_spread_many_users_turns_evenly_over_the_interval() -> None:
    schedule = RemarkSchedule(INTERVAL)
    users = [f"u{i:04d}" for i in range(1000)]
    schedule.stale(users, now=10.0)
    schedule.take_due(10.0)  # everyone at once: the leading edge

    schedule.stale(users, now=10.001)
    dues = sorted(due for due, _ in schedule._heap)

    slices = [
        sum(1 for d in dues if k * INTERVAL / 10 <= d - 10.25 < (k + 1) * INTERVAL / 10) for k in range(10)
    ]
    assert sum(slices) == 1000
    assert all(60 <= n <= 140 for n in slices), f"turns per tenth of the interval: {slices}"


def test_a_user_sent_by_another_path_waits_a_full_interval_from_then() -> None:
    schedule = RemarkSchedule(INTERVAL)
    schedule.stale(["alice"], now=10.0)
    schedule.take_due(10.0)
    schedule.stale(["alice"], now=10.1)

    schedule.sent("alice", now=10.2)  # a fill published alice's stale positions

    assert schedule.take_due(10.2 + INTERVAL - 0.001) == []
    assert schedule.take_due(10.2 + 2 * INTERVAL) == ["alice"]


def test_a_turn_taken_very_late_counts_from_when_it_was_taken_so_turns_are_not_back_to_back() -> None:
    schedule = RemarkSchedule(INTERVAL)
    schedule.stale(["alice"], now=10.0)
    schedule.take_due(10.0)
    schedule.stale(["alice"], now=10.1)
    due = schedule.next_due()
    assert due is not None

    assert schedule.take_due(due + 0.2) == ["alice"]  # the loop was busy for 200 ms
    schedule.stale(["alice"], now=due + 0.2)

    assert schedule.take_due(due + 0.2) == [], "no second turn right after a late one"
    assert schedule.next_due() >= due + 0.2 + INTERVAL


def test_an_interval_of_zero_makes_every_user_due_at_once() -> None:
    schedule = RemarkSchedule(0)
    for now in (1.0, 1.0, 1.001):
        schedule.stale(["alice"], now=now)
        assert schedule.take_due(now) == ["alice"]


def test_take_all_empties_the_schedule() -> None:
    schedule = RemarkSchedule(INTERVAL)
    schedule.stale(["alice"], now=10.0)
    schedule.take_due(10.0)
    schedule.stale(["alice", "bob"], now=10.1)

    assert sorted(schedule.take_all(10.1)) == ["alice", "bob"]
    assert schedule.next_due() is None and len(schedule) == 0


def test_a_negative_interval_is_refused() -> None:
    with pytest.raises(ValueError, match="interval_s"):
        RemarkSchedule(-0.1)


steps = st.lists(
    st.tuples(
        st.sampled_from(["stale", "take", "sent"]),
        st.sets(st.sampled_from(["a", "b", "c"]), min_size=1),
        st.sampled_from([0.0, 0.01, 0.1, 0.2, 0.25, 0.3, 1.0]),
    ),
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(steps)
def test_turns_are_at_least_half_an_interval_apart_and_none_waits_longer_than_two(ops: list) -> None:
    schedule = RemarkSchedule(INTERVAL)
    now = 0.0
    last_turn: dict[str, float] = {}
    waiting_since: dict[str, float] = {}
    for kind, users, dt in ops:
        now += dt
        if kind == "stale":
            schedule.stale(sorted(users), now)
            for user in users:
                waiting_since.setdefault(user, now)
        elif kind == "sent":
            for user in users:
                schedule.sent(user, now)
                last_turn[user] = now
        else:
            for user in schedule.take_due(now):
                # A turn taken late keeps the phase (the next may come sooner) unless half an interval late.
                assert now - last_turn.get(user, -1e9) >= INTERVAL / 2 - 1e-9, f"{user} re-marked twice"
                last_turn[user] = now
                waiting_since.pop(user, None)
        due = schedule.next_due()
        for user, since in waiting_since.items():
            # Due no later than an interval after it went stale or was last sent, whichever is later.
            bound = max(since, last_turn.get(user, -1e9) + INTERVAL)
            assert due is not None and due <= bound + INTERVAL + 1e-9, f"{user} waits past {bound}"


def test_turns_taken_and_shed_are_counted() -> None:
    schedule = RemarkSchedule(INTERVAL)
    schedule.stale(["a", "b"], 0.0)
    assert schedule.take_due(0.0) == ["a", "b"]  # on time (at once after a quiet interval)
    schedule.stale(["a"], 0.1)
    due = schedule.next_due()
    assert due is not None

    assert schedule.take_due(due + INTERVAL / 2) == ["a"]  # half an interval late: its next counts from now

    assert (schedule.turns_taken, schedule.turns_shed) == (3, 1)
    schedule.stale(["b"], 10.0)
    assert schedule.take_all(10.0) == ["b"]
    assert (schedule.turns_taken, schedule.turns_shed) == (4, 1)
