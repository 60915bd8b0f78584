"""Connection limits, inbound rate limits and the outbound backlog bound (no I/O)."""

from __future__ import annotations

import enum
from collections import Counter, deque
from dataclasses import dataclass


class TokenBucket:
    """``rate`` tokens a second, holding at most ``burst``; one token per inbound message."""

    def __init__(self, rate: float, burst: float, now: float) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self.rate = rate
        self.burst = burst
        self._tokens = burst
        self._updated = now

    def take(self, now: float, tokens: float = 1.0) -> bool:
        elapsed = max(0.0, now - self._updated)
        self._tokens = min(self.burst, self._tokens + elapsed * self.rate)
        self._updated = now
        if self._tokens >= tokens:
            self._tokens -= tokens
            return True
        return False


class Refusal(enum.Enum):
    PER_USER = "too_many_connections"
    TOTAL = "server_full"


class ConnectionLimiter:
    """Counts connections per user and in total, from the handshake until the socket closes."""

    def __init__(self, *, max_total: int, max_per_user: int) -> None:
        self.max_total = max_total
        self.max_per_user = max_per_user
        self.total = 0
        self.per_user: Counter[str] = Counter()

    def acquire(self, user_id: str, *, per_user_limit: bool = True) -> Refusal | None:
        """Reserve a place, or say why there is none. Service and admin streams
        count towards the total but not the per-user limit."""
        if self.total >= self.max_total:
            return Refusal.TOTAL
        if per_user_limit and self.per_user[user_id] >= self.max_per_user:
            return Refusal.PER_USER
        self.total += 1
        if per_user_limit:
            self.per_user[user_id] += 1
        return None

    def release(self, user_id: str, *, per_user_limit: bool = True) -> None:
        self.total -= 1
        if per_user_limit:
            self.per_user[user_id] -= 1
            if self.per_user[user_id] <= 0:
                del self.per_user[user_id]


@dataclass(slots=True)
class Outbox:
    """A connection's queue of encoded frames waiting for the socket, bounded in bytes.

    ``push`` past ``max_bytes`` discards everything queued and reports the
    overflow: the connection must then resynchronise with one fresh snapshot
    once the socket drains, instead of making the server buffer without bound.
    """

    max_bytes: int
    frames: deque[bytes]
    queued_bytes: int = 0

    @classmethod
    def bounded(cls, max_bytes: int) -> Outbox:
        return cls(max_bytes=max_bytes, frames=deque())

    def push(self, frame: bytes) -> bool:
        """Queue a frame; False when the backlog overflowed and was discarded."""
        if self.queued_bytes + len(frame) > self.max_bytes and self.frames:
            self.clear()
            return False
        self.frames.append(frame)
        self.queued_bytes += len(frame)
        return True

    def pop(self) -> bytes | None:
        if not self.frames:
            return None
        frame = self.frames.popleft()
        self.queued_bytes -= len(frame)
        return frame

    def clear(self) -> None:
        self.frames.clear()
        self.queued_bytes = 0

    def __len__(self) -> int:
        return len(self.frames)
