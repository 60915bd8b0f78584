"""Redis key names: every key of one user in one hash slot, every key of one partition in another.

Redis Cluster places a key by the part between its first ``{`` and the next
``}`` (the hash tag), and a Lua script may touch only keys of one slot. So
everything the commit script reads or writes for a user, its shard channel
included (SPUBLISH inside a script is checked like a key), carries the tag
``{<user>}``; a partition's lease and member list carry ``{p<N>}``. A user id
with a brace in it would move the tag, so it is refused (the server's user
names never have one).
"""

from __future__ import annotations

from dataclasses import dataclass

PREFIX = "afl"


@dataclass(frozen=True, slots=True)
class UserKeys:
    """A user's keys, all in the slot of ``{user}``."""

    user: str
    # Hash: ``epoch``, ``seq`` (the last one committed), ``ms`` (its Redis time), ``cid`` (its commit id).
    meta: str
    # Stream: one entry per event, id ``<seq>-0``, fields ``t`` (commit time, ms) and ``d`` (the event).
    events: str
    # String: the fencing token of the node that owns the user's partition, as that node wrote it.
    owner: str
    # Shard channel: one message per commit (see ``stamping.LiveCommit``).
    live: str
    # String: the engine's book (``engine.BookRecord`` JSON) as of the user's last publish.
    book: str
    # Sorted set: the ids of the fills applied, scored by their seq (the newest ``FILL_IDS_KEPT``).
    fills: str
    # Hash: ``epoch``, ``seq``, ``d``: the user's snapshot at that seq (what a node primes from).
    snap: str

    @property
    def script_keys(self) -> list[str]:
        """The keys every user script is given, in the order the scripts read them."""
        return [self.meta, self.events, self.owner, self.live, self.book, self.fills, self.snap]


def user_keys(user: str) -> UserKeys:
    if not user or "{" in user or "}" in user:
        raise ValueError(f"user id {user!r} cannot name Redis keys: it must be non-empty, without braces")
    tag = f"{PREFIX}:{{{user}}}"
    return UserKeys(
        user,
        f"{tag}:meta",
        f"{tag}:events",
        f"{tag}:owner",
        f"{tag}:live",
        f"{tag}:book",
        f"{tag}:fills",
        f"{tag}:snap",
    )


def partition_lease_key(partition: int) -> str:
    """The lease of a partition: who owns it, until when, and the fencing token it was given."""
    return f"{PREFIX}:{{p{_check_partition(partition)}}}:lease"


def partition_users_key(partition: int) -> str:
    """The set of users of a partition, so that a new owner can fence every one of them."""
    return f"{PREFIX}:{{p{_check_partition(partition)}}}:users"


def partition_requests_channel(partition: int) -> str:
    """The shard channel a partition's owner listens on for publishes other nodes forward."""
    return f"{PREFIX}:{{p{_check_partition(partition)}}}:requests"


def node_replies_channel(node_id: str) -> str:
    """The shard channel a node listens on for the answers to the publishes it forwarded."""
    if not node_id or "{" in node_id or "}" in node_id:
        raise ValueError(f"node id {node_id!r} cannot name Redis keys: it must be non-empty, without braces")
    return f"{PREFIX}:{{node:{node_id}}}:replies"


# Every symbol's last mark (``price reference``), and the shard channel ticks are published on.
PRICES_KEY = f"{PREFIX}:{{prices}}:marks"
TICKS_CHANNEL = f"{PREFIX}:{{prices}}:ticks"


def _check_partition(partition: int) -> int:
    if partition < 0:
        raise ValueError(f"partition {partition} is negative")
    return partition
