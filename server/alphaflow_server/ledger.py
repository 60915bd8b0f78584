"""Ledger: the ingest pipeline, engine → journal → durable commit → delivery.

Every way events enter the server (``/ws/ingest``, the simulator, broker
sources) goes through ``publish`` or ``prices``. The order is what makes a
restart safe: events are stamped and journaled, committed to the state store,
and only then applied to the users' snapshots and handed to connections. A
commit that fails leaves nothing behind: the journal is rolled back and the
engine's book restored, and the caller gets the error (so a publisher is not
acknowledged and may retry). The same holds when the engine itself raises on a
user's events (it cannot on any input the decoder accepts, see ``money``; this
is for bugs): only that user's publish fails, and one user's re-mark that
raises is left out of the turn instead of stopping everyone else's.

A fill whose id the user's stream applied before is left out before the
engine sees it (``fill_ids``), and its id reported back as a duplicate.
"""

from __future__ import annotations

import contextlib
import decimal
import logging
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from decimal import Decimal

import msgspec

from alphaflow_live.protocol import (
    DECIMAL_INTEGER_DIGITS,
    Event,
    FillEvent,
    PositionEvent,
    PriceTick,
    encode,
    format_timestamp,
)
from alphaflow_live.state import PortfolioState

from .bus import EventBus, Stamped
from .engine import ZERO, BookRecord, PortfolioEngine
from .fill_ids import FILL_IDS_KEPT, AppliedFills
from .journal import Journal
from .remarks import RemarkSchedule
from .store import Commit, LoadedState, Quarantined, QuarantineKind, StateStore, StorageError, UserRows

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
        keep_fill_ids: int = FILL_IDS_KEPT,
    ) -> None:
        self.bus = bus
        self.schedule = RemarkSchedule(remark_interval_s)
        self.engine = engine
        self.store = store
        self.fills = AppliedFills(keep_fill_ids)
        self._checkpoint_every = checkpoint_every
        self._checkpointed: dict[str, int] = {}
        # Users whose last re-mark raised, so that each failure is logged with its traceback once.
        self._remark_failing: set[str] = set()

    # ---------------------------------------------------------------- ingest

    def publish(self, user_id: str, events: Sequence[Event], now: float) -> Published:
        """Apply one publish for one user: the seqs of every event it caused, and the ids of the
        fills it left out as applied before. A publish of nothing but those changes nothing."""
        if not self.fills.loaded(user_id) and any(isinstance(e, FillEvent) for e in events):
            self.fills.load(user_id, self.store.fill_ids(user_id))
        events, duplicates = self.fills.split(user_id, events)
        if not events:
            return Published([], duplicates)
        engine = self.engine
        save_point = engine.save_point(user_id, events)
        try:
            expanded = engine.process(user_id, events)
            # Marks a fill or position introduced are kept too, so a restart prices the same.
            prices, references = engine.prices, engine.day_reference
            marks = {
                s: (str(prices[s]), str(references.get(s, prices[s])))
                for s in save_point.marks
                if s in prices
            }
            stamped = self._commit({user_id: expanded}, now, books={user_id}, prices=marks)
        except BaseException:
            # A failed commit, or an engine that raised half-way through the events: the book is
            # as it was, for this user and every other (the commit was all or nothing too).
            engine.restore(save_point)
            raise
        if save_point.stale:  # the user's stale positions went out with this publish
            self.schedule.sent(user_id, now)
        # A published position moved its symbol's mark (committed with it): its other holders follow.
        moved = {e.data.symbol: e.ts for e in events if isinstance(e, PositionEvent)}
        for symbol, ts in moved.items():
            if symbol in engine.prices:
                self.schedule.stale(engine.spread_mark(symbol, ts, source=user_id), now)
        return Published([event.seq for event in stamped[user_id].events], duplicates)

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
        derived = self._derive(stale)
        if not derived:
            return 0
        try:
            stamped = self._commit(derived, now)
        except BaseException:
            taken = {user_id: stale[user_id] for user_id in derived}
            self.engine.return_stale(taken)
            self.schedule.stale(taken, now)
            raise
        return sum(len(run.events) for run in stamped.values())

    def _derive(self, stale: dict[str, dict[str, str]]) -> dict[str, list[Event]]:
        """The re-marked events of each user whose derivation does not raise.

        A user's that raises is a bug; it is logged (with its traceback the
        first time in a row) and its marks are dropped rather than put back:
        retried, they would fail again every turn. Their next tick or publish
        derives the user's positions afresh.
        """
        derived: dict[str, list[Event]] = {}
        failing = self._remark_failing
        for user_id, symbols in stale.items():
            try:
                derived[user_id] = self.engine.derive_user(user_id, symbols)
            except Exception:
                if user_id in failing:
                    log.error("event=remark_failed user=%s symbols=%d again=true", user_id, len(symbols))
                else:
                    failing.add(user_id)
                    log.exception("event=remark_failed user=%s symbols=%d", user_id, len(symbols))
            else:
                failing.discard(user_id)
        return derived

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
        commit = Commit(prices=prices or {})
        try:
            # The engine built these lists for this commit (or decoded them from the publisher's frame).
            stamped = {
                user_id: bus.append(user_id, events, now, owned=True) for user_id, events in per_user.items()
            }
            commit.events.extend(
                (user_id, wall, run.events[0].seq, run.events[-1].seq, run.encoded)
                for user_id, run in stamped.items()
                if run.events
            )
            for user_id in books:
                stream = bus.user(user_id)
                book = encode(self.engine.dump_book(user_id)) if user_id in self.engine.books else None
                commit.users[user_id] = (stream.epoch, stream.seq, book)
                # Fills come only in publishes, which are the commits that store books.
                run = stamped.get(user_id)
                if run is not None:
                    fills = (e for e in run.events if isinstance(e, FillEvent))
                    commit.fills.extend((user_id, e.data.id, e.seq) for e in fills)
            self.store.commit(commit)
        except BaseException:
            # Whatever failed (the store, or encoding what it would store), nothing was delivered.
            for user_id, seq in seqs_before.items():
                bus.rollback(user_id, seq)
            raise
        for user_id, fill_id, seq in commit.fills:
            self.fills.add(user_id, ((fill_id, seq),))
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
        try:
            self.store.checkpoint(
                user_id, stream.seq, encode(snapshot), prune_through, keep_fills=self.fills.keep
            )
        except StorageError:
            # The events it would prune are all still stored; the user's next commit tries again.
            # (Raising would fail a publish whose commit and delivery already happened.)
            return
        self._checkpointed[user_id] = stream.seq
        self.fills.prune(user_id, prune_through)

    def checkpoint_all(self) -> None:
        for stream in list(self.bus):
            self._maybe_checkpoint(stream.user_id, force=True)

    # --------------------------------------------------------------- restore

    def restore(
        self, loaded: LoadedState, *, retain_events: int, retain_seconds: float, now: float
    ) -> Restored:
        """Rebuild every user's journal, state and book from the stored rows.

        No stored row stops a start. A price mark that no tick could carry (not
        a number, or past the contract's decimal bounds) is set aside, and its
        holders keep the last price their book has.
        A user any of whose rows cannot be applied (an events run, the
        checkpoint, the book, or positions and an account that cannot be
        derived from them) is set aside whole, so nothing of theirs is served
        half-applied: their stream starts again, empty, under a new epoch.
        Set-aside rows go to the store's quarantine, never deleted.
        """
        wall_now = time.time()
        ts = format_timestamp(wall_now)
        quarantined: list[Quarantined] = []

        def set_aside(kind: QuarantineKind, key: str, reason: str) -> None:
            log.error("event=state_quarantined kind=%s key=%s reason=%r", kind, key, reason)
            quarantined.append(self.store.quarantine(kind, key, reason))

        for symbol, (price, reference) in loaded.prices.items():
            try:
                mark = stored_mark("price", price), stored_mark("reference", reference)
            except ValueError as exc:
                set_aside("price", symbol, str(exc))
                continue
            self.engine.prices[symbol], self.engine.day_reference[symbol] = mark
        restored = 0
        for user_id, rows in loaded.users.items():
            try:
                self._restore_user(
                    user_id, rows, now=now, wall_now=wall_now, ts=ts,
                    retain_events=retain_events, retain_seconds=retain_seconds,
                )  # fmt: skip
            except Exception as exc:
                set_aside("user", user_id, _describe(exc))
            else:
                restored += 1
        self.schedule.stale(self.engine.stale_users(), now)
        return Restored(users=restored, quarantined=quarantined)

    def _restore_user(
        self,
        user_id: str,
        rows: UserRows,
        *,
        now: float,
        wall_now: float,
        ts: str,
        retain_events: int,
        retain_seconds: float,
    ) -> None:
        """Restore one user whole, or raise naming the row that cannot be applied and leave
        nothing of the user behind."""
        from alphaflow_live.protocol import snapshot_decoder

        journal = Journal(
            rows.epoch, seq=rows.seq, retain_events=retain_events, retain_seconds=retain_seconds
        )
        state = PortfolioState(max_fills=CHECKPOINT_FILLS)
        checkpoint_seq = 0
        if rows.checkpoint is not None and rows.checkpoint_seq is not None:
            with _row(f"the checkpoint at seq {rows.checkpoint_seq}"):
                state.apply_snapshot(snapshot_decoder.decode(rows.checkpoint))
            checkpoint_seq = rows.checkpoint_seq
        entries: list[tuple[float, Event]] = []
        for at, blob in rows.events:
            with _row(f"the events run appended at {format_timestamp(at)}"):
                entries.extend((now - (wall_now - at), event) for event in _events_decoder.decode(blob))
        with _row("the events"):
            journal.restore(entries)
            journal.seq = rows.seq
            journal.trim(now)
            state.apply_events(event for _, event in entries if event.seq > checkpoint_seq)
        state.epoch, state.seq = rows.epoch, rows.seq
        if rows.book is not None:
            with _row("the book"):
                record = _book_decoder.decode(rows.book)
            marks = set(self.engine.prices)
            try:
                with _row("the book's positions and account"):
                    self.engine.load_book(user_id, record)
                    self._restale(user_id, state, ts)
            except Exception:
                self._unload_book(user_id, marks)
                raise
        self.bus.adopt(user_id, journal, state)
        self._checkpointed[user_id] = checkpoint_seq

    def _unload_book(self, user_id: str, marks: set[str]) -> None:
        """Forget a book ``load_book`` took, and the marks it brought that ``marks`` did not have."""
        engine = self.engine
        # An empty book drops every holding with its holder entry and stale mark.
        empty = BookRecord(cash=ZERO, realized_pl_today=ZERO, last_equity=ZERO, currency="USD", holdings=[])
        engine.load_book(user_id, empty)
        del engine.books[user_id]
        for symbol in set(engine.prices) - marks:
            del engine.prices[symbol]

    def _restale(self, user_id: str, shown: PortfolioState, ts: str) -> None:
        """Holdings whose stream shows an older mark than the last one committed get re-marked.

        Books are stored when a fill or an authoritative event changes them, not
        on every mark, and marks are committed before their re-mark; after a
        restart the prices table is the newest word on every symbol. Every
        position and the account are derived here, so a book the engine cannot
        compute with raises now, not at the user's next event.
        """
        engine = self.engine
        positions = shown.positions
        for symbol, holding in engine.books[user_id].holdings.items():
            holding.current_price = engine.prices.get(symbol, holding.current_price)
            derived = engine.position(holding, ts)
            position = positions.get(symbol)
            if position is None or position.current_price != derived.current_price:
                engine.mark_stale(user_id, symbol, ts)
        engine.account(user_id, ts)


