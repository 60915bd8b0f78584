"""The client's protocol decisions (alphaflow_live.tracking), without a socket or a loop."""

from __future__ import annotations

import itertools
import json
import logging
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alphaflow_live.backoff import Backoff
from alphaflow_live.codes import CLOSE_RATE_LIMIT, CLOSE_STREAMING_DISABLED
from alphaflow_live.errors import AuthError
from alphaflow_live.freshness import Status
from alphaflow_live.protocol import (
    Batch,
    Error,
    Event,
    Heartbeat,
    Pong,
    ResumePoint,
    Snapshot,
    Subscribe,
    Subscribed,
    Welcome,
)
from alphaflow_live.state import BatchOutcome, PortfolioState
from alphaflow_live.tracking import (
    Action,
    Apply,
    Attempt,
    Count,
    Endpoints,
    Note,
    Outcome,
    Policy,
    Poll,
    Reconnect,
    Send,
    SetStatus,
    Stop,
    Touch,
    Tracker,
    ended,
    polled,
    refused,
)

from .factories import TS, event_sequences, position, stamp

CHANNELS = ["positions", "orders", "account", "trades"]
HELD = ResumePoint("e-1", 10)


def batch(from_seq: int, to_seq: int, epoch: str = "e-1", events: list[Event] | None = None) -> Batch:
    return Batch(epoch=epoch, from_seq=from_seq, to_seq=to_seq, server_time=TS, events=events or [])


def snapshot(seq: int, epoch: str = "e-1") -> Snapshot:
    return Snapshot(epoch=epoch, seq=seq, server_time=TS, positions=[], orders=[], account=None, fills=[])


def sent(actions: list[Action]) -> list[Subscribe]:
    return [a.message for a in actions if isinstance(a, Send)]


# ------------------------------------------------------------------ subscribing


def test_a_new_connection_subscribes_resuming_from_what_is_held() -> None:
    [subscribe] = sent(Tracker(CHANNELS).opened(HELD))

    assert subscribe.resume == HELD and subscribe.channels == CHANNELS


def test_a_first_connection_subscribes_without_resume() -> None:
    [subscribe] = sent(Tracker(["positions"]).opened(None))

    assert subscribe.resume is None and subscribe.channels == ["positions"]


def test_a_new_connection_ends_a_heal_that_the_old_one_started() -> None:
    tracker = Tracker(CHANNELS)
    tracker.receive(batch(12, 13), HELD)
    assert tracker.healing

    tracker.opened(HELD)

    assert not tracker.healing


# ------------------------------------------------------------------ messages


def test_a_snapshot_is_applied_and_makes_the_stream_live() -> None:
    message = snapshot(5)

    assert Tracker(CHANNELS).receive(message, None) == [Apply(message), SetStatus("live")]


def test_a_batch_that_starts_where_we_are_is_applied() -> None:
    message = batch(10, 12)

    assert Tracker(CHANNELS).receive(message, HELD) == [Apply(message), SetStatus("live")]


def test_a_batch_that_overlaps_what_we_hold_is_applied() -> None:
    message = batch(8, 12)

    assert Apply(message) in Tracker(CHANNELS).receive(message, HELD)


def test_a_batch_we_hold_already_changes_nothing() -> None:
    assert Tracker(CHANNELS).receive(batch(5, 10), HELD) == []


@pytest.mark.parametrize(
    ("message", "held", "outcome"),
    [
        (batch(11, 12), HELD, BatchOutcome.GAP),
        (batch(10, 12, epoch="e-2"), HELD, BatchOutcome.EPOCH_CHANGED),
        (batch(0, 1), None, BatchOutcome.NO_BASE),
    ],
)
def test_a_batch_that_does_not_fit_starts_one_heal_with_resume(
    message: Batch, held: ResumePoint | None, outcome: BatchOutcome
) -> None:
    tracker = Tracker(CHANNELS)

    actions = tracker.receive(message, held)

    assert tracker.healing
    assert [s.resume for s in sent(actions)] == [held]
    assert Count("resyncs") in actions
    assert any(isinstance(a, Note) and outcome.value in a.text for a in actions)
    assert not any(isinstance(a, Apply) for a in actions)


