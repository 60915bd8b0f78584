"""The bound on unfinished handshakes and the throttle on repeated log lines (defect 9), without sockets."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alphaflow_server.limits import Arrival, PendingHandshakes, default_pending_handshakes
from alphaflow_server.logs import Throttle

PROPERTY = settings(max_examples=200, deadline=None)


@pytest.mark.parametrize(("limit", "bound"), [(256, 64), (1024, 256), (20_000, 1024), (3, 1)])
def test_the_default_bound_is_a_quarter_of_the_open_file_limit_at_most_1024(limit: int, bound: int) -> None:
    assert default_pending_handshakes(limit) == bound


def test_sockets_are_admitted_up_to_the_bound() -> None:
    gate: PendingHandshakes[str] = PendingHandshakes(2)

    assert [gate.arrive(name, 0.0) for name in "ab"] == [Arrival(True), Arrival(True)]
    assert len(gate) == 2


def test_past_the_bound_a_new_socket_is_refused_while_every_pending_one_is_young() -> None:
    gate: PendingHandshakes[str] = PendingHandshakes(2, evict_after_s=1.0)
    gate.arrive("a", 0.0)
    gate.arrive("b", 0.1)

    assert gate.arrive("c", 0.9) == Arrival(False)
    assert len(gate) == 2


def test_past_the_bound_the_oldest_socket_that_waited_long_enough_gives_its_place() -> None:
    gate: PendingHandshakes[str] = PendingHandshakes(2, evict_after_s=1.0)
    gate.arrive("a", 0.0)
    gate.arrive("b", 0.5)

    assert gate.arrive("good", 1.0) == Arrival(True, ("a",))
    assert gate.arrive("next", 1.2) == Arrival(False)


def test_a_socket_that_sent_its_request_frees_its_place() -> None:
    gate: PendingHandshakes[str] = PendingHandshakes(1)
    gate.arrive("a", 0.0)
    gate.done("a")
    gate.done("a")

    assert gate.arrive("b", 0.0) == Arrival(True)


@PROPERTY
@given(st.integers(1, 5), st.lists(st.tuples(st.booleans(), st.floats(0, 0.5)), max_size=60))
def test_the_pending_count_never_passes_the_bound(bound: int, steps: list[tuple[bool, float]]) -> None:
    gate: PendingHandshakes[int] = PendingHandshakes(bound, evict_after_s=1.0)
    now, pending = 0.0, []
    for i, (arrive, dt) in enumerate(steps):
        now += dt
        if arrive or not pending:
            arrival = gate.arrive(i, now)
            pending = [p for p in pending if p not in arrival.evicted] + ([i] if arrival.admitted else [])
        else:
            gate.done(pending.pop(0))
        assert len(gate) == len(pending) <= bound


def test_a_throttle_logs_the_first_event_at_once_and_counts_the_rest_into_the_next_line() -> None:
    throttle = Throttle(1.0)

    assert throttle.hit(0.0) == 1
    assert [throttle.hit(t) for t in (0.1, 0.2, 0.9)] == [None, None, None]
    assert throttle.hit(1.05) == 4


def test_a_throttle_flushes_what_it_held_once_the_interval_is_over() -> None:
    throttle = Throttle(1.0)
    throttle.hit(0.0)
    throttle.hit(0.5)

    assert throttle.flush(0.9) is None
    assert throttle.flush(1.0) == 1
    assert throttle.flush(5.0) is None


@PROPERTY
@given(st.lists(st.floats(0, 0.3), min_size=1, max_size=200))
def test_a_throttle_logs_at_most_once_a_second_and_loses_no_count(gaps: list[float]) -> None:
    throttle = Throttle(1.0)
    now, lines, counted = 0.0, [], 0
    for gap in gaps:
        now += gap
        if (count := throttle.hit(now)) is not None:
            lines.append(now)
            counted += count
    counted += throttle.flush(now + 2.0) or 0

    assert counted == len(gaps)
    assert all(b - a >= 1.0 for a, b in itertools.pairwise(lines))
