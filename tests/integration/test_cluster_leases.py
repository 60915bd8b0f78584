"""Partition leases, the node registry and source leases on a real redis-server and a real Redis Cluster.

Several ``PartitionLeases`` (each with its own client, as separate nodes
would have) share one Redis: they split the partitions fairly, a node that
stops stepping loses its partitions to the others once its lease is over,
tokens only grow (an old owner's claim is fenced), a clock past its
deadline hides every token before any step, and a Redis that is gone makes
``step`` fail and the tokens lapse by themselves. A source leased with
``run_under_lease`` runs on one contender at a time, including one in a
process of its own paused with SIGSTOP. Leases last one second, so a test
waits a few seconds at most; every wait polls against a deadline.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import pytest

from alphaflow_server.cluster import Fenced, RedisLog, Unavailable
from alphaflow_server.cluster.keys import partition_lease_key
from alphaflow_server.cluster.leases import (
    NODES_KEY,
    ClusterMismatch,
    LeaseChanges,
    PartitionLeases,
    fair_share,
    interval_for,
    join_cluster,
    partition_of,
)
from alphaflow_server.cluster.source_lease import run_under_lease
from tests.support.redis import Client, Connect, Deployment, RedisServer, connect
from tests.support.wait import async_wait_until

pytestmark = pytest.mark.timeout(90)

LEASE_S = 1.0
INTERVAL_S = interval_for(LEASE_S)
PARTITIONS = 64
REPO = Path(__file__).resolve().parents[2]

T = TypeVar("T")


@pytest.fixture
async def open_client(request: pytest.FixtureRequest) -> AsyncIterator[Connect]:
    """Clients of the test's Redis (``deployment``, ``redis_cluster``, or else ``redis_server``)."""
    chosen = (name for name in ("deployment", "redis_cluster") if name in request.fixturenames)
    name = next(chosen, "redis_server")
    target: Deployment = request.getfixturevalue(name)
    clients: list[Client] = []

    async def open_one() -> Client:
        clients.append(await connect(target))
        return clients[-1]

    yield open_one
    for client in clients:
        await client.aclose()


def polled(check: Callable[[], T]) -> Callable[[], Awaitable[T]]:
    """A plain condition, for ``async_wait_until`` (which also awaits steps)."""

    async def poll() -> T:
        return check()

    return poll


@dataclass
class Node:
    """One node's leases, stepped by hand or by a task every ``interval_s`` as the server will."""

    node_id: str
    client: Client
    leases: PartitionLeases
    # (partition, token) of every node of the test, in the order their steps reported the gains.
    gains: list[tuple[int, int]]
    task: asyncio.Task[None] | None = None
    last_sent: float = 0.0  # when the last step that succeeded was started
    errors: list[Exception] = field(default_factory=list)

    async def step(self) -> LeaseChanges:
        sent = time.monotonic()
        changes = await self.leases.step()
        self.last_sent = sent
        self.gains.extend(sorted(changes.gained.items()))
        return changes

    def start(self) -> None:
        async def loop() -> None:
            while True:
                try:
                    await self.step()
                except Unavailable as error:
                    self.errors.append(error)
                await asyncio.sleep(self.leases.interval_s)

        self.task = asyncio.create_task(loop())

    async def stop(self) -> None:
        assert self.task is not None
        self.task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await self.task

    @property
    def owned(self) -> set[int]:
        return set(self.leases.owned)


@pytest.fixture
async def make_node(open_client: Connect) -> AsyncIterator[Callable[..., Awaitable[Node]]]:
    nodes: list[Node] = []
    gains: list[tuple[int, int]] = []

    async def make(node_id: str, clock: Callable[[], float] = time.monotonic) -> Node:
        client = await open_client()
        leases = PartitionLeases(client, node_id=node_id, partitions=PARTITIONS, lease_s=LEASE_S, clock=clock)
        nodes.append(Node(node_id, client, leases, gains))
        return nodes[-1]

    yield make
    for node in nodes:
        if node.task is not None and not node.task.done():
            node.task.cancel()
            await asyncio.gather(node.task, return_exceptions=True)


async def rounds(nodes: list[Node], count: int) -> None:
    for _ in range(count):
        await asyncio.gather(*(node.step() for node in nodes))


async def step_until_split(nodes: list[Node], *, max_rounds: int = 6) -> int:
    """Step every node at once, round after round, until they split the partitions; how many rounds."""
    for done in range(1, max_rounds + 1):
        await rounds(nodes, 1)
        if split(nodes):
            return done
    counts = {node.node_id: len(node.owned) for node in nodes}
    raise AssertionError(f"no fair split after {max_rounds} rounds: {counts}")


