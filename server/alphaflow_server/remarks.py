"""RemarkSchedule: when each user's stale positions are re-derived (no I/O).

A price tick moves the mark at once, but deriving the holders' positions and
accounts waits for the holder's turn: at most one re-mark per user per
interval, and the first mark after a quiet interval goes at once (a leading
edge, like the batcher's).

Under a steady stream of ticks every holder is due every interval. If their
turns all fell at the same instant, the event loop would stall for a re-mark of
every holder at once (a thousand users take a good part of the interval),
and every client would wait for it. So each user has a fixed phase in the
interval, spread by a hash of the user id, and a turn that is not a leading
edge falls on the user's phase: the work arrives in small, even slices.
"""

from __future__ import annotations

import heapq
import math
import zlib
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
        self._phases: dict[str, float] = {}
        # Turns taken, and of those the ones so late (half an interval or more) that the next
        # counts from now: a turn shed (admin stats: remark_turns, remark_turns_shed).
        self.turns_taken = 0
        self.turns_shed = 0

    def __len__(self) -> int:
        return len(self._queued)

    def stale(self, user_ids: Iterable[str], now: float) -> None:
        """These users' positions went stale at ``now``."""
        heap, queued = self._heap, self._queued
        for user_id in user_ids:
            if user_id not in queued:
                queued.add(user_id)
                heapq.heappush(heap, (self._due(user_id, now), user_id))

    def _due(self, user_id: str, now: float) -> float:
        earliest = self._last.get(user_id, -math.inf) + self.interval_s
        if earliest <= now:
            return now  # quiet for a whole interval: at once
        phase = self._phases.get(user_id)
        if phase is None:
            phase = self._phases[user_id] = (zlib.crc32(user_id.encode()) % 1000) / 1000 * self.interval_s
        # The first instant at or after ``earliest`` that falls on the user's phase.
        return phase + math.ceil((earliest - phase) / self.interval_s - 1e-9) * self.interval_s

    def sent(self, user_id: str, now: float) -> None:
        """The user's positions went out by another path (a fill publishes the stale ones)."""
        self._last[user_id] = now

    def forget(self, user_id: str) -> None:
        """Drop the user's turn (another node re-marks it now); a queued turn is skipped when due."""
        self._queued.discard(user_id)
        self._last.pop(user_id, None)

    def next_due(self) -> float | None:
        return self._heap[0][0] if self._heap else None

    def take_due(self, now: float, limit: int | None = None) -> list[str]:
        """The users whose turn has come (at most ``limit`` of them), in the order of their turns."""
        heap, queued, last, interval = self._heap, self._queued, self._last, self.interval_s
        due: list[str] = []
        while heap and heap[0][0] <= now and (limit is None or len(due) < limit):
            at, user_id = heapq.heappop(heap)
            if last.get(user_id, -math.inf) + interval > now:  # ``sent`` moved its turn on while it waited
                heapq.heappush(heap, (self._due(user_id, now), user_id))
                continue
            queued.discard(user_id)
            # A turn a little late (a busy loop) counts as taken when it was due, so the user keeps
            # its phase; one late by half an interval or more counts from now, so that a loop that
            # falls behind sheds turns instead of running them back to back.
            if now - at < interval / 2:
                last[user_id] = at
            else:
                last[user_id] = now
                self.turns_shed += 1
            due.append(user_id)
        self.turns_taken += len(due)
        return due

    def take_all(self, now: float) -> list[str]:
        users = list(self._queued)
        self._heap.clear()
        self._queued.clear()
        for user_id in users:
            self._last[user_id] = now
        self.turns_taken += len(users)
        return users
