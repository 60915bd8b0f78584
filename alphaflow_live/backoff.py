"""Reconnect delays: exponential, capped, with full jitter (no I/O).

Full jitter (a uniform draw between 0 and the exponential bound) spreads the
reconnects of many clients after a server restart instead of having them
arrive in waves.
"""

from __future__ import annotations

import random


class Backoff:
    def __init__(self, *, base_s: float = 0.5, cap_s: float = 30.0, rng: random.Random | None = None) -> None:
        if not 0 < base_s <= cap_s:
            raise ValueError("backoff needs 0 < base_s <= cap_s")
        self.base_s = base_s
        self.cap_s = cap_s
        self.failures = 0
        self._rng = rng or random.Random()

    def next_delay(self) -> float:
        bound = min(self.cap_s, self.base_s * 2 ** min(self.failures, 30))
        self.failures += 1
        return self._rng.uniform(0, bound)

    def reset(self) -> None:
        self.failures = 0
