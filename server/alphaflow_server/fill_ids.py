"""AppliedFills: per user, the ids of the fills already applied (no I/O).

A fill's ``id`` is its idempotency key, per user (shared/PROTOCOL.md,
"ingest"): a publisher that lost an ack publishes again, and a fill whose id
was applied changes nothing. The ledger asks ``split`` before the engine
sees a publish, and records what it committed with ``add``.

* Lookups are O(1): a set per user, beside the ids in the order applied.
* Retention is bounded: an id is kept while its fill is in the user's replay
  window (seq after the journal's last prune point) or among the user's
  newest ``keep`` (100,000 by default), whichever keeps more; ``prune`` runs
  at checkpoints, as the store prunes its ``fills`` table by the same rule.
  A fill re-sent after both have passed is applied again.
* The ids come from the store once per user, on the user's first publish
  with a fill after a start (``load``), so a restart costs nothing for users
  who do not trade.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from alphaflow_live.protocol import Event, FillEvent

# The newest fill ids kept per user beyond the replay window (about 15 MB for a user at the cap).
FILL_IDS_KEPT = 100_000


@dataclass(slots=True)
class _UserFills:
    ids: set[str] = field(default_factory=set)
    # (fill id, seq), in the order applied
    order: deque[tuple[str, int]] = field(default_factory=deque)


class AppliedFills:
    def __init__(self, keep: int = FILL_IDS_KEPT) -> None:
        if keep < 0:
            raise ValueError("keep must be >= 0")
        self.keep = keep
        self._users: dict[str, _UserFills] = {}

    def loaded(self, user_id: str) -> bool:
        return user_id in self._users

    def load(self, user_id: str, applied: Iterable[tuple[str, int]]) -> None:
        """The user's applied fills as stored: (fill id, seq), oldest first."""
        self._users[user_id] = _UserFills()
        self.add(user_id, applied)

    def split(self, user_id: str, events: Sequence[Event]) -> tuple[Sequence[Event], list[str]]:
        """The events to apply, and the ids of the fills left out (each once, in order).

        A fill is left out when its id was applied before, or came earlier in
        ``events``. Without one to leave out, ``events`` itself comes back.
        """
        user = self._users.get(user_id)
        applied = user.ids if user is not None else set()
        seen: set[str] = set()
        reported: set[str] = set()
        duplicates: list[str] = []
        fresh: list[Event] = []
        for event in events:
            if isinstance(event, FillEvent):
                fill_id = event.data.id
                if fill_id in seen:  # applied earlier in this publish, or reported already
                    if fill_id not in reported:
                        reported.add(fill_id)
                        duplicates.append(fill_id)
                    continue
                seen.add(fill_id)
                if fill_id in applied:
                    reported.add(fill_id)
                    duplicates.append(fill_id)
                    continue
            fresh.append(event)
        return (fresh if duplicates else events), duplicates

    def add(self, user_id: str, applied: Iterable[tuple[str, int]]) -> None:
        """Fills committed: (fill id, seq), in seq order."""
        user = self._users.get(user_id)
        if user is None:
            user = self._users[user_id] = _UserFills()
        for fill_id, seq in applied:
            if fill_id not in user.ids:
                user.ids.add(fill_id)
                user.order.append((fill_id, seq))

    def prune(self, user_id: str, through_seq: int) -> None:
        """Forget the oldest ids past ``keep`` whose fills are at or before ``through_seq``."""
        user = self._users.get(user_id)
        if user is None:
            return
        order, ids = user.order, user.ids
        while len(order) > self.keep and order[0][1] <= through_seq:
            ids.discard(order.popleft()[0])

    def forget(self, user_id: str) -> None:
        """Drop the user's ids (another node owns the user now; they are reloaded if it comes back)."""
        self._users.pop(user_id, None)

    def __len__(self) -> int:
        return sum(len(user.ids) for user in self._users.values())

    def count(self, user_id: str) -> int:
        user = self._users.get(user_id)
        return 0 if user is None else len(user.ids)
