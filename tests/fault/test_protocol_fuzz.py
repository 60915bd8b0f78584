"""A protocol fuzzer over real sockets, one connection per stream to one server.

Every frame, valid-looking or broken (tests/support/fuzz_cases.py), must get
its answer: an ``ack`` or an ``error`` with a code of PROTOCOL.md that the
case allows, never ``internal``, ``ref`` echoing the id, and the connection
open for the next frame. What was acked is kept in a model of the modelled
user's book; at the end a fresh subscribe's snapshot, the REST snapshot and
the model agree, the server logged no internal error, and a restart and a
resume go through.

The examples are derandomized (the same frames on every run) and bounded, so
the run takes seconds; every violation is collected and reported by kind.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from websockets.exceptions import ConnectionClosed

from alphaflow_live.protocol import CHANNELS, Event, Snapshot
from tests.support.book_model import BookModel, channels, money
from tests.support.client import StreamClient, health, rest_snapshot, without_server_time
from tests.support.fuzz_cases import ACK, CONTRACT_CODES, EDGE_USER, EPOCH, MODELLED_USER, REPLY, Case
from tests.support.fuzz_ingest import ingest_cases, named_ingest_cases
from tests.support.fuzz_portfolio import named_portfolio_cases, portfolio_cases
from tests.support.paced_socket import PacedSocket
from tests.support.server import ServerProcess, StartServer, Tokens

pytestmark = pytest.mark.timeout(170)

INGEST_EXAMPLES = 400
PORTFOLIO_EXAMPLES = 250
FUZZ = settings(
    derandomize=True,  # the same frames on every run: CI is stable, a failure reproduces
    database=None,
    deadline=None,
    phases=(Phase.explicit, Phase.generate),  # violations are collected, not raised: nothing to shrink
    suppress_health_check=list(HealthCheck),
)
_event_decoder = msgspec.json.Decoder(Event)
# Log lines of a failure the server did not answer for (or answered, but must not have had).
LOGGED_FAILURES = ("internal_error", "remark_failed", "Traceback")


@dataclass
class Fuzzer:
    """Sends each case, judges the answer, and keeps the modelled user's book."""

    ingest: PacedSocket
    portfolio: PacedSocket
    epoch: str
    model: BookModel = field(default_factory=BookModel)
    sent: collections.Counter[str] = field(default_factory=collections.Counter)
    violations: dict[str, list[str]] = field(default_factory=lambda: collections.defaultdict(list))
    subscribed: bool = False
    # The seq the portfolio connection's data has reached (batches must go on from it).
    cursor: int | None = None
    _barriers: int = 0

    def fail(self, case: Case, problem: str, answer: Any = None) -> None:
        shown = json.dumps(answer, ensure_ascii=False)[:300] if answer is not None else ""
        self.violations[case.label].append(f"{problem}\n      sent {case.show()}\n      got  {shown}")

    # -------------------------------------------------------------- ingest

    def send_ingest(self, case: Case) -> None:
        self.sent[case.label] += 1
        try:
            self.ingest.send(case.frame)
            reply = self.ingest.recv()
        except (ConnectionClosed, TimeoutError) as exc:
            self.fail(case, f"no answer, the connection went: {exc!r}")
            self.ingest.reopen()
            return
        problem = judge_reply(case, reply, ACK)
        if problem:
            self.fail(case, problem, reply)
        acked = isinstance(reply, dict) and reply.get("type") == "ack"
        if acked and case.user == MODELLED_USER and case.events:
            events = [_event_decoder.decode(json.dumps(e)) for e in case.events]
            expected = self.model.duplicates_in(events)
            duplicates = list(dict.fromkeys(reply.get("duplicates", [])))
            if duplicates != expected:
                self.fail(case, f"the ack's duplicates should be {expected}", reply)
            self.model.apply(events)

    # ----------------------------------------------------------- portfolio

    def send_portfolio(self, case: Case) -> None:
        self.sent[case.label] += 1
        self._barriers += 1
        barrier = f"\u2063barrier-{self._barriers}"
        frame = case.frame.replace(EPOCH, self.epoch) if isinstance(case.frame, str) else case.frame
        if case.kind == "unsubscribe" and not self.subscribed and REPLY in case.accept:
            # The contract says nothing of an unsubscribe before any subscribe; refusing it is fair.
            case = dataclasses.replace(case, accept=case.accept | {"invalid_message"})
        answer: list[dict[str, Any]] = []
        try:
            self.portfolio.send(frame)
            # Everything the server sends before the pong to this ping answers the case.
            self.portfolio.send({"type": "ping", "id": barrier})
            while True:
                message = self.portfolio.recv()
                if not isinstance(message, dict):
                    self.fail(case, "a frame that is not a JSON object", message)
                elif message.get("type") == "pong" and message.get("id") == barrier:
                    break
                elif message.get("type") != "heartbeat":
                    answer.append(message)
        except (ConnectionClosed, TimeoutError) as exc:
            self.fail(case, f"no answer, the connection went: {exc!r}", answer)
            self.portfolio.reopen()
            self.portfolio.recv()  # its welcome
            self.subscribed, self.cursor = False, None
            return
        for problem in self.judge_portfolio(case, answer):
            self.fail(case, problem, answer)

    def judge_portfolio(self, case: Case, answer: list[dict[str, Any]]) -> list[str]:
        problems = self.follow_data(answer)
        replies = [m for m in answer if m.get("type") not in ("batch", "snapshot")]
        errors = [m for m in replies if m.get("type") == "error"]
        if not errors and REPLY not in case.accept:
            return [*problems, f"answered, but the contract refuses this frame ({sorted(case.accept)})"]
        if errors and not any(m.get("type") == "subscribed" for m in replies):
            if len(replies) != 1:
                problems.append(f"expected one error, got {len(replies)} replies")
            problems += [p for e in errors if (p := judge_reply(case, e, REPLY))]
            return problems
        if case.kind == "ping":
            pong = [m for m in replies if m.get("type") == "pong"]
            if len(replies) != 1 or len(pong) != 1 or pong[0].get("id") != case.id:
                problems.append(f"expected one pong with id {case.id!r}")
        elif case.kind == "subscribe":
            problems += self.judge_subscribe(case, answer)
        elif case.kind == "unsubscribe":
            if [m.get("type") for m in replies] != ["subscribed"]:
                problems.append("expected subscribed with the remaining channels")
        else:
            problems.append(f"expected an error with one of {sorted(case.accept)}")
        return problems

    def judge_subscribe(self, case: Case, answer: list[dict[str, Any]]) -> list[str]:
        kinds = [m.get("type") for m in answer]
        if not kinds or kinds[0] != "subscribed":
            return ["subscribed must be the first frame after a subscribe (PROTOCOL.md)"]
        self.subscribed = True
        requested = case.message().get("channels")
        wanted = [c for c in CHANNELS if isinstance(requested, list) and c in requested]
        if isinstance(requested, list) and answer[0].get("channels") != wanted:
            return [f"subscribed should list the channels asked for, in protocol order: {requested}"]
        recovered = answer[0].get("recovered")
        rest = kinds[1:]
        if recovered is True and (not rest or set(rest) != {"batch"}):
            return ["a recovered subscribe is followed by the batches that recover it, and nothing else"]
        if recovered is False:
            expected = ["error", "snapshot"] if case.resume else ["snapshot"]
            if rest != expected:
                return [f"after subscribed (not recovered), expected {expected}, got {rest}"]
            if case.resume and answer[1].get("code") != "resume_unavailable":
                return ["a resume that cannot be served is answered resume_unavailable"]
        if recovered not in (True, False):
            return ["subscribed must say whether it recovered"]
        return []

    def follow_data(self, answer: list[dict[str, Any]]) -> list[str]:
        """Snapshots and batches on one connection: each batch goes on where the data before it ended."""
        problems: list[str] = []
        for message in answer:
            if message.get("type") == "subscribed":
                self.cursor = None
            elif message.get("type") == "snapshot":
                self.cursor = message.get("seq")
            elif message.get("type") == "batch":
                if self.cursor is not None and message.get("from_seq") != self.cursor:
                    problems.append(f"a batch from {message.get('from_seq')} after data up to {self.cursor}")
                self.cursor = message.get("to_seq")
        return problems

    def report(self) -> str:
        total = sum(len(v) for v in self.violations.values())
        lines = [f"{total} violations in {sum(self.sent.values())} frames:"]
        for label, problems in sorted(self.violations.items(), key=lambda kv: -len(kv[1])):
            lines.append(f"  {label}: {len(problems)} of {self.sent[label]}")
            lines += [f"    - {p}" for p in problems[:3]]
        return "\n".join(lines)


