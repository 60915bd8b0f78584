"""A latency histogram with percentiles, used by the server's and the client's stats."""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterator

from .protocol import LatencySummary


class LatencyHistogram:
    """Log-spaced buckets from 10 µs to about 100 s (about 4% apart); percentiles in ms."""

    _RATIO = 1.04

    def __init__(self) -> None:
        bounds = []
        bound = 1e-5
        while bound < 100.0:
            bounds.append(bound)
            bound *= self._RATIO
        self._bounds = bounds
        self._counts = [0] * (len(bounds) + 1)
        self.count = 0
        self.sum = 0.0
        self.max = 0.0

    def record(self, seconds: float, times: int = 1) -> None:
        """``times`` observations of ``seconds`` (a batch's events that share one source time)."""
        seconds = max(0.0, seconds)
        self._counts[bisect.bisect_left(self._bounds, seconds)] += times
        self.count += times
        self.sum += seconds * times
        self.max = max(self.max, seconds)

    def percentile(self, fraction: float) -> float | None:
        """The upper bound of the bucket holding the given fraction, in seconds."""
        if self.count == 0:
            return None
        rank = max(1, math.ceil(fraction * self.count))
        seen = 0
        for index, count in enumerate(self._counts):
            seen += count
            if seen >= rank:
                return min(self.max, self._bounds[index]) if index < len(self._bounds) else self.max
        return self.max  # pragma: no cover - ranks never exceed the count

    def summary_ms(self) -> LatencySummary:
        def ms(value: float | None) -> float | None:
            return None if value is None else round(value * 1000, 3)

        return LatencySummary(
            count=self.count,
            p50=ms(self.percentile(0.50)),
            p95=ms(self.percentile(0.95)),
            p99=ms(self.percentile(0.99)),
            max=ms(self.max if self.count else None),
        )

    def cumulative_buckets(self, edges_s: list[float]) -> Iterator[tuple[float, int]]:
        """Counts at or below each edge, for Prometheus histogram export."""
        running = 0
        index = 0
        for edge in edges_s:
            while index < len(self._bounds) and self._bounds[index] <= edge:
                running += self._counts[index]
                index += 1
            yield edge, running
