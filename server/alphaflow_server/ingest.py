"""The ingest pipeline's asyncio shell: acks, storage failures as ``unavailable``, the re-mark turns.

Every publisher (``/ws/ingest``, in-process sources) goes through ``handle``;
the ``Ledger`` below it does the work (engine → journal → commit → delivery)
and rolls back whatever it cannot commit. This module only turns outcomes
into replies, health and log lines, and runs the re-mark schedule on the
event loop:

* a commit that failed for the storage's sake answers ``unavailable``
  (nothing changed: the publisher retries with backoff) and keeps ``storage``
  degraded in ``/healthz`` until a write succeeds;
* each cause of failure, storage or re-mark, is logged once, and the count
  when it clears, never once per 250 ms;
* due re-marks run in slices of ``REMARK_SLICE_USERS`` users, so sends and
  other requests get the loop in between.
"""

from __future__ import annotations

import asyncio
import logging
import time

from alphaflow_live.protocol import Ack, MessageError, Prices, Publish, format_timestamp

from .ledger import Ledger
from .stats import FailureTally, Health, ServerStats
from .store import StorageError

log = logging.getLogger("alphaflow.server")

# How close together re-mark turns may be and still share one wake-up of the event loop.
REMARK_GRANULARITY_S = 0.005
# Users re-marked in one go (a few milliseconds of work) before the event loop serves others.
REMARK_SLICE_USERS = 25


class Ingest:
    def __init__(self, ledger: Ledger, *, health: Health, stats: ServerStats) -> None:
        self.ledger = ledger
        self._health = health
        self._stats = stats
        self._storage_failures = FailureTally()
        self._remark_timer: asyncio.Handle | None = None
        # The last re-mark failure logged, and how many like it followed: logged once per cause.
        self._remark_failure: tuple[str, int] | None = None

    async def handle(self, message: Publish | Prices) -> Ack:
        """The reply to one ingest message (``unavailable`` raised as a MessageError)."""
        try:
            return self._apply(message)
        except StorageError as exc:
            # The ledger rolled back: the publisher may send the same message again.
            raise MessageError(
                "unavailable",
                f"the server could not store this message ({exc.cause}); nothing changed: retry with backoff",
                message.id,
            ) from None

    def _apply(self, message: Publish | Prices) -> Ack:
        now = asyncio.get_running_loop().time()
        if isinstance(message, Publish):
            published = self.ledger.publish(message.user_id, message.events, now)
            self._stats.events_in += len(message.events)
            return Ack(id=message.id, seqs=published.seqs, duplicates=published.duplicates)
        self.ledger.prices(message.prices, now)
        self._stats.events_in += len(message.prices)
        self.remark_due()
        # The repriced positions belong to many users' sequences, and may follow a little later
        # (each holder is re-marked at most once per mark interval): no seqs to report.
        return Ack(id=message.id, seqs=[])

    # -------------------------------------------------------------- storage

    def storage_outcome(self, failure: StorageError | None) -> None:
        """Health and logs follow the store's writes: degraded from a failed write until one
        succeeds; each cause is logged once, and the count when writes succeed again."""
        tally = self._storage_failures
        if failure is None:
            log.warning("event=storage_recovered failed_writes=%d", tally.clear())
            self._health.set("storage", "healthy")
            return
        if tally.add(failure.cause, format_timestamp(time.time())):
            log.error("event=storage_failed reason=%r", str(failure))  # once per cause; recovery: the count
        self._health.set(
            "storage",
            "degraded",
            f"writes to the state file fail ({failure.cause}); {tally.total} write(s) failed since "
            f"{tally.since}: publishes answer 'unavailable' until a write succeeds",
        )

    # ------------------------------------------------------------- re-marks

    def remark_due(self) -> None:
        """Re-mark the holders whose turn has come, then wait for the next turn."""
        self.cancel()
        loop = asyncio.get_running_loop()
        due = self.ledger.next_remark()
        if due is not None and due <= loop.time():
            self.remark(limit=REMARK_SLICE_USERS)
            due = self.ledger.next_remark()
            if due is not None and due <= loop.time():
                # More are due: let sends and other requests run in between.
                self._remark_timer = loop.call_soon(self.remark_due)
                return
        if due is not None:
            # Turns closer together than this share one wake-up, so one does not cost a loop pass each.
            self._remark_timer = loop.call_at(max(due, loop.time() + REMARK_GRANULARITY_S), self.remark_due)

    def cancel(self) -> None:
        """Stop waiting for the next re-mark turn (at shutdown, or to reschedule)."""
        if self._remark_timer is not None:
            self._remark_timer.cancel()
            self._remark_timer = None

    def remark(self, *, everyone: bool = False, limit: int | None = None) -> None:
        try:
            self.ledger.remark(asyncio.get_running_loop().time(), everyone=everyone, limit=limit)
        except StorageError:
            pass  # the marks are kept, as below; storage_outcome logs each cause once
        except Exception as exc:
            # The marks are kept (the engine took them back); their holders' turn comes again, and
            # the same failure with it: logged with its traceback once, then counted. (A user whose
            # own re-mark raises is left out by the ledger and does not get here.)
            cause = f"{type(exc).__name__}: {exc}"
            if self._remark_failure is not None and self._remark_failure[0] == cause:
                self._remark_failure = (cause, self._remark_failure[1] + 1)
                return
            self._remark_failure = (cause, 1)
            log.exception("event=remark_failed")
        else:
            if self._remark_failure is not None:
                log.warning("event=remark_recovered failures=%d", self._remark_failure[1])
                self._remark_failure = None
