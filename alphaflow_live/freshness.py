"""How current the data is: live, delayed, stale or offline (no I/O).

Data counts as current when a batch, a snapshot, a heartbeat or a polled
snapshot arrived: a heartbeat is the server saying "nothing changed".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Freshness = Literal["live", "delayed", "stale", "offline"]
Status = Literal["connecting", "live", "reconnecting", "polling", "offline", "closed"]

# Statuses in which nothing reaches the client at all.
_DISCONNECTED: frozenset[str] = frozenset({"offline", "closed"})


@dataclass(frozen=True, slots=True)
class FreshnessRules:
    live_s: float = 5.0
    delayed_s: float = 30.0

    def __post_init__(self) -> None:
        if not 0 < self.live_s <= self.delayed_s:
            raise ValueError("thresholds must satisfy 0 < live_s <= delayed_s")

    def classify(self, status: str, last_data_at: float | None, now: float) -> Freshness:
        if status in _DISCONNECTED or last_data_at is None:
            return "offline"
        age = now - last_data_at
        if age <= self.live_s:
            return "live"
        if age <= self.delayed_s:
            return "delayed"
        return "stale"