def test_misfits_during_a_heal_are_ignored_until_its_reply() -> None:
    tracker = Tracker(CHANNELS)
    tracker.receive(batch(11, 12), HELD)

    assert tracker.receive(batch(12, 13), HELD) == []
    assert tracker.receive(batch(10, 13), HELD)[0] == Apply(batch(10, 13))
    assert not tracker.healing, "the reply ends the heal"


def test_a_snapshot_ends_a_heal() -> None:
    tracker = Tracker(CHANNELS)
    tracker.receive(batch(11, 12), HELD)

    tracker.receive(snapshot(20), HELD)

    assert not tracker.healing


def test_a_heartbeat_says_the_data_is_current() -> None:
    assert Tracker(CHANNELS).receive(Heartbeat(server_time=TS, seq=10), HELD) == [Touch(TS)]


def test_a_heartbeat_ahead_of_what_we_hold_is_a_gap() -> None:
    tracker = Tracker(CHANNELS)

    actions = tracker.receive(Heartbeat(server_time=TS, seq=11), HELD)

    assert actions[0] == Touch(TS) and [s.resume for s in sent(actions)] == [HELD]
    assert tracker.receive(Heartbeat(server_time=TS, seq=12), HELD) == [Touch(TS)], "one heal at a time"


def test_a_heartbeat_before_any_snapshot_only_touches() -> None:
    assert Tracker(CHANNELS).receive(Heartbeat(server_time=TS, seq=3), None) == [Touch(TS)]


@pytest.mark.parametrize(
    ("code", "level"), [("resume_unavailable", logging.INFO), ("internal", logging.WARNING)]
)
def test_server_errors_are_logged_by_how_much_they_matter(code: str, level: int) -> None:
    [note] = Tracker(CHANNELS).receive(Error(code=code, message="why"), HELD)  # type: ignore[arg-type]

    assert note == Note(level, f"server says {code}: why")


def test_a_welcome_counts_a_connection_and_other_replies_do_nothing() -> None:
    welcome = Welcome(user_id="a", connection_id="c", epoch="e-1", server_time=TS, batch_window_ms=250,
                      heartbeat_s=15, channels=["positions"])  # fmt: skip
    tracker = Tracker(CHANNELS)

    assert tracker.receive(welcome, None) == [Count("connections")]
    assert tracker.receive(Subscribed(channels=["positions"], recovered=False), None) == []
    assert tracker.receive(Pong(id=1, server_time=TS), None) == []


def test_a_polled_snapshot_is_applied_and_says_polling_and_why() -> None:
    message = snapshot(3)

    assert polled(message, "streaming is switched off by the server") == [
        Count("polls"),
        Apply(message),
        SetStatus("polling", "streaming is switched off by the server"),
    ]


# ------------------------------------------------------------------ refusals and ends


@pytest.mark.parametrize("status", [401, 403])
def test_refused_credentials_are_fatal_with_the_servers_reason(status: int) -> None:
    body = json.dumps({"error": "invalid_token", "message": "token rejected"}).encode()

    result = refused(status, body)

    assert result.outcome is Outcome.FATAL
    assert isinstance(result.error, AuthError)
    assert str(result.error) == f"the server refused the token (HTTP {status}): token rejected"


def test_streaming_switched_off_means_polling() -> None:
    body = json.dumps({"error": "streaming_disabled", "fallback": "/api/portfolio/snapshot"}).encode()

    assert refused(503, body).outcome is Outcome.DISABLED


@pytest.mark.parametrize(
    ("status", "body"),
    [(503, b'{"error": "server_full", "message": "full"}'), (429, b'{"error": "too_many_connections"}'),
     (500, b"Failed to open a WebSocket connection."), (502, b"[1, 2]")],
)  # fmt: skip
def test_other_refusals_are_failures_to_retry(status: int, body: bytes) -> None:
    result = refused(status, body)

    assert result.outcome is Outcome.FAILED and result.error is None
    assert f"HTTP {status}" in result.message


