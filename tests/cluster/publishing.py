"""Publishing to a cluster as a careful service does, and the book those publishes must leave.

A cluster may answer a publish with ``unavailable`` (no owner for the user's
partition yet, the owner dead or fenced, Redis away): nothing changed, retry
with backoff. ``RetryingPublisher`` does exactly that, always with the same
events (so the same fill ids: a retry after a commit whose ack was lost is
acked with the id under ``duplicates``, never applied twice). It reads every
reply as it sends (``PipelinedPublisher``), and keeps each ack with when it
came, for the bounds on how long acks may stop.

``AveragingBook`` is the book model of tests/support/book_model.py plus the
average entry price, the one figure of a position that model leaves out.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import ROUND_HALF_EVEN, Decimal
from fractions import Fraction

from msgspec import UNSET

from alphaflow_live.protocol import Event, Fill, FillEvent, Snapshot
from tests.support import events as ev
from tests.support.book_model import BookModel
from tests.support.pipeline import Acked, Lost, PipelinedPublisher, Refused

UNAVAILABLE = "unavailable"
# The engine shows average entry prices at 6 places (server/alphaflow_server/engine.py, PRICE).
PRICE_PLACES = Decimal("0.000001")
SYMBOLS = ("AAPL", "MSFT")
INITIAL_CASH = "100000.00"


def fill_series(tag: str, count: int, *, start: int = 0) -> list[FillEvent]:
    """``count`` fills with ids ``<tag>-<i>``: buys of 1 to 4 shares, every fourth a sell of 1, over two
    symbols, at prices in quarters (so cash needs no more than 2 places and the model stays exact).

    The same arguments always give the same fills, so a run's book is the same whatever the timing.
    """
    fills = []
    for i in range(start, start + count):
        sell = i % 4 == 3
        fills.append(
            ev.fill(
                f"{tag}-{i}",
                order_id=f"o-{tag}-{i}",
                symbol=SYMBOLS[i % len(SYMBOLS)],
                side="sell" if sell else "buy",
                qty="1" if sell else str(1 + i % 4),
                price=f"{100 + i % 7}.{25 * (i % 4):02d}",
                at=ev.ts(i),
            )
        )
    return fills


def fill_ids(events: Sequence[Event]) -> list[str]:
    return [event.data.id for event in events if isinstance(event, FillEvent)]


@dataclass(frozen=True)
class AckedPublish:
    events: list[Event]
    seqs: list[int]
    duplicates: list[str]
    # time.monotonic() when the ack arrived
    at: float
    # how many times it was answered ``unavailable`` before
    refusals: int


@dataclass
class RetryingPublisher:
    """A service on one node's /ws/ingest that publishes each message until it is acked."""

    base: str
    token: str = field(repr=False)
    # Backoff after an ``unavailable``: short, so that the end of an outage is seen within ~0.2 s.
    backoff_s: float = 0.05
    backoff_cap_s: float = 0.2
    # The longest a node may take to answer one publish (an ack or an error) before the test fails.
    reply_timeout_s: float = 10.0
    acked: list[AckedPublish] = field(default_factory=list)
    refusals: int = 0
    _publisher: PipelinedPublisher | None = None

    @classmethod
    async def connect(cls, base: str, token: str) -> RetryingPublisher:
        publisher = cls(base, token)
        publisher._publisher = await PipelinedPublisher.connect(base, token, window=1)
        return publisher

    async def once(self, user: str, events: Sequence[Event]) -> Acked | Refused | Lost:
        """One publish and its outcome, with no retry."""
        assert self._publisher is not None
        try:
            return await self._publisher.request(user, events, timeout=self.reply_timeout_s)
        except TimeoutError:
            raise AssertionError(
                f"{self.base}: no reply (ack or error) to a publish for {user!r} within "
                f"{self.reply_timeout_s}s; a node answers unavailable when it cannot commit"
            ) from None

    async def publish(self, user: str, events: Sequence[Event], *, within_s: float = 30.0) -> AckedPublish:
        """Publish ``events`` until acked: again after each ``unavailable`` (backoff) or a dropped
        connection (a new one); any other error fails the test, as does no ack within ``within_s``."""
        deadline = time.monotonic() + within_s
        backoff, refusals = self.backoff_s, 0
        while True:
            outcome = await self.once(user, events)
            if isinstance(outcome, Acked):
                acked = AckedPublish(
                    list(events), outcome.seqs, outcome.duplicates, time.monotonic(), refusals
                )
                self.acked.append(acked)
                return acked
            if isinstance(outcome, Refused) and outcome.code != UNAVAILABLE:
                raise AssertionError(f"publish for {user!r} refused: {outcome.code}: {outcome.message}")
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"publish for {user!r} (fills {fill_ids(events)}) not acked within {within_s}s; "
                    f"last outcome: {outcome}"
                )
            if isinstance(outcome, Lost):
                await self._reconnect()
            else:
                refusals += 1
                self.refusals += 1
            await asyncio.sleep(backoff)  # the publisher's backoff, not waiting on a condition
            backoff = min(backoff * 2, self.backoff_cap_s)

    async def _reconnect(self) -> None:
        if self._publisher is not None:
            await self._publisher.close()
        self._publisher = None
        # On failure the next attempt finds no connection, is Lost, and comes back here.
        with contextlib.suppress(OSError):
            self._publisher = await PipelinedPublisher.connect(self.base, self.token, window=1)

    @property
    def violations(self) -> list[str]:
        return [] if self._publisher is None else self._publisher.violations

    def acked_fill_ids(self) -> list[str]:
        """Every fill id acked (applied or reported a duplicate), each once, in the order first acked."""
        return list(dict.fromkeys(i for publish in self.acked for i in fill_ids(publish.events)))

    def acked_seqs(self) -> list[int]:
        return [seq for publish in self.acked for seq in publish.seqs]

    def last_seq(self) -> int:
        seqs = self.acked_seqs()
        assert seqs, "nothing acked with a seq"
        return max(seqs)

    def first_ack_after(self, moment: float) -> AckedPublish | None:
        return next((publish for publish in self.acked if publish.at > moment), None)

    async def close(self) -> None:
        if self._publisher is not None:
            await self._publisher.close()


