"""SourcePort: everything a source (simulator, broker feed) may ask of the server, and nothing more.

A source is a coroutine function given the port; it runs for the server's
lifetime and is cancelled at shutdown. Everything it publishes goes through
``ingest``, the same path (and the same validation) as a remote publisher's
on /ws/ingest. The reads answer from the server's current state.
``ServerPort`` is the port the StreamServer gives its sources.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Protocol

from alphaflow_live.protocol import Ack, MessageError, Prices, Publish

from ..bus import EventBus
from ..engine import BookRecord, PortfolioEngine
from ..stats import Health, HealthStatus


@dataclass(frozen=True)
class HeldBook:
    """A user's book as the server holds it: cash and the quantity of each position."""

    cash: Decimal
    positions: dict[str, Decimal]


class SourcePort(Protocol):
    def ingest(self, message: Publish | Prices) -> Awaitable[Ack]:
        """Publish as /ws/ingest does; the ack says which seqs (and duplicates) it became.

        While the server cannot store (``unavailable``: a full disk), it waits and
        tries again: a source has nowhere else to keep its events. Any other
        refusal (an invalid message) raises ``MessageError``.
        """
        ...

    def holdings(self, user_id: str) -> frozenset[str]:
        """The symbols the user holds a position in."""
        ...

    def realized_pl_today(self, user_id: str) -> Decimal: ...

    def book(self, user_id: str) -> Awaitable[HeldBook | None]:
        """The user's cash and positions if the server has a book of theirs (it survived a
        restart, or in a cluster another node made it), so a source can carry on from it rather
        than start the user again."""
        ...

    def has_fill(self, user_id: str, fill_id: str) -> bool:
        """Whether this execution is among the user's recent fills (its id is its idempotency key)."""
        ...

    def report_health(self, component: str, status: HealthStatus, reason: str = "") -> None:
        """Say how the source's ``component`` is doing; shown by /healthz and the stats."""
        ...


Source = Callable[[SourcePort], Awaitable[None]]

log = logging.getLogger("alphaflow.server.sources")

# Waits between tries while the server cannot store: from a tenth of a second, doubling, to this.
RETRY_FIRST_S = 0.1
RETRY_CAP_S = 5.0


class ServerPort:
    """The SourcePort of a StreamServer: its ingest path and the reads a source needs."""

    def __init__(
        self,
        ingest: Callable[[Publish | Prices], Awaitable[Ack]],
        engine: PortfolioEngine,
        bus: EventBus,
        health: Health,
        *,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        stored_book: Callable[[str], Awaitable[BookRecord | None]] | None = None,
    ) -> None:
        self._ingest = ingest
        self._stored_book = stored_book
        self._engine = engine
        self._bus = bus
        self._health = health
        self._sleep = sleep

    async def ingest(self, message: Publish | Prices) -> Ack:
        delay = RETRY_FIRST_S
        waited = False
        while True:
            try:
                ack = await self._ingest(message)
            except MessageError as exc:
                if exc.code != "unavailable":
                    raise
                if not waited:
                    log.warning("event=source_waiting reason=%r retry_s=%.1f", exc.message, delay)
                    waited = True
                await self._sleep(delay)
                delay = min(delay * 2, RETRY_CAP_S)
                continue
            if waited:
                log.info("event=source_resumed")
            return ack

    # In a cluster the engine holds the books of the users this node owns, and the bus the streams
    # it serves: of any other user these read as empty (a fill published again is left out by its
    # owner as a duplicate), and never make a book or a stream here.
    def holdings(self, user_id: str) -> frozenset[str]:
        book = self._engine.books.get(user_id)
        return frozenset(book.holdings) if book is not None else frozenset()

    def realized_pl_today(self, user_id: str) -> Decimal:
        book = self._engine.books.get(user_id)
        return book.realized_pl_today if book is not None else Decimal(0)

    async def book(self, user_id: str) -> HeldBook | None:
        book = self._engine.books.get(user_id)
        if book is not None:
            return HeldBook(book.cash, {symbol: h.qty for symbol, h in book.holdings.items()})
        if self._stored_book is None:
            return None
        # A cluster node that does not own the user: the book its owner committed.
        record = await self._stored_book(user_id)
        if record is None:
            return None
        return HeldBook(record.cash, {symbol: qty for symbol, qty, *_ in record.holdings})

    def has_fill(self, user_id: str, fill_id: str) -> bool:
        return user_id in self._bus and self._bus.user(user_id).state.has_fill(fill_id)

    def report_health(self, component: str, status: HealthStatus, reason: str = "") -> None:
        self._health.set(component, status, reason)
