"""Many nodes over Redis: the per-user commit log (and, later, partitions, leases and delivery).

Redis keys and the commit script: ``keys`` names them, ``scripts`` holds the
Lua, ``stamping`` the event bytes, ``redis_log`` the asyncio API; the design
is in ``redis_log``'s docstring and ``docs/scale-out.md``.
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