@dataclass(frozen=True)
class Published:
    seqs: list[int]
    # Ids of fills left out as applied before (or earlier in the same publish), each once.
    duplicates: list[str]


@dataclass(frozen=True)
class Restored:
    users: int
    # Rows this start set aside (``LoadedState.quarantined`` has those of earlier starts).
    quarantined: list[Quarantined]


def stored_mark(name: str, text: str) -> Decimal:
    """A stored price or day reference, when it is what a tick could carry (so the engine can use it)."""
    try:
        value = Decimal(text)
    except decimal.InvalidOperation:
        raise ValueError(f"the stored {name} {text!r} is not a decimal") from None
    if not value.is_finite() or (value and value.adjusted() >= DECIMAL_INTEGER_DIGITS):
        raise ValueError(
            f"the stored {name} {text!r} is out of range "
            f"(a price has at most {DECIMAL_INTEGER_DIGITS} digits before the point)"
        )
    return value


@contextlib.contextmanager
def _row(what: str) -> Iterator[None]:
    """Name the stored row an exception came from."""
    try:
        yield
    except Exception as exc:
        raise ValueError(f"{what}: {_describe(exc)}") from exc


def _describe(exc: Exception) -> str:
    if isinstance(exc, decimal.DecimalException):
        return "a decimal the engine cannot compute with (not a number, infinite, or out of range)"
    return str(exc) or type(exc).__name__