def assert_fair(nodes: list[Node]) -> None:
    owned = [node.owned for node in nodes]
    share = fair_share(PARTITIONS, len(nodes))
    assert set().union(*owned) == set(range(PARTITIONS)), f"partitions nobody holds: {owned}"
    assert sum(map(len, owned)) == PARTITIONS, f"a partition held twice: {owned}"
    assert all(len(held) <= share for held in owned), (
        f"more than the share of {share}: {list(map(len, owned))}"
    )


def split(nodes: list[Node]) -> bool:
    owned = [node.owned for node in nodes]
    share = fair_share(PARTITIONS, len(nodes))
    covered = set().union(*owned) == set(range(PARTITIONS)) and sum(map(len, owned)) == PARTITIONS
    return covered and all(len(held) <= share for held in owned)


async def lease_fields(client: Client, partition: int) -> dict[str, str]:
    raw = await client.hgetall(partition_lease_key(partition))
    return {_text(key): _text(value) for key, value in raw.items()}


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


async def test_three_nodes_joining_one_by_one_split_64_partitions_fairly(
    deployment: Deployment, make_node: Callable[..., Awaitable[Node]], open_client: Connect
) -> None:
    a = await make_node("node-a")
    await a.step()
    assert a.owned == set(range(PARTITIONS)) and a.leases.live_nodes == ["node-a"]

    b = await make_node("node-b")
    await step_until_split([a, b])
    c = await make_node("node-c")
    await step_until_split([a, b, c])

    assert_fair([a, b, c])
    assert a.leases.live_nodes == b.leases.live_nodes == c.leases.live_nodes == ["node-a", "node-b", "node-c"]
    assert min(len(node.owned) for node in (a, b, c)) >= PARTITIONS - 2 * fair_share(PARTITIONS, 3)
    client = await open_client()
    for node in (a, b, c):
        for partition, token in node.leases.owned.items():
            assert node.leases.token(partition) == token
            held = await lease_fields(client, partition)
            assert (held["holder"], int(held["token"])) == (node.node_id, token), held


async def test_tokens_strictly_increase_on_every_takeover_and_fence_the_old_owner(
    make_node: Callable[..., Awaitable[Node]], open_client: Connect
) -> None:
    user = "alice"
    partition = partition_of(user, PARTITIONS)
    log = RedisLog(await open_client())
    a = await make_node("node-a")
    await a.step()
    first = a.leases.token(partition)
    assert first == 1
    await log.claim(user, first)

    b = await make_node("node-b")
    await step_until_split([a, b])  # half of a's partitions move to b
    c = await make_node("node-c")

    async def taken_over() -> bool:  # a died: it never steps again
        await rounds([b, c], 1)
        return split([b, c])

    await async_wait_until(taken_over, timeout=LEASE_S + 5, what="b and c to take over a's partitions")
    d = await make_node("node-d")
    await step_until_split([b, c, d])

    by_partition: dict[int, list[int]] = {}
    for gained, token in a.gains:
        by_partition.setdefault(gained, []).append(token)
    client = await open_client()
    for p, tokens in by_partition.items():
        assert tokens == sorted(set(tokens)), f"partition {p} was given tokens {tokens}"
        assert int((await lease_fields(client, p))["token"]) == tokens[-1]
    assert max(map(len, by_partition.values())) >= 3, by_partition
    owner = next(node for node in (b, c, d) if partition in node.owned)
    newer = owner.leases.token(partition)
    assert newer is not None and newer > first
    await log.claim(user, newer)
    with pytest.raises(Fenced):
        await log.claim(user, first)  # the old owner, back from the dead, cannot take the user back


async def test_a_node_that_stops_stepping_loses_its_partitions_within_the_lease_and_a_step(
    deployment: Deployment, make_node: Callable[..., Awaitable[Node]]
) -> None:
    nodes = [await make_node(f"node-{i}") for i in range(3)]
    for node in nodes:
        node.start()
    await async_wait_until(
        polled(lambda: split(nodes)), timeout=10, what="three nodes to split the partitions"
    )
    survivors, dead = nodes[:2], nodes[2]
    lost = dead.owned
    tokens = dead.leases.owned
    await dead.stop()
    stopped = dead.last_sent

    await async_wait_until(
        polled(lambda: split(survivors)), timeout=LEASE_S + 5, what="the survivors to take over"
    )
    took = time.monotonic() - stopped

    assert took <= LEASE_S + INTERVAL_S + 0.25, f"the takeover took {took:.2f}s"
    for p in lost:
        owner = next(node for node in survivors if p in node.owned)
        assert owner.leases.owned[p] > tokens[p]
    assert all(node.leases.live_nodes == ["node-0", "node-1"] for node in survivors)
    assert not [error for node in nodes for error in node.errors]


