"""RemarkSchedule: when each user's stale positions are re-derived (no I/O).

A price tick moves the mark at once, but deriving the holders' positions and
accounts waits for the holder's turn: at most one re-mark per user per
interval, and the first mark after a quiet interval goes at once (a leading
edge, like the batcher's). Each user keeps the phase of its own first mark, so
under a steady stream of ticks the work spreads over the interval instead of
arriving for every user at the same instant, and the event loop never stalls
for a whole re-mark of every holder.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable


class RemarkSchedule:
    def __init__(self, interval_s: float) -> None:
        if interval_s < 0:
            raise ValueError("interval_s must be >= 0")
        self.interval_s = interval_s
        self._last: dict[str, float] = {}
        # (due, user), earliest first; a user is in it at most once (``_queued``).
        self._heap: list[tuple[float, str]] = []
        self._queued: set[str] = set()

    def __len__(self) -> int:
        return len(self._queued)

    def stale(self, user_ids: Iterable[str], now: float) -> None:
        """These users' positions went stale at ``now``."""
        heap, queued, last, interval = self._heap, self._queued, self._last, self.interval_s
        for user_id in user_ids:
            if user_id not in queued:
                queued.add(user_id)
                heapq.heappush(heap, (max(now, last.get(user_id, -math.inf) + interval), user_id))

    def sent(self, user_id: str, now: float) -> None:
        """The user's positions went out by another path (a fill publishes the stale ones)."""
        self._last[user_id] = now

    def next_due(self) -> float | None:
        return self._heap[0][0] if self._heap else None

    def take_due(self, now: float) -> list[str]:
        """The users whose turn has come; each counts as re-marked at ``now``."""
        heap, queued, last, interval = self._heap, self._queued, self._last, self.interval_s
        due: list[str] = []
        while heap and heap[0][0] <= now:
            _, user_id = heapq.heappop(heap)
            earliest = last.get(user_id, -math.inf) + interval
            if earliest > now:  # ``sent`` moved its turn on while it waited
                heapq.heappush(heap, (earliest, user_id))
                continue
            queued.discard(user_id)
            last[user_id] = now
            due.append(user_id)
        return due

    def take_all(self, now: float) -> list[str]:
        users = list(self._queued)
        self._heap.clear()
        self._queued.clear()
        for user_id in users:
            self._last[user_id] = now
        return users