def test_how_a_connection_ends_the_attempt() -> None:
    def outcome(**kwargs: object) -> Outcome:
        return ended(**kwargs).outcome  # type: ignore[arg-type]

    assert outcome(streamed=True, close_code=CLOSE_STREAMING_DISABLED.code, stopping=True) is Outcome.STOPPED
    assert (
        outcome(streamed=True, close_code=CLOSE_STREAMING_DISABLED.code, stopping=False) is Outcome.DISABLED
    )
    assert outcome(streamed=True, close_code=CLOSE_RATE_LIMIT.code, stopping=False) is Outcome.DROPPED
    assert outcome(streamed=False, close_code=None, stopping=False) is Outcome.FAILED
    assert ended(streamed=False, close_code=None, stopping=False, reason="refused").reason == "refused"


def test_a_connection_limit_is_a_notable_refusal_that_says_when_to_retry() -> None:
    body = b'{"error": "too_many_connections", "message": "user \'alice\' already has 5 connections"}'

    attempt = refused(429, body, retry_after="5").attempt

    assert attempt.notable and attempt.retry_after_s == 5.0
    assert (
        attempt.reason == "the server refused the stream (HTTP 429): user 'alice' already has 5 connections"
    )


@pytest.mark.parametrize("header", [None, "soon", "Wed, 21 Oct 2026 07:28:00 GMT", "-3", "99999"])
def test_a_retry_after_that_is_not_a_sensible_number_of_seconds_is_ignored(header: str | None) -> None:
    assert refused(503, b'{"error": "server_full"}', retry_after=header).attempt.retry_after_s is None


# ------------------------------------------------------------------ the policy


def policy(fallback: int = 3) -> Policy:
    return Policy(Backoff(base_s=1.0, cap_s=8.0, rng=random.Random(3)), fallback_after_failures=fallback)


@pytest.mark.parametrize("outcome", [Outcome.FATAL, Outcome.STOPPED])
def test_refused_credentials_and_closing_stop_for_good(outcome: Outcome) -> None:
    assert policy().after(Attempt(outcome)) == Stop()


def test_failures_back_off_then_fall_back_to_polling() -> None:
    rules = policy(fallback=3)

    steps = [rules.after(Attempt(Outcome.FAILED, "cannot connect")) for _ in range(4)]

    assert [type(s) for s in steps] == [Reconnect, Reconnect, Poll, Poll]
    assert all(0 <= s.delay_s <= b for s, b in zip(steps[:2], [1.0, 2.0], strict=True))  # type: ignore[union-attr]
    assert steps[2].reason == "the stream failed 3 times in a row; last: cannot connect"  # type: ignore[union-attr]


def test_a_stream_that_ran_is_resumed_soon_and_clears_the_failures() -> None:
    rules = policy(fallback=2)
    rules.after(Attempt(Outcome.FAILED))

    step = rules.after(Attempt(Outcome.DROPPED))

    assert isinstance(step, Reconnect) and step.delay_s <= 1.0
    assert isinstance(rules.after(Attempt(Outcome.FAILED)), Reconnect), "the count started over"


def test_streaming_switched_off_polls_at_once_and_says_why() -> None:
    step = policy().after(Attempt(Outcome.DISABLED, "switched off"))
    assert isinstance(step, Poll) and step.reason == "switched off"


def test_the_server_s_retry_after_is_the_least_delay() -> None:
    step = policy().after(Attempt(Outcome.FAILED, retry_after_s=5.0))

    assert isinstance(step, Reconnect) and step.delay_s == 5.0


# ------------------------------------------------------------------ a property


class Sink:
    """What the connection shell does with the actions, over a plain PortfolioState."""

    def __init__(self) -> None:
        self.state = PortfolioState()
        self.status: Status = "connecting"

    def held(self) -> ResumePoint | None:
        state = self.state
        return None if state.epoch is None or state.seq is None else ResumePoint(state.epoch, state.seq)

    def carry_out(self, actions: list[Action]) -> list[Subscribe]:
        for action in actions:
            if isinstance(action, Apply):
                if isinstance(action.message, Snapshot):
                    self.state.apply_snapshot(action.message)
                else:
                    assert self.state.apply_batch(action.message) is BatchOutcome.APPLIED
            elif isinstance(action, SetStatus):
                self.status = action.status
        return sent(actions)