async def test_a_node_whose_clock_jumps_past_its_deadline_sees_no_token_before_it_steps(
    make_node: Callable[..., Awaitable[Node]],
) -> None:
    offset = 0.0
    node = await make_node("node-a", clock=lambda: time.monotonic() + offset)
    await node.step()
    assert all(node.leases.token(p) == 1 for p in range(PARTITIONS))

    offset = LEASE_S  # the process was paused for a lease's length (SIGSTOP), or its clock jumped

    assert [node.leases.token(p) for p in range(PARTITIONS)] == [None] * PARTITIONS
    assert node.owned == set(range(PARTITIONS)), "the node forgot what it believes it holds"
    changes = await node.step()  # nobody took them meanwhile: renewed, same tokens
    assert changes == LeaseChanges({}, frozenset())
    assert all(node.leases.token(p) == 1 for p in range(PARTITIONS))


async def test_a_paused_node_has_no_token_on_resume_and_its_first_step_reports_the_loss(
    make_node: Callable[..., Awaitable[Node]],
) -> None:
    paused, other = await make_node("node-a"), await make_node("node-b")
    await paused.step()
    deadline = time.monotonic() + LEASE_S + 5
    while len(other.owned) < PARTITIONS:  # only the other node steps
        assert time.monotonic() < deadline, f"node-b took only {len(other.owned)} partitions"
        await other.step()
        await asyncio.sleep(INTERVAL_S)

    assert [paused.leases.token(p) for p in range(PARTITIONS)] == [None] * PARTITIONS
    changes = await paused.step()
    assert changes.lost == frozenset(range(PARTITIONS)) and not changes.gained
    assert paused.owned == set()


async def test_release_all_hands_every_partition_over_at_the_next_step(
    make_node: Callable[..., Awaitable[Node]], open_client: Connect
) -> None:
    leaving, staying = await make_node("node-a"), await make_node("node-b")
    await step_until_split([leaving, staying])
    held = leaving.leases.owned

    await leaving.leases.release_all()
    assert leaving.leases.owned == {} and leaving.leases.token(next(iter(held))) is None
    changes = await staying.step()

    assert staying.owned == set(range(PARTITIONS)), "the released partitions waited for their lease to end"
    assert staying.leases.live_nodes == ["node-b"]
    assert {p: changes.gained[p] for p in held} == {p: token + 1 for p, token in held.items()}
    client = await open_client()
    assert await client.zrange(NODES_KEY, 0, -1) == [b"node-b"]


async def test_join_cluster_refuses_a_node_with_another_partition_count(
    deployment: Deployment, open_client: Connect
) -> None:
    client = await open_client()
    await join_cluster(client, partitions=PARTITIONS)
    await join_cluster(await open_client(), partitions=PARTITIONS)

    with pytest.raises(ClusterMismatch) as refused:
        await join_cluster(await open_client(), partitions=32)

    message = str(refused.value)
    assert "64" in message and "32" in message and "refuses to start" in message, message
    assert (refused.value.cluster_partitions, refused.value.node_partitions) == (64, 32)


async def test_redis_gone_makes_step_unavailable_and_tokens_lapse_then_the_same_tokens_come_back(
    deployment: Deployment, make_node: Callable[..., Awaitable[Node]]
) -> None:
    node = await make_node("node-a")
    await node.step()
    tokens = node.leases.owned

    deployment.kill()
    with pytest.raises(Unavailable):
        async with asyncio.timeout(10):
            await node.step()
    assert node.leases.owned == tokens, "a failed step changed what the node believes it holds"
    await async_wait_until(
        polled(lambda: all(node.leases.token(p) is None for p in range(PARTITIONS))),
        timeout=LEASE_S + 1,
        what="every token to lapse",
    )

    deployment.restart()

    seen: list[LeaseChanges] = []

    async def renewed() -> bool:
        try:
            seen.append(await node.step())
        except Unavailable:
            return False
        return all(node.leases.token(p) is not None for p in range(PARTITIONS))

    await async_wait_until(renewed, timeout=20, what="every lease to be renewed", interval=0.1)
    assert {p: node.leases.token(p) for p in range(PARTITIONS)} == tokens
    assert all(changes == LeaseChanges({}, frozenset()) for changes in seen), seen


@dataclass
class Contender:
    task: asyncio.Task[None]
    states: list[bool] = field(default_factory=list)


