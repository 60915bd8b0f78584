"""At most one flush per interval, with the first change of a quiet spell sent at once (no I/O)."""

from __future__ import annotations

import math


class Throttle:
    def __init__(self, max_per_second: float = 10.0) -> None:
        if max_per_second <= 0:
            raise ValueError("max_per_second must be > 0")
        self.interval = 1.0 / max_per_second
        self._last_flush = -math.inf
        self._scheduled = False

    def request(self, now: float) -> float | None:
        """A change happened: the delay until the flush, or None if one is already scheduled."""
        if self._scheduled:
            return None
        self._scheduled = True
        return max(0.0, self._last_flush + self.interval - now)

    @property
    def last_flush(self) -> float:
        return self._last_flush

    def flushed(self, now: float) -> None:
        self._last_flush = now
        self._scheduled = False
