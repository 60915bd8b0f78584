"""Partitions and the lease rules, without a Redis: the user mapping, the book of held leases, the plan.

``World`` stands in for the lease hashes: one holder per partition, taken
only when free or expired, as the lease script does. Nodes step in turn and
see the world as it is, as they would if their steps did not overlap.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from redis.crc import key_slot

from alphaflow_server.cluster.keys import partition_lease_key
from alphaflow_server.cluster.leases import (
    CONFIG_KEY,
    NODES_KEY,
    LeaseBook,
    LeaseChanges,
    Seen,
    fair_share,
    interval_for,
    margin_for,
    partition_of,
    plan_round,
    preference,
    source_lease_key,
)

GRACE_S = 0.5


def test_partition_of_is_crc32_of_the_utf8_id_so_every_process_maps_a_user_alike() -> None:
    # The CRC-32 check value: the mapping is zlib's CRC-32, not a salted hash.
    assert partition_of("123456789", 1 << 32) == 0xCBF43926
    assert [partition_of(user, 64) for user in ("alice", "bob", "josé", "user-42")] == [7, 0, 44, 51]
    assert partition_of("anyone", 1) == 0


def test_partition_of_spreads_users_evenly() -> None:
    counts = Counter(partition_of(f"user-{i}", 64) for i in range(64_000))

    assert set(counts) == set(range(64))
    assert max(counts.values()) < 1.15 * 1000 and min(counts.values()) > 0.85 * 1000, counts


def test_partition_of_refuses_a_cluster_without_partitions() -> None:
    with pytest.raises(ValueError, match="at least one partition"):
        partition_of("alice", 0)


def test_each_lease_key_has_a_slot_of_its_own_and_the_cluster_keys_share_one() -> None:
    slots = {key_slot(partition_lease_key(p).encode()) for p in range(64)}

    assert len(slots) == 64
    assert key_slot(NODES_KEY.encode()) == key_slot(CONFIG_KEY.encode()) == key_slot(b"cluster")
    assert source_lease_key("sim") == "afl:{source:sim}:lease"
    with pytest.raises(ValueError, match="braces"):
        source_lease_key("a}b")


def test_a_renewal_is_trusted_until_its_send_time_plus_the_lease_less_the_margin() -> None:
    book = LeaseBook(1.0)
    assert interval_for(1.0) == 0.25 and margin_for(1.0) == pytest.approx(0.2)

    book.held(3, 9, sent=100.0)

    assert book.token(3, now=100.79) == 9
    assert book.token(3, now=100.8) is None, "a lease trusted past sent + lease_s - margin"
    assert book.token(4, now=100.0) is None
    book.held(3, 9, sent=100.5)
    assert book.token(3, now=101.2) == 9


def test_long_leases_keep_a_tenth_as_margin_and_short_ones_are_refused() -> None:
    assert margin_for(30.0) == pytest.approx(3.0)
    assert interval_for(30.0) == 0.5
    with pytest.raises(ValueError, match="at least"):
        LeaseBook(0.3)


def test_the_book_reports_each_change_once_and_a_new_token_as_lost_then_gained() -> None:
    book = LeaseBook(1.0)
    book.held(1, 5, sent=0.0)
    book.held(2, 6, sent=0.0)
    assert book.take_changes() == LeaseChanges({1: 5, 2: 6}, frozenset())

    book.held(1, 5, sent=0.5)  # a renewal: nothing to report
    book.held(2, 8, sent=0.5)  # taken again after it lapsed: the users need a new claim
    book.drop(3)  # never held: nothing to report

    assert book.take_changes() == LeaseChanges({2: 8}, frozenset({2}))
    book.drop(1)
    assert book.take_changes() == LeaseChanges({}, frozenset({1}))
    assert book.owned == {2: 8}


def test_a_gain_lost_before_it_was_reported_is_reported_as_lost_only() -> None:
    book = LeaseBook(1.0)
    book.held(4, 2, sent=0.0)
    book.drop(4)

    assert book.take_changes() == LeaseChanges({}, frozenset({4}))


def test_a_node_above_its_share_releases_only_the_extras() -> None:
    release, acquire = plan_round(
        node_id="a", partitions=8, live=["a", "b", "c"], held=range(8), seen={}, grace_s=GRACE_S
    )

    assert fair_share(8, 3) == 3
    assert len(release) == 5 and set(release) <= set(range(8)) and acquire == []


def test_a_node_takes_back_a_lease_it_forgot_before_any_free_one() -> None:
    seen = {p: Seen(None, 10.0) for p in range(1, 8)} | {0: Seen("a", None)}

    _, acquire = plan_round(node_id="a", partitions=8, live=["a", "b"], held=[], seen=seen, grace_s=GRACE_S)

    assert acquire[0] == 0 and len(acquire) == 4


def test_a_partition_held_by_a_live_lease_is_never_planned() -> None:
    seen = {p: Seen("b", None) for p in range(4)}

    assert plan_round(node_id="a", partitions=4, live=["a"], held=[], seen=seen, grace_s=GRACE_S) == ([], [])


@dataclass
class World:
    partitions: int
    holder: dict[int, str | None] = field(default_factory=dict)
    free_for: dict[int, float] = field(default_factory=dict)  # partitions free (or expired), for how long
    live: list[str] = field(default_factory=list)
    gains: list[tuple[int, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.holder = dict.fromkeys(range(self.partitions))
        self.free_for = dict.fromkeys(range(self.partitions), 10.0)

    def held_by(self, node: str) -> set[int]:
        return {p for p, h in self.holder.items() if h == node and p not in self.free_for}

    def step(self, node: str) -> None:
        held = self.held_by(node)
        seen = {
            p: Seen(self.holder[p], self.free_for.get(p)) for p in range(self.partitions) if p not in held
        }
        release, acquire = plan_round(
            node_id=node, partitions=self.partitions, live=self.live, held=held, seen=seen, grace_s=GRACE_S
        )
        for p in release:
            self.holder[p], self.free_for[p] = None, 0.0
        for p in acquire:
            if p in self.free_for or self.holder[p] == node:  # what the lease script allows
                self.holder[p] = node
                self.free_for.pop(p, None)
                self.gains.append((p, node))

    def die(self, node: str) -> None:
        """The node's leases expire (just now) and its registry entry is gone."""
        self.live.remove(node)
        for p in self.held_by(node):
            self.free_for[p] = 0.05

    def check_fair(self) -> None:
        share = fair_share(self.partitions, len(self.live))
        assert not self.free_for, f"partitions nobody holds: {sorted(self.free_for)}"
        counts = Counter(self.holder.values())
        assert set(counts) <= set(self.live), counts
        assert max(counts.values()) <= share, (counts, share)