@dataclass
class AveragingBook(BookModel):
    """``BookModel`` plus each position's average entry price, exactly (a Fraction), by the engine's
    rules: adding at a price averages it in, reducing keeps it, going through zero starts at the price."""

    avg: dict[str, Fraction] = field(default_factory=dict)

    def apply_fill(self, fill: Fill) -> None:
        if fill.id in self.fills:
            return
        held = self.qty.get(fill.symbol, Decimal(0))
        signed = fill.qty if fill.side == "buy" else -fill.qty
        new = held + signed
        if held == 0 or (held > 0) == (signed > 0):
            self.avg[fill.symbol] = (
                Fraction(held) * self.avg.get(fill.symbol, Fraction(0))
                + Fraction(signed) * Fraction(fill.price)
            ) / Fraction(new)
        elif new != 0 and (new > 0) != (held > 0):
            self.avg[fill.symbol] = Fraction(fill.price)
        if new == 0:
            self.avg.pop(fill.symbol, None)
        super().apply_fill(fill)

    def shown_avg(self, symbol: str) -> Decimal:
        exact = self.avg[symbol]
        return (Decimal(exact.numerator) / Decimal(exact.denominator)).quantize(
            PRICE_PLACES, rounding=ROUND_HALF_EVEN
        )

    def mismatches(self, snapshot: Snapshot, *, orders: bool = True) -> list[str]:
        problems = super().mismatches(snapshot, orders=orders)
        positions = [] if snapshot.positions is UNSET else snapshot.positions
        shown = {p.symbol: p.avg_entry_price for p in positions}
        expected = {symbol: self.shown_avg(symbol) for symbol in self.qty}
        if shown != expected:
            problems.append(f"average entry prices: expected {expected}, got {shown}")
        return problems