@settings(max_examples=60, deadline=None)
@given(events=event_sequences(min_size=1, max_size=30), data=st.data())
def test_whatever_batches_are_lost_or_repeated_the_client_ends_with_every_change(
    events: list[Event], data: st.DataObject
) -> None:
    log = stamp(events)
    server = PortfolioState()
    server.epoch, server.seq = "e-1", 0
    server.apply_events(log)
    cuts = sorted(data.draw(st.sets(st.integers(1, len(log) - 1), max_size=8))) if len(log) > 1 else []
    bounds = [0, *cuts, len(log)]
    batches = [batch(a, b, events=log[a:b]) for a, b in itertools.pairwise(bounds)]
    # The network loses some batches and repeats others.
    delivered = [b for b in batches if not data.draw(st.booleans(), label="lost")]
    delivered += data.draw(st.lists(st.sampled_from(batches), max_size=3), label="repeated")

    tracker, sink = Tracker(CHANNELS), Sink()

    def recovered(resubscribe: Subscribe) -> Batch:
        """The server's answer to a resume: everything after the resume point."""
        assert resubscribe.resume is not None
        return batch(resubscribe.resume.seq, len(log), events=log[resubscribe.resume.seq :])

    sink.carry_out(tracker.opened(None))
    sink.carry_out(tracker.receive(snapshot(0), sink.held()))
    pending = list(delivered)
    while pending:
        pending[:0] = map(recovered, sink.carry_out(tracker.receive(pending.pop(0), sink.held())))
    # The server's heartbeat says how far it has delivered; a client short of it heals.
    for resubscribe in sink.carry_out(tracker.receive(Heartbeat(server_time=TS, seq=len(log)), sink.held())):
        sink.carry_out(tracker.receive(recovered(resubscribe), sink.held()))

    assert sink.state.seq == len(log)
    assert sink.state.positions == server.positions and sink.state.orders == server.orders
    assert sink.state.account == server.account and list(sink.state.fills) == list(server.fills)
    assert sink.status == "live"


def test_a_position_event_in_a_batch_reaches_the_state_through_the_actions() -> None:
    tracker, sink = Tracker(CHANNELS), Sink()
    sink.carry_out(tracker.receive(snapshot(0), None))

    sink.carry_out(tracker.receive(batch(0, 1, events=stamp([position("AAPL", qty="5")])), sink.held()))

    assert sink.state.positions["AAPL"].qty == 5


# ------------------------------------------------------------------ several servers


def test_a_single_url_is_always_the_one_tried() -> None:
    endpoints = Endpoints(["ws://a/ws/portfolio"])

    assert {endpoints.advance() for _ in range(5)} == {"ws://a/ws/portfolio"}


@settings(max_examples=50, deadline=None)
@given(st.integers(2, 5), st.integers(0, 2**32))
def test_several_urls_are_tried_in_shuffled_rounds_never_the_same_twice_in_a_row(
    nodes: int, seed: int
) -> None:
    urls = [f"ws://node-{i}:8765/ws/portfolio" for i in range(nodes)]
    endpoints = Endpoints(urls, rng=random.Random(seed))

    tried = [endpoints.current, *(endpoints.advance() for _ in range(4 * nodes - 1))]

    assert all(a != b for a, b in itertools.pairwise(tried)), "a dead node is left at once"
    for start in range(0, len(tried), nodes):
        assert sorted(tried[start : start + nodes]) == sorted(urls), "every node once a round"


def test_the_first_url_tried_is_spread_over_the_nodes() -> None:
    urls = [f"ws://node-{i}/ws/portfolio" for i in range(3)]

    firsts = {Endpoints(urls, rng=random.Random(seed)).current for seed in range(30)}

    assert firsts == set(urls)


def test_no_url_is_an_error() -> None:
    with pytest.raises(ValueError, match="no server URL"):
        Endpoints([])
