"""kill -9 at random moments under a publishing load: every acknowledged fill counts exactly once.

Publishers (two connections per user) keep publishes in flight (a few fills,
with or without their order) and read the acks as they send. The server is
killed with SIGKILL at a random moment of each round (seeded: the seed is
printed, ``AFL_FAULT_SEED`` replays it) and restarted on the same state dir;
the publishes whose ack was lost are sent again (the server dedupes fills by
id and says so in the ack's ``duplicates``), and now and then one that was
acked is sent again on purpose. After each restart, and at the end, the
whole event history since seq 0, the REST snapshot and a fresh subscribe are
held against what was acked: every acked fill exactly once, every ack right
about which of its fills it applied, no publish split, and positions and cash
equal to a model computed from the acked fills alone.
"""

from __future__ import annotations

import asyncio
import collections
import random
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal

import pytest

from alphaflow_live.protocol import Event, Fill, FillEvent, OrderEvent
from tests.support import events as ev
from tests.support.book_model import BookModel
from tests.support.client import StreamClient, history, rest_snapshot, without_server_time
from tests.support.pipeline import Acked, Lost, Outcome, PipelinedPublisher, Refused
from tests.support.seeds import seeded_random
from tests.support.server import ServerProcess, StartServer, Tokens

pytestmark = pytest.mark.timeout(150)

SYMBOLS = ("AAPL", "MSFT", "NVDA", "TSLA")
KILL_ROUNDS = 5
CONNECTIONS_PER_USER = 2
# Publishes per user in the last round, which ends without a kill.
LAST_ROUND_PUBLISHES = 40
INITIAL_CASH = "100000.00"


@dataclass
class Sent:
    """One publish of the load, and the outcome of every time it was sent."""

    user: str
    events: list[Event]
    outcomes: list[Outcome] = field(default_factory=list)

    @property
    def fills(self) -> list[Fill]:
        return [e.data for e in self.events if isinstance(e, FillEvent)]

    @property
    def order_id(self) -> str | None:
        return next((e.data.id for e in self.events if isinstance(e, OrderEvent)), None)

    @property
    def acked(self) -> bool:
        return any(isinstance(o, Acked) for o in self.outcomes)


class Load:
    """The publishes per user: lost ones first, sometimes an acked one again, else a new one."""

    def __init__(self, rng: random.Random, users: tuple[str, ...]) -> None:
        self.rng = rng
        self.made: dict[str, list[Sent]] = {user: [] for user in users}
        self.lost: dict[str, collections.deque[Sent]] = {user: collections.deque() for user in users}

    def next_for(self, user: str) -> Sent:
        if self.lost[user]:
            return self.lost[user].popleft()
        acked = [s for s in self.made[user][-50:] if s.acked]
        if acked and self.rng.random() < 0.05:
            return self.rng.choice(acked)  # a publisher that is unsure of an ack may publish again
        return self._new(user)

    def _new(self, user: str) -> Sent:
        rng = self.rng
        publish_id = f"{user}-{len(self.made[user]) + 1}"
        symbols = [rng.choice(SYMBOLS) for _ in range(rng.randint(1, 4))]
        events: list[Event] = []
        for n, symbol in enumerate(symbols):
            # Quantities with one decimal, prices with two: each product is exact at 3 places.
            qty, price = Decimal(rng.randint(1, 400)) / 10, Decimal(rng.randint(5_000, 50_000)) / 100
            side = rng.choice(("buy", "sell"))
            fill_id = f"{publish_id}.{n}"
            events.append(ev.fill(fill_id, symbol=symbol, side=side, qty=str(qty), price=str(price)))
        if rng.random() < 0.5:  # fills and their order: all or nothing
            events.append(ev.order(f"o-{publish_id}", status="accepted", symbol=symbols[0]))
        sent = Sent(user, events)
        self.made[user].append(sent)
        return sent

    def settle(self, sent: Sent, outcome: Outcome) -> None:
        sent.outcomes.append(outcome)
        if isinstance(outcome, Lost) and not sent.acked and sent not in self.lost[sent.user]:
            self.lost[sent.user].append(sent)


async def run_round(
    server: ServerProcess,
    service_token: str,
    load: Load,
    *,
    kill_after: float | None,
    done: Callable[[str], bool],
) -> None:
    """Publish for every user until ``done`` or the kill ``kill_after`` seconds in; then settle
    every outcome."""
    in_flight: list[tuple[Sent, asyncio.Future[Outcome]]] = []
    publishers = [
        (user, await PipelinedPublisher.connect(server.ws_base, service_token))
        for user in load.made
        for _ in range(CONNECTIONS_PER_USER)
    ]

    async def feed(user: str, publisher: PipelinedPublisher) -> None:
        while not publisher.lost and not done(user):
            sent = load.next_for(user)
            in_flight.append((sent, await publisher.submit(user, sent.events)))

    feeders = [asyncio.create_task(feed(user, publisher)) for user, publisher in publishers]
    if kill_after is not None:
        await asyncio.sleep(kill_after)  # the random moment of the fault, not a wait for a condition
        await asyncio.to_thread(server.stop, signal.SIGKILL)
    await asyncio.wait_for(asyncio.gather(*feeders), 30)
    for _, publisher in publishers:
        await publisher.drain(timeout=15)
        assert not publisher.violations, f"replies that broke the contract: {publisher.violations[:5]}"
        await publisher.close()
    for sent, outcome in in_flight:
        load.settle(sent, outcome.result())