@settings(max_examples=200, deadline=None)
@given(
    partitions=st.integers(1, 160),
    nodes=st.integers(1, 6),
    seed=st.integers(0, 2**32 - 1),
)
def test_nodes_that_join_one_by_one_end_with_every_partition_held_within_the_share(
    partitions: int, nodes: int, seed: int
) -> None:
    rng = random.Random(seed)
    world = World(partitions)
    names = [f"node-{i}" for i in range(nodes)]
    for name in names:
        world.live.append(name)
        for _ in range(rng.randint(0, 2)):
            for node in rng.sample(world.live, len(world.live)):
                world.step(node)

    for _ in range(3):
        for node in rng.sample(names, nodes):
            world.step(node)

    world.check_fair()


@settings(max_examples=200, deadline=None)
@given(partitions=st.integers(2, 160), nodes=st.integers(2, 6), seed=st.integers(0, 2**32 - 1))
def test_survivors_split_a_dead_nodes_partitions_in_one_step_each_without_racing(
    partitions: int, nodes: int, seed: int
) -> None:
    rng = random.Random(seed)
    world = World(partitions)
    world.live = [f"node-{i}" for i in range(nodes)]
    for _ in range(3):
        for node in rng.sample(world.live, nodes):
            world.step(node)
    world.check_fair()
    dead = rng.choice(world.live)
    world.die(dead)
    world.gains.clear()

    for node in rng.sample(world.live, len(world.live)):
        world.step(node)

    world.check_fair()
    taken = [p for p, _ in world.gains]
    assert len(taken) == len(set(taken)), "two survivors reached for the same partition"


def test_a_free_partition_dealt_to_another_node_is_anyones_once_the_grace_is_over() -> None:
    # "c" wants it more, so the deal is c's; if c does not take it (stuck, or it saw the world
    # otherwise), "a" does once it has been free for the grace.
    partition = next(p for p in range(100) if preference("c", p) > preference("a", p))

    def plan(free_for: float) -> list[int]:
        seen = {partition: Seen(None, free_for)}
        return plan_round(node_id="a", partitions=4, live=["a", "c"], held=[], seen=seen, grace_s=GRACE_S)[1]

    assert plan(GRACE_S / 2) == []
    assert plan(GRACE_S) == [partition]
