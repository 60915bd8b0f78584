"""Ledger: the ingest pipeline, engine → journal → durable commit → delivery.

Every way events enter the server (``/ws/ingest``, the simulator, broker
sources) goes through ``publish`` or ``prices``. The order is what makes a
restart safe: events are stamped and journaled, committed to the state store,
and only then applied to the users' snapshots and handed to connections. A
commit that fails leaves nothing behind: the journal is rolled back and the
engine's book restored, and the caller gets the error (so a publisher is not
acknowledged and may retry).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from decimal import Decimal

import msgspec

from alphaflow_live.protocol import Event, PriceTick, encode, format_timestamp
from alphaflow_live.state import PortfolioState

from .bus import EventBus, Stamped
from .engine import BookRecord, PortfolioEngine
from .journal import Journal
from .remarks import RemarkSchedule
from .store import Commit, LoadedState, StateStore

log = logging.getLogger("alphaflow.server.ledger")

_events_decoder = msgspec.json.Decoder(list[Event])
_book_decoder = msgspec.json.Decoder(BookRecord)

# Fills a checkpoint keeps (the server's state holds this many; snapshots send 100).
CHECKPOINT_FILLS = 1000


class Ledger:
    def __init__(
        self,
        bus: EventBus,
        engine: PortfolioEngine,
        store: StateStore,
        *,
        checkpoint_every: int = 2000,
        remark_interval_s: float = 0.0,
    ) -> None:
        self.bus = bus
        self.schedule = RemarkSchedule(remark_interval_s)
        self.engine = engine
        self.store = store
        self._checkpoint_every = checkpoint_every
        self._checkpointed: dict[str, int] = {}

    # ---------------------------------------------------------------- ingest

    def publish(self, user_id: str, events: Sequence[Event], now: float) -> list[int]:
        """Apply one publish for one user; returns the seqs of every event it caused."""
        save_point = self.engine.save_point(user_id, events)
        expanded = self.engine.process(user_id, events)
        if save_point.stale:  # the user's stale positions go out with this publish
            self.schedule.sent(user_id, now)
        # Marks a fill or position introduced are kept too, so a restart prices the same.
        prices, references = self.engine.prices, self.engine.day_reference
        marks = {
            s: (str(prices[s]), str(references.get(s, prices[s]))) for s in save_point.marks if s in prices
        }
        try:
            stamped = self._commit({user_id: expanded}, now, books={user_id}, prices=marks)
        except BaseException:
            self.engine.restore(save_point)
            raise
        return [event.seq for event in stamped[user_id].events]

    def prices(self, ticks: Sequence[PriceTick], now: float) -> None:
        """Record new marks, durably; the holders' events follow from ``remark``.

        The marks are committed before the engine takes them, so a failed
        commit changes nothing. A crash before the holders' re-mark loses no
        event: ``restore`` re-marks every holding whose stream lags its mark.
        """
        references = self.engine.day_reference
        price_rows = {t.symbol: (str(t.price), str(references.get(t.symbol, t.price))) for t in ticks}
        self.store.commit(Commit(prices=price_rows))
        self.schedule.stale(self.engine.mark(ticks), now)

    def next_remark(self) -> float | None:
        """When ``remark`` next has work (loop time), if it has any."""
        return self.schedule.next_due()

    def remark(self, now: float, *, everyone: bool = False, limit: int | None = None) -> int:
        """Positions and accounts of the holders whose re-mark is due (at most ``limit`` of them,
        or of all holders); how many events."""
        users = self.schedule.take_all(now) if everyone else self.schedule.take_due(now, limit)
        stale = self.engine.take_stale(users)
        if not stale:
            return 0
        derived = self.engine.derive(stale)
        try:
            stamped = self._commit(derived, now)
        except BaseException:
            self.engine.return_stale(stale)
            self.schedule.stale(stale, now)
            raise
        return sum(len(run.events) for run in stamped.values())

    def set_meta(self, key: str, value: str) -> None:
        self.store.commit(Commit(meta={key: value}))

    def _commit(
        self,
        per_user: dict[str, list[Event]],
        now: float,
        *,
        books: Iterable[str] = (),
        prices: dict[str, tuple[str, str]] | None = None,
    ) -> dict[str, Stamped]:
        wall = time.time()
        bus = self.bus
        seqs_before = {user_id: bus.user(user_id).seq for user_id in per_user}
        # The engine built these lists for this commit (or decoded them from the publisher's frame).
        stamped = {
            user_id: bus.append(user_id, events, now, owned=True) for user_id, events in per_user.items()
        }
        commit = Commit(prices=prices or {})
        commit.events.extend(
            (user_id, wall, run.events[0].seq, run.events[-1].seq, run.encoded)
            for user_id, run in stamped.items()
            if run.events
        )
        for user_id in books:
            stream = bus.user(user_id)
            book = encode(self.engine.dump_book(user_id)) if user_id in self.engine.books else None
            commit.users[user_id] = (stream.epoch, stream.seq, book)
        try:
            self.store.commit(commit)
        except BaseException:
            for user_id, seq in seqs_before.items():
                bus.rollback(user_id, seq)
            raise
        for user_id, events in stamped.items():
            bus.deliver(user_id, events, now)
            self._maybe_checkpoint(user_id)
        return stamped

    # ----------------------------------------------------------- checkpoints

    def _maybe_checkpoint(self, user_id: str, *, force: bool = False) -> None:
        stream = self.bus.user(user_id)
        last = self._checkpointed.get(user_id, 0)
        if stream.seq == last or (not force and stream.seq - last < self._checkpoint_every):
            return
        snapshot = stream.state.to_snapshot(format_timestamp(time.time()), max_fills=CHECKPOINT_FILLS)
        # Keep what a restart needs twice over: events after the checkpoint (to
        # rebuild the state) and events a client may still resume from.
        prune_through = min(stream.seq, stream.journal.first_replayable_seq)
        self.store.checkpoint(user_id, stream.seq, encode(snapshot), prune_through)
        self._checkpointed[user_id] = stream.seq

    def checkpoint_all(self) -> None:
        for stream in list(self.bus):
            self._maybe_checkpoint(stream.user_id, force=True)

    # --------------------------------------------------------------- restore

    def restore(self, loaded: LoadedState, *, retain_events: int, retain_seconds: float, now: float) -> int:
        """Rebuild every user's journal, state and book; returns how many users."""
        from alphaflow_live.protocol import snapshot_decoder

        wall_now = time.time()
        for symbol, (price, reference) in loaded.prices.items():
            self.engine.prices[symbol] = Decimal(price)
            self.engine.day_reference[symbol] = Decimal(reference)
        for user_id, rows in loaded.users.items():
            journal = Journal(
                rows.epoch, seq=rows.seq, retain_events=retain_events, retain_seconds=retain_seconds
            )
            state = PortfolioState(max_fills=CHECKPOINT_FILLS)
            checkpoint_seq = 0
            if rows.checkpoint is not None and rows.checkpoint_seq is not None:
                state.apply_snapshot(snapshot_decoder.decode(rows.checkpoint))
                checkpoint_seq = rows.checkpoint_seq
            entries = [
                (now - (wall_now - at), event)
                for at, blob in rows.events
                for event in _events_decoder.decode(blob)
            ]
            journal.restore(entries)
            journal.seq = rows.seq
            journal.trim(now)
            state.apply_events(event for _, event in entries if event.seq > checkpoint_seq)
            state.epoch, state.seq = rows.epoch, rows.seq
            self.bus.adopt(user_id, journal, state)
            self._checkpointed[user_id] = checkpoint_seq
            if rows.book is not None:
                self.engine.load_book(user_id, _book_decoder.decode(rows.book))
        self._restale(format_timestamp(wall_now))
        self.schedule.stale(self.engine.stale_users(), now)
        return len(loaded.users)

    def _restale(self, ts: str) -> None:
        """Holdings whose stream shows an older mark than the last one committed get re-marked.

        Books are stored when a fill or an authoritative event changes them, not
        on every mark, and marks are committed before their re-mark; after a
        restart the prices table is the newest word on every symbol.
        """
        engine = self.engine
        for user_id, book in engine.books.items():
            shown = self.bus.user(user_id).state.positions
            for symbol, holding in book.holdings.items():
                price = engine.prices.get(symbol, holding.current_price)
                holding.current_price = price
                position = shown.get(symbol)
                if position is None or position.current_price != engine.position(holding, ts).current_price:
                    engine.mark_stale(user_id, symbol, ts)
