"""Widgets on the Python side: throttled row-keyed deltas, complete state, the static snapshot."""

from __future__ import annotations

import threading
import time
from decimal import Decimal
from typing import Any

import pytest

import alphaflow_live as afl
from alphaflow_live.client import PortfolioStream
from alphaflow_live.protocol import Batch, Snapshot
from alphaflow_live.widgets import PortfolioWidget

from .factories import TS, account, position, stamp


def stream_with(symbols: int) -> PortfolioStream:
    live = PortfolioStream("ws://127.0.0.1:9/ws/portfolio", "t", start=False)
    events = stamp([position(f"S{i:03d}", qty=str(i + 1)) for i in range(symbols)] + [account()])
    snapshot = Snapshot(epoch="e-1", seq=len(events), server_time=TS, positions=[e.data for e in events[:-1]],
                        orders=[], account=events[-1].data, fills=[])  # fmt: skip
    live.feed(snapshot)
    return live


def record_messages(widget: PortfolioWidget) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []
    widget._send = lambda msg, buffers=None: sent.append(msg)  # type: ignore[method-assign]
    return sent


def tick(live: PortfolioStream, symbol: str, qty: int) -> None:
    seq = live.seq or 0
    live.feed(Batch(epoch="e-1", from_seq=seq, to_seq=seq + 1, server_time=TS,
                    events=stamp([position(symbol, qty=str(qty))], seq)))  # fmt: skip


def settle(widget: PortfolioWidget, timeout: float = 5.0) -> None:
    """Wait (with a deadline) until no change is waiting for a flush."""
    deadline = time.monotonic() + timeout
    while widget._throttle._scheduled:
        assert time.monotonic() < deadline, "the widget never flushed"
        time.sleep(0.01)


def test_a_burst_of_1000_ticks_sends_a_handful_of_messages() -> None:
    live = stream_with(20)
    widget = PortfolioWidget(live, max_rate_hz=10)
    sent = record_messages(widget)

    started = time.monotonic()
    for i in range(1000):
        tick(live, f"S{i % 20:03d}", 1000 + i)
    settle(widget)
    elapsed = time.monotonic() - started

    deltas = [m for m in sent if "delta" in m.get("state", {})]
    assert len(sent) <= 10 * elapsed + 2, f"{len(sent)} messages in {elapsed:.2f}s"
    assert len(deltas) >= 1
    assert widget.rows["positions"]["S019"]["qty"] == "1999", "the last state arrived"
    assert all("rows" not in m.get("state", {}) for m in sent), "deltas, never the whole table"
    widget.close()


def test_a_delta_carries_only_the_rows_that_changed() -> None:
    live = stream_with(50)
    widget = PortfolioWidget(live)
    sent = record_messages(widget)

    tick(live, "S007", 99)
    settle(widget)

    delta = sent[-1]["state"]["delta"]
    assert list(delta["positions"]["upsert"]) == ["S007"]
    assert delta["positions"]["upsert"]["S007"]["qty"] == "99"
    assert delta["version"] == widget.rows["version"]
    widget.close()


def test_the_rows_trait_holds_the_whole_current_state() -> None:
    live = stream_with(5)
    widget = PortfolioWidget(live)
    tick(live, "S001", 7)
    settle(widget)

    state = widget.get_state()

    assert set(state["rows"]["positions"]) == {f"S{i:03d}" for i in range(5)}
    assert state["rows"]["positions"]["S001"]["qty"] == "7"
    assert state["rows"]["account"]["equity"] == "100000.00"
    widget.close()


@pytest.mark.parametrize(
    ("cls", "component"),
    [(afl.PortfolioWidget, "portfolio"), (afl.ConnectionStatus, "status"), (afl.LiveBadge, "badge"),
     (afl.PositionsTable, "positions"), (afl.AccountSummary, "account")],
)  # fmt: skip
def test_each_part_stands_alone(cls: type[PortfolioWidget], component: str) -> None:
    widget = cls(stream_with(1))

    assert widget.component == component
    assert widget._esm and "render" in str(widget._esm)
    widget.close()


def test_the_static_snapshot_contains_every_position_and_no_script() -> None:
    live = stream_with(30)
    tick(live, "S003", -5)

    page = live.snapshot_html()

    for i in range(30):
        assert f">S{i:03d}<" in page
    assert "Snapshot" in page and "as of" in page
    assert "<script" not in page and "http" not in page.replace("https://", "")
    assert 'class="afl-loss"' in page or 'class="afl-gain"' in page or "0.00" in page


def test_pl_colours_follow_the_sign() -> None:
    live = stream_with(0)
    gain = position("WIN", qty="10")
    gain.data.unrealized_pl, gain.data.unrealized_plpc = Decimal("12.50"), Decimal("0.01")
    loss = position("LOSE", qty="10")
    loss.data.unrealized_pl, loss.data.unrealized_plpc = Decimal("-3.25"), Decimal("-0.002")
    seq = live.seq or 0
    live.feed(Batch(epoch="e-1", from_seq=seq, to_seq=seq + 2, server_time=TS,
                    events=stamp([gain, loss], seq)))  # fmt: skip

    page = live.snapshot_html()

    assert '<td class="afl-gain">+12.50</td>' in page
    assert '<td class="afl-loss">-3.25</td>' in page
    assert '<td class="afl-loss">-0.20%</td>' in page


def test_the_widget_offers_the_snapshot_to_front_ends_without_widgets() -> None:
    widget = PortfolioWidget(stream_with(2))

    bundle = widget._repr_mimebundle_()
    data = bundle[0] if isinstance(bundle, tuple) else bundle

    assert "application/vnd.jupyter.widget-view+json" in data
    assert "S001" in data["text/html"]
    widget.close()


def test_widgets_flush_on_the_streams_thread_and_start_no_threads_of_their_own() -> None:
    live = stream_with(10)
    flushed_on: set[str] = set()
    before = threading.active_count()
    widgets = [PortfolioWidget(live, max_rate_hz=50) for _ in range(5)]
    for widget in widgets:
        original = widget.flush

        def flush(original: Any = original) -> None:
            flushed_on.add(threading.current_thread().name)
            original()

        widget.flush = flush  # type: ignore[method-assign]
        record_messages(widget)

    for i in range(200):
        tick(live, f"S{i % 10:03d}", 100 + i)
    for widget in widgets:
        settle(widget)

    assert flushed_on == {"alphaflow-live-stream"}
    assert threading.active_count() - before <= 1, "one loop thread for the stream, none per widget"
    live.close()
    for widget in widgets:
        widget.close()


def test_a_closed_stream_still_gets_its_last_status_to_the_widget() -> None:
    live = stream_with(1)
    widget = PortfolioWidget(live)
    tick(live, "S000", 5)
    settle(widget)

    live.close()

    assert widget.status == "closed"
    assert live.call_later(0, lambda: None) is False, "nothing runs on a closed stream's thread"
    widget.close()