def accounting_problems(made: list[Sent], fill_seqs: dict[str, list[int]]) -> list[str]:
    """Every acked fill once in the history, and each of its acks truthful about it."""
    problems: list[str] = []
    for sent in made:
        refused = [o for o in sent.outcomes if isinstance(o, Refused)]
        if refused:
            problems.append(f"{sent.fills[0].id}…: a valid publish was refused: {refused}")
        if not sent.acked:
            problems.append(f"{sent.fills[0].id}…: never acked (outcomes {sent.outcomes})")
        for fill in sent.fills:
            seqs = fill_seqs.get(fill.id, [])
            if len(seqs) != 1:
                problems.append(f"{fill.id}: in the history {len(seqs)} times (seqs {seqs}), expected once")
                continue
            (seq,) = seqs
            for ack in (o for o in sent.outcomes if isinstance(o, Acked)):
                applied_here, reported_duplicate = seq in ack.seqs, fill.id in ack.duplicates
                if applied_here == reported_duplicate:
                    problems.append(
                        f"{fill.id} (seq {seq}): an ack must either carry its seq or list it in "
                        f"duplicates, got seqs {ack.seqs} duplicates {ack.duplicates}"
                    )
    return problems


def split_publishes(made: list[Sent], past: StreamClient) -> list[str]:
    """Publishes of which the server holds some events but not all (fills, and the order if any)."""
    fills, orders = set(past.fill_ids), set(past.state.orders)
    problems: list[str] = []
    for sent in made:
        held = {fill.id: fill.id in fills for fill in sent.fills}
        if sent.order_id is not None:
            held[sent.order_id] = sent.order_id in orders
        if len(set(held.values())) > 1:
            problems.append(f"a publish is all or nothing, but the server holds only part of one: {held}")
    return problems


async def test_kill_9_under_load_loses_no_acked_fill_doubles_none_and_splits_no_publish(
    start_server: StartServer, tokens: Tokens
) -> None:
    rng, seed = seeded_random("kill -9 under load")
    users = {"alice": tokens.alice, "bob": tokens.bob}
    server = start_server()
    load = Load(rng, tuple(users))
    models = {user: BookModel() for user in users}
    opening = await PipelinedPublisher.connect(server.ws_base, tokens.service)
    for user, model in models.items():
        account = ev.account(cash=INITIAL_CASH)
        outcome = await opening.request(user, [account])
        assert isinstance(outcome, Acked), f"the opening account was not acked: {outcome}"
        model.apply([account])
    await opening.close()
    # Each user's sequence has its own epoch, which a kill must not change.
    epochs = {user: (await rest_snapshot(server.http_base, token)).epoch for user, token in users.items()}
    problems: list[str] = []

    for round_ in range(KILL_ROUNDS):
        kill_after = rng.uniform(0.05, 1.2)
        print(f"round {round_}: kill -9 after {kill_after:.3f}s")
        await run_round(server, tokens.service, load, kill_after=kill_after, done=lambda user: False)
        server.port = 0  # a fresh ephemeral port: the old one may still be held
        await asyncio.to_thread(server.start)
        for user, token in users.items():  # before anything lost is sent again
            seq = (await rest_snapshot(server.http_base, token)).seq
            past = await history(server.ws_base, token, epochs[user], seq)
            problems += [f"{user}, after kill {round_}: {p}" for p in split_publishes(load.made[user], past)]
            await past.close()

    target = {user: len(load.made[user]) + LAST_ROUND_PUBLISHES for user in users}
    await run_round(
        server,
        tokens.service,
        load,
        kill_after=None,
        done=lambda user: not load.lost[user] and len(load.made[user]) >= target[user],
    )

    for user, token in users.items():
        rest = await rest_snapshot(server.http_base, token)
        fresh = await StreamClient.connect(server.ws_base, token)
        await fresh.subscribe()
        past = await history(server.ws_base, token, epochs[user], rest.seq)
        fill_seqs: dict[str, list[int]] = collections.defaultdict(list)
        for batch in past.batches:
            for event in batch.events:
                if isinstance(event, FillEvent):
                    fill_seqs[event.data.id].append(event.seq)
        for sent in load.made[user]:
            if sent.acked:
                models[user].apply(sent.events)

        if rest.epoch != epochs[user]:
            problems.append(f"{user}: the epoch changed across kills: {epochs[user]} → {rest.epoch}")
        if without_server_time(fresh.snapshots[-1]) != without_server_time(rest):
            problems.append(f"{user}: a fresh subscribe's snapshot differs from the REST snapshot")
        problems += [f"{user}: {p}" for p in models[user].mismatches(rest)]
        problems += [f"{user}: {p}" for p in accounting_problems(load.made[user], fill_seqs)]
        problems += [f"{user}: {p}" for p in split_publishes(load.made[user], past)]
        strangers = set(fill_seqs) - {f.id for s in load.made[user] for f in s.fills}
        if strangers:
            problems.append(f"{user}: fills in the history that were never published: {sorted(strangers)}")
    internal = [line for line in server.log().splitlines() if "internal_error" in line or "Traceback" in line]
    if internal:
        problems.append(f"the server logged internal errors: {internal[:3]}")

    outcomes = [o for made in load.made.values() for s in made for o in s.outcomes]
    lost = sum(isinstance(o, Lost) for o in outcomes)
    duplicates = sum(isinstance(o, Acked) and bool(o.duplicates) for o in outcomes)
    # The case that needs the dedup: committed, then killed before the ack went out.
    committed_unacked = sum(
        isinstance(s.outcomes[0], Lost) and any(isinstance(o, Acked) and o.duplicates for o in s.outcomes)
        for made in load.made.values()
        for s in made
    )
    print(
        f"{len(outcomes)} sendings: {lost} lost to a kill ({committed_unacked} of them committed), "
        f"{duplicates} acked as duplicates"
    )
    assert lost, f"seed {seed}: no kill landed while a publish was in flight; the test proved nothing"
    assert not problems, f"seed {seed}: {len(problems)} problem(s):\n" + "\n".join(problems[:40])
