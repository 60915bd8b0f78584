"""Kernel-side costs: decoding and applying a 1,000-event batch, reading positions of 500
symbols, and the widget's comm messages while 1,000 ticks per second arrive.

Prints a table. The client's (trusted) decode is timed side by side with the
strict decoder (its baseline row) and with ``msgspec.json.decode`` of the same
bytes into plain dicts and strings, the floor of any decode; the line after the
table gives the ratios to that floor. The other baseline row rebuilds the frame
from the whole state each time (no row cache), in the same process. The widget
lines (``widget: …``) compare the throttled, row-keyed deltas with sending the
whole rows on every change. Run: ``make bench`` or ``.venv/bin/python bench/bench_client.py [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from decimal import Decimal

import msgspec

from alphaflow_live import frames
from alphaflow_live.client import PortfolioStream
from alphaflow_live.deltas import delta_frame
from alphaflow_live.protocol import (
    Batch,
    Event,
    Position,
    PositionEvent,
    Snapshot,
    encode,
    encode_batch,
    server_message_decoder,
)
from alphaflow_live.state import PortfolioState
from alphaflow_live.trusted import trusted_server_message_decoder

TS = "2026-01-04T14:03:11.120Z"
SYMBOLS = [f"S{i:03d}" for i in range(500)]


def position(symbol: str, qty: int, price: str, seq: int) -> PositionEvent:
    p, q = Decimal(price), Decimal(qty)
    return PositionEvent(
        seq=seq,
        ts=TS,
        data=Position(
            symbol=symbol,
            qty=q,
            side="long",
            avg_entry_price=p,
            current_price=p,
            market_value=q * p,
            cost_basis=q * p,
            unrealized_pl=Decimal(0),
            unrealized_plpc=Decimal(0),
            unrealized_intraday_pl=Decimal(0),
            change_today=Decimal(0),
            updated_at=TS,
        ),
    )


def timed(fn: Callable[[], object], repeat: int) -> list[float]:
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def timed_side_by_side(fns: list[Callable[[], object]], repeat: int) -> list[list[float]]:
    """``timed`` for each of ``fns``, taking turns, so that they share the machine's ups and downs."""
    samples: list[list[float]] = [[] for _ in fns]
    for _ in range(repeat):
        for fn, taken in zip(fns, samples, strict=True):
            taken += timed(fn, 1)
    return samples


def row(name: str, samples: list[float], baseline: list[float] | None = None) -> str:
    median = statistics.median(samples)
    p95 = sorted(samples)[int(0.95 * (len(samples) - 1))]
    ratio = f"{statistics.median(baseline) / median:7.1f}x" if baseline else "       "
    return f"{name:<58} {median:9.3f} {p95:9.3f} {ratio}"