def judge_reply(case: Case, reply: Any, success: str) -> str | None:
    """What is wrong with ``reply`` (an ack or an error) to ``case``, if anything."""
    if not isinstance(reply, dict):
        return "the reply is not a JSON object"
    if reply.get("type") == "ack" and success == ACK:
        if ACK not in case.accept:
            return f"acked, but the contract refuses this frame ({sorted(case.accept)})"
        if case.id is not None and reply.get("id") != case.id:
            return f"the ack's id should be {case.id!r}"
        if not isinstance(reply.get("seqs"), list):
            return "an ack carries its seqs"
        return None
    if reply.get("type") != "error":
        return f"expected an ack or an error, got a {reply.get('type')!r}"
    code, message = reply.get("code"), str(reply.get("message", ""))
    if code not in CONTRACT_CODES:
        return f"{code!r} is no error code of PROTOCOL.md"
    if code == "internal":
        return "internal: the server failed on this frame"
    if code not in case.accept:
        return f"expected {sorted(case.accept)}, got {code}: {message[:200]}"
    if case.id is not None and reply.get("ref") != case.id:
        return f"the error's ref should echo the id {case.id!r}"
    if case.field is not None and code == "invalid_message" and case.field not in message:
        return f"the error should name the field {case.field!r}: {message[:200]}"
    return None