async def test_a_source_runs_on_exactly_one_of_three_contenders_and_moves_when_it_is_cancelled(
    deployment: Deployment, open_client: Connect
) -> None:
    running: set[str] = set()
    overlaps: list[set[str]] = []

    def source(node: str) -> Callable[[], Awaitable[None]]:
        async def run() -> None:
            running.add(node)
            if len(running) > 1:
                overlaps.append(set(running))
            try:
                await asyncio.Event().wait()
            finally:
                running.discard(node)

        return run

    contenders: dict[str, Contender] = {}
    for name in ("node-a", "node-b", "node-c"):
        states: list[bool] = []
        task = asyncio.create_task(
            run_under_lease(
                await open_client(),
                "sim",
                node_id=name,
                lease_s=LEASE_S,
                run=source(name),
                on_state=states.append,
            )
        )
        contenders[name] = Contender(task, states)
    try:
        await async_wait_until(polled(lambda: running), timeout=5, what="the source to start")
        first = next(iter(running))
        watch_until = time.monotonic() + 2.5 * LEASE_S  # renewals go on: it stays where it is
        while time.monotonic() < watch_until:
            assert running == {first}
            await asyncio.sleep(0.05)

        contenders[first].task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await contenders[first].task
        moved_at = time.monotonic()
        await async_wait_until(
            polled(lambda: running - {first}), timeout=LEASE_S + 2, what="the source to move"
        )

        assert time.monotonic() - moved_at < LEASE_S / 2, "the cancelled holder did not release its lease"
        assert len(running) == 1 and first not in running
        assert contenders[first].states == [True, False]
        assert overlaps == []
    finally:
        for contender in contenders.values():
            contender.task.cancel()
        await asyncio.gather(*(c.task for c in contenders.values()), return_exceptions=True)
    assert running == set()


# A contender in a process of its own, so that SIGSTOP pauses it as a stuck node would be.
_CONTENDER = """
import asyncio, ctypes, signal, sys
ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: gone with the test
import redis.asyncio
from alphaflow_server.cluster.source_lease import run_under_lease

def say(line):
    print(line, flush=True)

async def run():
    say("run")
    await asyncio.Event().wait()

async def main():
    client = redis.asyncio.Redis.from_url(sys.argv[1])
    await run_under_lease(client, "sim", node_id="node-stopped", lease_s=float(sys.argv[2]), run=run,
                          on_state=lambda on: say(f"state {on}"))

asyncio.run(main())
"""


async def test_a_source_moves_when_its_holder_stops_renewing_and_stops_when_it_resumes(
    redis_server: RedisServer, open_client: Connect
) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "server")])}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _CONTENDER,
        redis_server.url,
        str(LEASE_S),
        stdout=asyncio.subprocess.PIPE,
        env=env,
    )
    assert proc.stdout is not None
    running: set[str] = set()

    async def run() -> None:
        running.add("node-b")
        await asyncio.Event().wait()

    async def line() -> str:
        assert proc.stdout is not None
        async with asyncio.timeout(15):
            return (await proc.stdout.readline()).decode().strip()

    other: asyncio.Task[None] | None = None
    try:
        assert [await line(), await line()] == ["state True", "run"]
        other = asyncio.create_task(
            run_under_lease(await open_client(), "sim", node_id="node-b", lease_s=LEASE_S, run=run)
        )
        await asyncio.sleep(2 * INTERVAL_S)  # node-b tries, and is turned away while the lease is renewed
        assert running == set()

        proc.send_signal(signal.SIGSTOP)
        stopped = time.monotonic()
        await async_wait_until(
            polled(lambda: running), timeout=LEASE_S + 5, what="node-b to take over the source"
        )
        took = time.monotonic() - stopped
        proc.send_signal(signal.SIGCONT)

        assert took <= LEASE_S + 2 * INTERVAL_S, f"the takeover took {took:.2f}s"
        assert await line() == "state False", "the resumed holder went on running the source"
        assert running == {"node-b"}
    finally:
        if other is not None:
            other.cancel()
            await asyncio.gather(other, return_exceptions=True)
        if proc.returncode is None:
            proc.send_signal(signal.SIGCONT)
            proc.kill()
        await proc.wait()


async def test_a_source_stops_when_redis_is_gone_past_its_deadline_and_runs_again_after(
    redis_server: RedisServer, open_client: Connect
) -> None:
    states: list[bool] = []

    async def run() -> None:
        await asyncio.Event().wait()

    task = asyncio.create_task(
        run_under_lease(
            await open_client(), "sim", node_id="node-a", lease_s=LEASE_S, run=run, on_state=states.append
        )
    )
    try:
        await async_wait_until(polled(lambda: states == [True]), timeout=5, what="the source to run")
        redis_server.kill()
        killed = time.monotonic()
        await async_wait_until(
            polled(lambda: states == [True, False]), timeout=LEASE_S + 2, what="the source to stop"
        )
        assert time.monotonic() - killed <= LEASE_S, "the source ran past its lease"

        redis_server.restart()
        await async_wait_until(
            polled(lambda: states == [True, False, True]), timeout=20, what="the source to run again"
        )
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert states == [True, False, True, False]
