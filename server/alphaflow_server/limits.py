"""Connection limits, inbound rates, the pending-handshake bound and the outbound backlog bound (no I/O)."""

from __future__ import annotations

from collections import Counter, OrderedDict, deque
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Final, Generic, TypeVar

from alphaflow_live.codes import Refusal

K = TypeVar("K", bound=Hashable)


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


class Limit:
    """The refusal each limit of the ConnectionLimiter answers with."""

    PER_USER: Final = Refusal.TOO_MANY_CONNECTIONS
    TOTAL: Final = Refusal.SERVER_FULL


class ConnectionLimiter:
    """Counts connections per user and in total, from the handshake until the socket closes.

    The total is checked before the per-user count, so a full server says so
    whoever asks. Service and admin streams count towards the total but not
    the per-user limit.
    """

    def __init__(self, *, max_total: int, max_per_user: int) -> None:
        self.max_total = max_total
        self.max_per_user = max_per_user
        self.total = 0
        self.per_user: Counter[str] = Counter()

    def check(self, user_id: str, *, per_user_limit: bool = True) -> Refusal | None:
        """Why there is no place for this connection, or None when there is one; changes nothing."""
        if self.total >= self.max_total:
            return Limit.TOTAL
        if per_user_limit and self.per_user.get(user_id, 0) >= self.max_per_user:
            return Limit.PER_USER
        return None

    def add(self, user_id: str, *, per_user_limit: bool = True) -> None:
        """Count a connection that ``check`` found a place for."""
        self.total += 1
        if per_user_limit:
            self.per_user[user_id] += 1

    def acquire(self, user_id: str, *, per_user_limit: bool = True) -> Refusal | None:
        """Reserve a place, or say why there is none."""
        refused = self.check(user_id, per_user_limit=per_user_limit)
        if refused is None:
            self.add(user_id, per_user_limit=per_user_limit)
        return refused

    def release(self, user_id: str, *, per_user_limit: bool = True) -> None:
        self.total -= 1
        if per_user_limit:
            self.per_user[user_id] -= 1
            if self.per_user[user_id] <= 0:
                del self.per_user[user_id]


def default_pending_handshakes(open_file_limit: int) -> int:
    """A quarter of the descriptors, at most 1024: the rest stay for open connections and files."""
    return max(1, min(1024, open_file_limit // 4))


@dataclass(frozen=True, slots=True)
class Arrival(Generic[K]):
    """What to do with a new socket: keep it or close it, and which older ones to close first."""

    admitted: bool
    evicted: tuple[K, ...] = ()


class PendingHandshakes(Generic[K]):
    """Sockets accepted but still without a whole HTTP request, oldest first, at most ``bound``.

    Each holds a file descriptor and nothing else shows for it, so a flood of
    half-open sockets would take every descriptor (and good clients with them)
    until the open timeout frees them. Past the bound, the oldest socket that
    has waited ``evict_after_s`` gives its place to the new one, a shorter
    open timeout that only applies under pressure; when even the oldest is
    younger, the new socket is refused. A good client completes its request
    within milliseconds, so it is never the oldest for long.
    """

    def __init__(self, bound: int, *, evict_after_s: float = 1.0) -> None:
        if bound < 1:
            raise ValueError("the pending-handshake bound must be at least 1")
        self.bound = bound
        self.evict_after_s = evict_after_s
        self._since: OrderedDict[K, float] = OrderedDict()

    def arrive(self, key: K, now: float) -> Arrival[K]:
        evicted: tuple[K, ...] = ()
        if len(self._since) >= self.bound:
            oldest, since = next(iter(self._since.items()))
            if now - since < self.evict_after_s:
                return Arrival(False)
            del self._since[oldest]
            evicted = (oldest,)
        self._since[key] = now
        return Arrival(True, evicted)

    def done(self, key: K) -> None:
        """The socket sent its request, or went away; idempotent."""
        self._since.pop(key, None)

    def __len__(self) -> int:
        return len(self._since)


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
