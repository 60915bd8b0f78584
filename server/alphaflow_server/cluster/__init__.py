"""Many nodes over Redis (``serve --redis``): the design is in ``docs/scale-out.md``.

Bottom up: ``keys`` names every key, ``scripts`` holds the commit log's Lua,
``stamping`` the event bytes, ``redis_log`` the per-user commit log (fencing
in its docstring); ``leases`` and ``source_lease`` the partition and source
leases; ``owner`` the engine of the partitions a node owns, ``mirror`` the
node's user streams, ``pubsub`` its shard subscriptions, ``node`` the ingest
path across nodes and ``keeper`` the lease loop; ``presence``, ``merge`` and
``users`` the cluster-wide counts, flag, stats and users; ``runtime`` is what
a StreamServer asks of all that. Nothing here is imported by a single node.
"""

from .keys import UserKeys, partition_lease_key, partition_users_key, user_keys
from .redis_log import (
    Committed,
    Fenced,
    Gone,
    Head,
    RedisLog,
    Replay,
    Retention,
    Unavailable,
)
from .stamping import LiveCommit, decode_live, stamp, unsequenced

__all__ = [
    "Committed",
    "Fenced",
    "Gone",
    "Head",
    "LiveCommit",
    "RedisLog",
    "Replay",
    "Retention",
    "Unavailable",
    "UserKeys",
    "decode_live",
    "partition_lease_key",
    "partition_users_key",
    "stamp",
    "unsequenced",
    "user_keys",
]