def widget_messages(snapshot: Snapshot, seconds: float, *, whole_rows: bool) -> tuple[float, float, float]:
    """(messages/s, KiB/s, ticks/s) of a PortfolioWidget while ticks arrive at 1,000/s, one per batch.

    ``whole_rows`` is the baseline: every change sends the whole ``rows`` trait,
    as a widget without deltas or a throttle would.
    """
    from alphaflow_live import widgets

    live = PortfolioStream("ws://127.0.0.1:9/ws/portfolio", "bench", start=False)
    live.feed(snapshot)
    widget = widgets.PortfolioWidget(live, max_rate_hz=10)
    sent: list[dict[str, object]] = []
    widget._send = lambda msg, buffers=None: sent.append(msg)  # type: ignore[method-assign]
    if whole_rows:

        def resend_rows(_: object) -> None:
            with live.reading() as state:
                widget.rows = widgets._full_rows(state)

        live.on("position", resend_rows)
    seq = live.seq or 0
    ticks = 0
    started = time.perf_counter()
    slot = 0
    while (elapsed := time.perf_counter() - started) < seconds:
        for _ in range(10):  # 10 ticks every 10 ms
            seq += 1
            event = position(SYMBOLS[seq % 500], seq % 90 + 1, f"{100 + seq % 50}.25", seq)
            live.feed(Batch(epoch="e-1", from_seq=seq - 1, to_seq=seq, server_time=TS, events=[event]))
            ticks += 1
        slot += 1
        pause = started + slot * 0.01 - time.perf_counter()
        if pause > 0:
            time.sleep(pause)
    deadline = time.monotonic() + 5
    while widget._throttle._scheduled and time.monotonic() < deadline:
        time.sleep(0.01)  # the last change's flush
    elapsed = time.perf_counter() - started
    size = sum(len(json.dumps(m, default=str)) for m in sent)
    widget.close()
    return len(sent) / elapsed, size / 1024 / elapsed, ticks / elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (for make test)")
    repeat = 20 if parser.parse_args().quick else 200

    base = [position(s, 10, "100.00", i + 1) for i, s in enumerate(SYMBOLS)]
    snapshot = Snapshot(
        epoch="e-1",
        seq=len(base),
        server_time=TS,
        positions=[e.data for e in base],
        orders=[],
        account=None,
        fills=[],
    )
    seq = [len(base)]

    def next_batch() -> Batch:
        start = seq[0]
        events: list[Event] = [
            position(SYMBOLS[i % 500], 10 + i, f"{100 + i % 50}.25", start + i + 1) for i in range(1000)
        ]
        seq[0] += 1000
        return Batch(epoch="e-1", from_seq=start, to_seq=seq[0], server_time=TS, events=events)

    # 1. A 1,000-event batch: decode it (the client's trusted decoder, the strict one, and untyped),
    #    apply it to the pure state and through the client (lock, callbacks, stats), and both.
    wire = encode(next_batch())
    decode, decode_strict, decode_untyped = timed_side_by_side(
        [
            lambda: trusted_server_message_decoder.decode(wire),
            lambda: server_message_decoder.decode(wire),
            lambda: msgspec.json.decode(wire),
        ],
        repeat,
    )
    state = PortfolioState()
    state.apply_snapshot(snapshot)
    seq[0] = len(base)
    batches = [next_batch() for _ in range(repeat)]
    it = iter(batches)
    apply_state = timed(lambda: state.apply_batch(next(it)), repeat)

    live = PortfolioStream("ws://127.0.0.1:9/ws/portfolio", "bench", start=False)
    live.feed(snapshot)
    seq[0] = len(base)
    batches = [next_batch() for _ in range(repeat)]
    it = iter(batches)
    apply_client = timed(lambda: live.feed(next(it)), repeat)

    # What the kernel does with each batch frame: decode it (trusted) and apply it. The state and
    # the client carry on from the seq the batches above left them at.
    held = seq[0]
    frames_in = iter([encode(next_batch()) for _ in range(repeat)])
    decode_apply_client = timed(
        lambda: live.feed(trusted_server_message_decoder.decode(next(frames_in))), repeat
    )
    seq[0] = held
    frames_in = iter([encode(next_batch()) for _ in range(repeat)])
    decode_apply_state = timed(
        lambda: state.apply_batch(trusted_server_message_decoder.decode(next(frames_in))), repeat
    )
    assert live.seq == state.seq == seq[0], (live.seq, state.seq, seq[0])

    # The same through the client, with the frames a connection with field deltas carries: each
    # event against the last value of its symbol (what the server's FieldDeltas does).
    bases = {p.symbol: p for p in snapshot.positions}  # type: ignore[union-attr]

    def delta_wire() -> bytes:
        batch = next_batch()
        encoded = []
        for event in batch.events:
            assert isinstance(event, PositionEvent)
            encoded.append(delta_frame(event, bases[event.data.symbol]))
            bases[event.data.symbol] = event.data
        return encode_batch(batch.epoch, batch.from_seq, batch.to_seq, batch.server_time, encoded)

    deltas_live = PortfolioStream("ws://127.0.0.1:9/ws/portfolio", "bench", start=False)
    deltas_live.feed(snapshot)
    seq[0] = len(base)
    delta_frames = [delta_wire() for _ in range(repeat)]
    full_size = len(encode(batches[0]))
    frames_in = iter(delta_frames)
    decode_apply_deltas = timed(
        lambda: deltas_live.feed(trusted_server_message_decoder.decode(next(frames_in))), repeat
    )
    with deltas_live.reading() as held_deltas, live.reading() as held_full:
        assert held_deltas.positions.keys() == held_full.positions.keys()

    # 2. Reading positions of 500 symbols after one change, against rebuilding from the whole state.
    counter = [seq[0]]

    def one_change() -> None:
        counter[0] += 1
        live.feed(
            Batch(
                epoch="e-1",
                from_seq=counter[0] - 1,
                to_seq=counter[0],
                server_time=TS,
                events=[position("S250", counter[0] % 90 + 1, "101.00", counter[0])],
            )
        )

    def read_after_change() -> None:
        one_change()
        _ = live.positions

    def rebuild_after_change() -> None:
        one_change()
        with live.reading() as state:
            frames.positions_frame(state.positions, frames.RowCache(frames.POSITION_COLUMNS))

    counter[0] = live.seq or 0
    read = timed(read_after_change, repeat)
    rebuild = timed(rebuild_after_change, repeat)
    cached = timed(lambda: live.positions, repeat)
    assert len(live.positions) == 500

    print(f"client benchmarks ({repeat} runs each; ms)")
    print(f"{'scenario':<58} {'median':>9} {'p95':>9} {'vs base':>8}")
    print(row("decode a 1,000-event batch (trusted: the client's)", decode, decode_strict))
    print(row("  baseline: decode it strictly (server_message_decoder)", decode_strict))
    print(row("decode it untyped (msgspec.json.decode: the floor)", decode_untyped))
    print(row("apply a 1,000-event batch to PortfolioState", apply_state))
    print(row("apply a 1,000-event batch through PortfolioStream", apply_client))
    print(row("decode + apply a 1,000-event batch to PortfolioState", decode_apply_state))
    print(row("decode + apply a 1,000-event batch through PortfolioStream", decode_apply_client))
    print(
        row(
            f"  the same as field deltas ({len(delta_frames[0]) / full_size:.0%} of the bytes)",
            decode_apply_deltas,
            decode_apply_client,
        )
    )
    print(row("live.positions, 500 symbols, after one change", read, rebuild))
    print(row("  baseline: rebuild the frame from the whole state", rebuild))
    print(row("live.positions, 500 symbols, unchanged (cached copy)", cached))
    floor = statistics.median(decode_untyped)
    ratios = {
        "trusted decode": decode,
        "strict decode": decode_strict,
        "decode + apply through PortfolioStream": decode_apply_client,
    }
    shown = ", ".join(f"{name} {statistics.median(samples) / floor:.1f}x" for name, samples in ratios.items())
    print(f"vs the untyped decode of the same bytes: {shown}")

    # 3. Widget comm messages while 1,000 ticks per second arrive (500 symbols held).
    seconds = 2.0 if repeat < 200 else 10.0
    deltas = widget_messages(snapshot, seconds, whole_rows=False)
    whole = widget_messages(snapshot, seconds, whole_rows=True)
    if whole[0] <= 2 * deltas[0]:
        # The baseline's callback raising is logged and swallowed like any callback's: say so here.
        raise SystemExit(f"the whole-rows baseline sent {whole[0]:.1f} msg/s, hardly more than the widget")
    # "widget: name | value | unit | baseline name | baseline value" (run.py reads these)
    baseline = "whole rows on every change"
    print(f"widget: ticks per second applied | {deltas[2]:.0f} | ticks/s | {baseline} | {whole[2]:.0f}")
    print(f"widget: comm messages per second | {deltas[0]:.1f} | msg/s | {baseline} | {whole[0]:.1f}")
    print(f"widget: comm bytes per second | {deltas[1]:.1f} | KiB/s | {baseline} | {whole[1]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