def book_of(snapshot: Snapshot) -> tuple[Any, ...]:
    """What a restart must keep: epoch, quantities, cash, orders and fills.

    Cash at the engine's 4 places: a restart may re-mark, and a derived account
    reports the cash a published one gave with more places at 4.
    """
    book = channels(snapshot)
    return (
        snapshot.epoch,
        {p.symbol: p.qty for p in book.positions},
        money(book.account.cash) if book.account is not None else None,
        {o.id: o.status for o in book.orders},
        [f.id for f in book.fills],
    )


def fuzz(fuzzer: Fuzzer) -> None:
    """Every case, in a thread of its own (hypothesis drives blocking sockets)."""
    for case in named_ingest_cases():
        fuzzer.send_ingest(case)

    @settings(FUZZ, max_examples=INGEST_EXAMPLES)
    @given(ingest_cases())
    def ingest(case: Case) -> None:
        fuzzer.send_ingest(case)

    ingest()
    for case in named_portfolio_cases():
        fuzzer.send_portfolio(case)

    @settings(FUZZ, max_examples=PORTFOLIO_EXAMPLES)
    @given(portfolio_cases())
    def portfolio(case: Case) -> None:
        fuzzer.send_portfolio(case)

    portfolio()


async def test_fuzzed_frames_are_each_answered_by_the_contract_and_the_books_match_what_was_acked(
    start_server: StartServer, tokens: Tokens
) -> None:
    # Marks re-priced at once: no re-mark is pending when the snapshots are compared.
    server: ServerProcess = start_server("--mark-interval-ms", "0")
    epoch = (await rest_snapshot(server.http_base, tokens.alice)).epoch
    fuzzer = Fuzzer(
        PacedSocket(f"{server.ws_base}/ws/ingest", tokens.service),
        PacedSocket(f"{server.ws_base}/ws/portfolio", tokens.alice),
        epoch,
    )
    welcome = await asyncio.to_thread(fuzzer.portfolio.recv)
    assert welcome.get("type") == "welcome", welcome
    try:
        await asyncio.to_thread(fuzz, fuzzer)
    finally:
        fuzzer.ingest.close()
        fuzzer.portfolio.close()
    print(f"fuzzed {sum(fuzzer.sent.values())} frames: {dict(fuzzer.sent)}")

    problems: list[str] = []
    before: dict[str, Any] = {}
    for user, token in ((MODELLED_USER, tokens.alice), (EDGE_USER, tokens.bob)):
        rest = await rest_snapshot(server.http_base, token)
        fresh = await StreamClient.connect(server.ws_base, token)
        await fresh.subscribe()
        await fresh.close()
        before[user] = rest
        if without_server_time(fresh.snapshots[-1]) != without_server_time(rest):
            problems.append(f"{user}: a fresh subscribe's snapshot differs from the REST snapshot")
        if user == MODELLED_USER:
            problems += [f"{user}: {p}" for p in fuzzer.model.mismatches(rest)]
    status = await health(server.http_base)
    if status["status"] != "healthy":
        problems.append(f"/healthz after the fuzz: {status}")
    logged = [line for line in server.log().splitlines() if any(w in line for w in LOGGED_FAILURES)]
    if logged:
        problems.append(f"the server logged {len(logged)} internal errors, first: {logged[:3]}")

    await asyncio.to_thread(server.restart)  # what was acked goes through a restart and a resume
    for user, token in ((MODELLED_USER, tokens.alice), (EDGE_USER, tokens.bob)):
        after = await rest_snapshot(server.http_base, token)
        # A restart may re-mark positions (new events); what was acked stays as it was.
        if book_of(after) != book_of(before[user]) or after.seq < before[user].seq:
            problems.append(
                f"{user}: after a restart the book is {book_of(after)} at seq {after.seq}, "
                f"before it {book_of(before[user])} at seq {before[user].seq}"
            )
        resumed = await StreamClient.connect(server.ws_base, token)
        resumed.state.epoch, resumed.state.seq = before[user].epoch, before[user].seq
        reply = await resumed.subscribe(resume={"epoch": before[user].epoch, "seq": before[user].seq})
        await resumed.close()
        if reply.recovered is not True:
            problems.append(f"{user}: a resume at the last seq before the restart was not recovered")

    assert not fuzzer.violations and not problems, fuzzer.report() + "\n" + "\n".join(problems)
