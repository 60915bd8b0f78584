"""TokenBucket (inbound rate), ConnectionLimiter (handshakes) and Outbox (outbound backlog)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alphaflow_server.limits import ConnectionLimiter, Limit, Outbox, TokenBucket

PROPERTY = settings(max_examples=200, deadline=None)

# ----------------------------------------------------------------- TokenBucket


def test_token_bucket_allows_a_full_burst_at_once_then_refuses() -> None:
    bucket = TokenBucket(rate=100, burst=100, now=0.0)

    results = [bucket.take(0.0) for _ in range(101)]

    assert results.count(True) == 100, f"expected 100 allowed, got {results.count(True)}"
    assert results[-1] is False


def test_token_bucket_refills_at_its_rate() -> None:
    bucket = TokenBucket(rate=100, burst=100, now=0.0)
    for _ in range(100):
        bucket.take(0.0)

    allowed = sum(bucket.take(0.5) for _ in range(60))

    assert allowed == 50, f"half a second at 100/s should allow 50, got {allowed}"


def test_token_bucket_refills_one_token_after_one_interval() -> None:
    bucket = TokenBucket(rate=100, burst=100, now=0.0)
    for _ in range(100):
        bucket.take(0.0)

    assert bucket.take(0.005) is False
    assert bucket.take(0.0105) is True
    assert bucket.take(0.0105) is False


def test_token_bucket_never_holds_more_than_its_burst() -> None:
    bucket = TokenBucket(rate=100, burst=100, now=0.0)

    allowed = sum(bucket.take(3600.0) for _ in range(150))

    assert allowed == 100


def test_token_bucket_sustains_exactly_its_rate() -> None:
    bucket = TokenBucket(rate=100, burst=1, now=0.0)

    allowed = sum(bucket.take(n * 0.0101) for n in range(1, 201))

    assert allowed == 200


def test_token_bucket_time_going_backwards_adds_no_tokens() -> None:
    bucket = TokenBucket(rate=10, burst=1, now=10.0)
    bucket.take(10.0)

    assert bucket.take(5.0) is False


@pytest.mark.parametrize(("rate", "burst"), [(0, 10), (-1, 10), (10, 0.5)])
def test_token_bucket_refuses_a_zero_rate_or_a_burst_below_one(rate: float, burst: float) -> None:
    with pytest.raises(ValueError, match="rate must be"):
        TokenBucket(rate=rate, burst=burst, now=0.0)


@PROPERTY
@given(
    st.lists(st.floats(min_value=0, max_value=0.05, allow_nan=False), min_size=1, max_size=300),
    st.sampled_from([1, 10, 100]),
)
def test_token_bucket_never_allows_more_than_burst_plus_rate_times_elapsed(
    gaps: list[float], rate: int
) -> None:
    bucket = TokenBucket(rate=rate, burst=rate, now=0.0)
    now, allowed = 0.0, 0
    for gap in gaps:
        now += gap
        allowed += bucket.take(now)

    limit = rate + rate * now
    assert allowed <= limit + 1e-6, f"allowed {allowed} in {now:.3f}s at {rate}/s burst {rate}"


# ----------------------------------------------------------- ConnectionLimiter


def test_connection_limiter_refuses_past_the_per_user_limit() -> None:
    limiter = ConnectionLimiter(max_total=100, max_per_user=5)

    results = [limiter.acquire("alice") for _ in range(6)]

    assert results == [None] * 5 + [Limit.PER_USER]
    assert (limiter.total, limiter.per_user["alice"]) == (5, 5)


def test_connection_limiter_per_user_limit_does_not_affect_other_users() -> None:
    limiter = ConnectionLimiter(max_total=100, max_per_user=1)
    limiter.acquire("alice")

    assert limiter.acquire("bob") is None


def test_connection_limiter_refuses_past_the_total_limit() -> None:
    limiter = ConnectionLimiter(max_total=3, max_per_user=5)

    results = [limiter.acquire(user) for user in ("a", "b", "c", "d")]

    assert results == [None, None, None, Limit.TOTAL]
    assert limiter.total == 3


def test_connection_limiter_reports_total_before_per_user_when_both_apply() -> None:
    limiter = ConnectionLimiter(max_total=2, max_per_user=2)
    limiter.acquire("alice")
    limiter.acquire("alice")

    assert limiter.acquire("alice") is Limit.TOTAL


def test_refusal_codes_are_the_handshake_error_codes() -> None:
    assert (Limit.PER_USER.value, Limit.TOTAL.value) == ("too_many_connections", "server_full")


def test_release_frees_a_place_for_the_same_user() -> None:
    limiter = ConnectionLimiter(max_total=10, max_per_user=2)
    limiter.acquire("alice")
    limiter.acquire("alice")

    limiter.release("alice")

    assert limiter.acquire("alice") is None


def test_release_of_the_last_connection_forgets_the_user() -> None:
    limiter = ConnectionLimiter(max_total=10, max_per_user=2)
    limiter.acquire("alice")

    limiter.release("alice")

    assert (limiter.total, dict(limiter.per_user)) == (0, {})


def test_streams_without_per_user_limit_count_only_towards_the_total() -> None:
    limiter = ConnectionLimiter(max_total=3, max_per_user=1)

    results = [limiter.acquire("svc", per_user_limit=False) for _ in range(3)]

    assert results == [None, None, None]
    assert (limiter.total, dict(limiter.per_user)) == (3, {})
    assert limiter.acquire("alice") is Limit.TOTAL
    limiter.release("svc", per_user_limit=False)
    assert limiter.acquire("alice") is None


@PROPERTY
@given(st.lists(st.tuples(st.booleans(), st.sampled_from(["a", "b", "c"])), max_size=60))
def test_connection_limiter_counts_stay_within_limits_and_consistent(ops: list[tuple[bool, str]]) -> None:
    limiter = ConnectionLimiter(max_total=5, max_per_user=2)
    held: dict[str, int] = {}
    for acquire, user in ops:
        if acquire:
            expected = (
                Limit.TOTAL if sum(held.values()) >= 5 else Limit.PER_USER if held.get(user, 0) >= 2 else None
            )
            got = limiter.acquire(user)
            assert got is expected, f"acquire({user}) with {held}: expected {expected}, got {got}"
            if got is None:
                held[user] = held.get(user, 0) + 1
        elif held.get(user):
            limiter.release(user)
            held[user] -= 1
        assert limiter.total == sum(held.values())
        assert dict(limiter.per_user) == {u: n for u, n in held.items() if n}


# ----------------------------------------------------------------------- Outbox


def test_outbox_queues_frames_in_order_within_the_bound() -> None:
    box = Outbox.bounded(10)

    assert [box.push(b"abc"), box.push(b"defg"), box.push(b"hij")] == [True, True, True]
    assert (len(box), box.queued_bytes) == (3, 10)
    assert [box.pop(), box.pop(), box.pop(), box.pop()] == [b"abc", b"defg", b"hij", None]
    assert box.queued_bytes == 0


def test_outbox_overflow_clears_the_backlog_and_returns_false() -> None:
    box = Outbox.bounded(10)
    box.push(b"12345")
    box.push(b"12345")

    overflowed = box.push(b"x")

    assert overflowed is False
    assert (len(box), box.queued_bytes, box.pop()) == (0, 0, None)


def test_outbox_accepts_a_single_frame_larger_than_the_bound_when_empty() -> None:
    box = Outbox.bounded(10)

    accepted = box.push(b"x" * 50)

    assert accepted is True
    assert (len(box), box.queued_bytes) == (1, 50)


def test_outbox_overflows_on_the_next_frame_after_an_oversized_one() -> None:
    box = Outbox.bounded(10)
    box.push(b"x" * 50)

    assert box.push(b"y") is False
    assert len(box) == 0


def test_outbox_accepts_frames_again_after_an_overflow() -> None:
    box = Outbox.bounded(10)
    box.push(b"x" * 8)
    box.push(b"y" * 8)

    assert box.push(b"snapshot") is True
    assert box.pop() == b"snapshot"


def test_outbox_popping_frees_room() -> None:
    box = Outbox.bounded(10)
    box.push(b"x" * 6)
    box.pop()

    assert box.push(b"y" * 6) is True


@PROPERTY
@given(st.lists(st.one_of(st.integers(min_value=1, max_value=40), st.none()), max_size=80))
def test_outbox_queued_bytes_never_exceed_the_bound_unless_one_frame_does(ops: list[int | None]) -> None:
    box = Outbox.bounded(64)
    model: list[bytes] = []
    for op in ops:
        if op is None:
            got = box.pop()
            assert got == (model.pop(0) if model else None)
        else:
            frame = bytes(op)
            accepted = box.push(frame)
            expected = not model or sum(map(len, model)) + len(frame) <= 64
            assert accepted is expected
            model = [*model, frame] if accepted else []
        assert box.queued_bytes == sum(map(len, model))
        assert box.queued_bytes <= 64 or len(box) == 1
