"""Widgets on the Python side: throttled row-keyed deltas, complete state, the static snapshot."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import msgspec
import pytest

import alphaflow_live as afl
from alphaflow_live import widgets
from alphaflow_live.client import PortfolioStream
from alphaflow_live.protocol import TERMINAL_ORDER_STATUSES, AccountEvent, Batch, Event, Snapshot
from alphaflow_live.widgets import LiveBadge, PortfolioWidget

from .factories import TS, D, account, fill, position, stamp, ts


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
    feed(live, [position(symbol, qty=str(qty))])


def feed(live: PortfolioStream, events: list[Event]) -> None:
    """One batch of ``events``, next in the stream's sequence."""
    seq = live.seq or 0
    live.feed(Batch(epoch="e-1", from_seq=seq, to_seq=seq + len(events), server_time=TS,
                    events=stamp(events, seq)))  # fmt: skip


def equity_update(equity: str, at_ms: int, last_equity: str = "100000.00") -> AccountEvent:
    """An account update at ``at_ms`` after TS, its day P&L equity - last_equity."""
    event = account(equity=equity, at=ts(at_ms))
    data = msgspec.structs.replace(event.data, last_equity=D(last_equity))
    return msgspec.structs.replace(event, data=data)


def deltas(sent: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [m["state"]["delta"] for m in sent if "delta" in m.get("state", {})]


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


def test_the_snapshot_shows_exposure_and_the_days_equity_curve_as_an_image() -> None:
    live = stream_with(3)
    feed(live, [equity_update("100100.00", 1_000), equity_update("99950.00", 2_000)])

    page = live.snapshot_html()

    for label in (
        "Equity",
        "Day P&amp;L",
        "Realized today",
        "Cash",
        "Buying power",
        "Long",
        "Short",
        "Gross",
        "Net",
    ):
        assert f'<span class="afl-snap-k">{label}</span>' in page, label
    chart = re.search(r'<svg role="img" aria-label="(Equity [^"]*)"', page)
    assert chart is not None, page
    assert "day P&amp;L -50.00" in chart.group(1)
    assert "<script" not in page


class FakeShell:
    """IPython's event registry, as far as a widget uses it."""

    def __init__(self) -> None:
        self.callbacks: dict[str, list[Any]] = {"post_run_cell": []}
        self.events = self

    def register(self, event: str, callback: Any) -> None:
        self.callbacks[event].append(callback)

    def unregister(self, event: str, callback: Any) -> None:
        self.callbacks[event].remove(callback)

    def run_cell(self) -> None:
        for callback in list(self.callbacks["post_run_cell"]):
            callback(None)


def test_the_widgets_snapshot_follows_each_cell_run_until_it_is_closed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    shell = FakeShell()
    monkeypatch.setattr("alphaflow_live.widgets._ipython", lambda: shell)
    live = stream_with(1)
    widget = PortfolioWidget(live)
    assert ">S000<" in widget.snapshot and ">LATE<" not in widget.snapshot

    tick(live, "LATE", 3)
    assert ">LATE<" not in widget.snapshot, "refreshed with every change, not once per cell"
    shell.run_cell()
    assert ">LATE<" in widget.snapshot

    widget.close()
    assert shell.callbacks["post_run_cell"] == [], "a closed widget left its hook behind"
    widget.close()  # again, as when it is collected


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


# ------------------------------------------------------------------ fills


def test_fills_go_out_as_row_keyed_deltas_and_rows_hold_them_by_id() -> None:
    live = stream_with(1)
    widget = PortfolioWidget(live)
    sent = record_messages(widget)

    feed(live, [fill("f-a", symbol="S000", qty="3", price="0.0042")])
    settle(widget)

    delta = deltas(sent)[-1]
    assert list(delta["fills"]["upsert"]) == ["f-a"], delta["fills"]
    assert delta["fills"]["upsert"]["f-a"]["price"] == "0.0042"
    assert delta["fills"]["remove"] == []
    assert widget.get_state()["rows"]["fills"]["f-a"]["qty"] == "3"
    widget.close()


def test_a_fill_already_held_is_not_sent_again() -> None:
    live = stream_with(1)
    feed(live, [fill("f-a")])
    widget = PortfolioWidget(live)
    sent = record_messages(widget)

    with live.reading() as state:
        again = state.fills[-1]
    widget._on_fill(again)  # the same fill heard again (a resync)
    settle(widget)

    assert deltas(sent)[-1]["fills"] == {"upsert": {}, "remove": []}
    widget.close()


def test_past_the_cap_the_oldest_fills_go_out_as_removes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(widgets, "MAX_FILL_ROWS", 3)
    live = stream_with(1)
    feed(live, [fill(f"f-{n}", at=ts(n)) for n in range(2)])
    widget = PortfolioWidget(live)
    sent = record_messages(widget)
    assert list(widget.rows["fills"]) == ["f-0", "f-1"]

    feed(live, [fill(f"f-{n}", at=ts(n)) for n in range(2, 6)])  # four more, in one flush
    settle(widget)

    delta = deltas(sent)[-1]["fills"]
    assert delta["remove"] == ["f-0", "f-1"], delta
    assert list(delta["upsert"]) == ["f-3", "f-4", "f-5"], "f-2 came and went within one flush: never sent"
    assert list(widget.rows["fills"]) == ["f-3", "f-4", "f-5"]
    widget.close()


def test_the_first_rows_hold_the_newest_fills_up_to_the_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(widgets, "MAX_FILL_ROWS", 2)
    live = stream_with(1)
    feed(live, [fill(f"f-{n}", at=ts(n)) for n in range(5)])

    widget = PortfolioWidget(live)

    assert list(widget.rows["fills"]) == ["f-3", "f-4"]
    widget.close()


# ------------------------------------------------------------------ equity


def test_the_first_rows_carry_the_equity_history_as_points() -> None:
    live = stream_with(1)
    feed(live, [equity_update("100250.50", 1000)])
    feed(live, [equity_update("99900.00", 2000)])

    widget = PortfolioWidget(live)

    start = int(datetime.fromisoformat(TS).timestamp() * 1000)
    assert widget.rows["equity"][-2:] == [[start + 1000, 100250.5, 250.5], [start + 2000, 99900.0, -100.0]]
    assert widget.rows["equity"] == widgets._history_points(live.equity_history)
    widget.close()


def test_equity_points_go_out_incrementally_never_the_whole_history() -> None:
    live = stream_with(1)
    for n in range(50):
        feed(live, [equity_update(f"{100000 + n}.00", n * 100)])
    widget = PortfolioWidget(live)
    sent = record_messages(widget)
    held = len(widget.rows["equity"])

    for n in range(50, 53):
        feed(live, [equity_update(f"{100000 + n}.00", n * 100)])
    settle(widget)

    appended = [point for delta in deltas(sent) for point in delta["equity"]]
    assert [p[1] for p in appended] == [100050.0, 100051.0, 100052.0], "only the new points"
    assert all("rows" not in m.get("state", {}) for m in sent)
    assert len(widget.rows["equity"]) == held + 3
    assert widget.rows["equity"] == widgets._history_points(live.equity_history), "the kernel's curve"
    widget.close()


def test_equity_points_ride_in_the_same_throttled_deltas() -> None:
    live = stream_with(5)
    widget = PortfolioWidget(live, max_rate_hz=10)
    sent = record_messages(widget)

    started = time.monotonic()
    for n in range(1, 301):
        feed(live, [equity_update(f"{100000 + n}.00", n), position(f"S{n % 5:03d}", qty=str(n + 1))])
    settle(widget)
    elapsed = time.monotonic() - started

    assert len(sent) <= 10 * elapsed + 2, f"{len(sent)} messages in {elapsed:.2f}s"
    assert sum(len(d["equity"]) for d in deltas(sent)) == 300
    widget.close()


def test_an_update_heard_again_adds_no_point() -> None:
    live = stream_with(1)
    feed(live, [equity_update("100100.00", 1000)])
    widget = PortfolioWidget(live)
    sent = record_messages(widget)
    with live.reading() as state:
        current = state.account
    assert current is not None

    widget._on_account(current)  # the update the history held, delivered after the widget read it
    settle(widget)

    assert deltas(sent)[-1]["equity"] == []
    widget.close()


def test_the_rows_keep_at_most_max_equity_points(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(widgets, "MAX_EQUITY_POINTS", 4)
    live = stream_with(1)
    widget = PortfolioWidget(live)
    record_messages(widget)

    for n in range(6):
        feed(live, [equity_update(f"{100000 + n}.00", n * 1000)])
        settle(widget)

    assert [p[1] for p in widget.rows["equity"]] == [100002.0, 100003.0, 100004.0, 100005.0]
    widget.close()


# ------------------------------------------------------------------ alerts


@dataclass(frozen=True)
class FiredAlert:
    """What the stream hands ``on("alert")`` callbacks (alphaflow_live.alerts.Alert has these and more)."""

    name: str
    message: str
    fired_at: datetime | str


class AlertingStream:
    """A stream whose alerts the test fires, the way ``PortfolioStream.alert`` does: through
    ``on("alert", callback)``. Everything else is the real stream's."""

    def __init__(self, live: PortfolioStream, *, has_alerts: bool = True) -> None:
        self._live = live
        self._has_alerts = has_alerts
        self.alert_callbacks: list[Callable[[Any], None]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._live, name)

    def on(self, event: str, callback: Callable[[Any], None]) -> Callable[[], None]:
        if event != "alert":
            return self._live.on(event, callback)
        if not self._has_alerts:
            raise ValueError("unknown event 'alert'")
        self.alert_callbacks.append(callback)
        return lambda: self.alert_callbacks.remove(callback)

    def fire(self, alert: FiredAlert) -> None:
        for callback in list(self.alert_callbacks):
            callback(alert)


def test_an_alert_reaches_the_portfolio_widget_in_its_next_delta() -> None:
    live = AlertingStream(stream_with(1))
    widget = PortfolioWidget(live)  # type: ignore[arg-type]
    sent = record_messages(widget)
    fired_at = datetime(2026, 1, 4, 14, 3, 12, tzinfo=UTC)

    live.fire(FiredAlert("drawdown", "equity fell below 99,000", fired_at))
    settle(widget)

    assert deltas(sent)[-1]["alerts"] == [
        {"name": "drawdown", "message": "equity fell below 99,000", "fired_at": "2026-01-04T14:03:12+00:00"}
    ]
    assert "alerts" not in widget.rows, "shown, not kept"
    widget.close()
    assert live.alert_callbacks == [], "closing the widget unsubscribes it"


def test_a_burst_of_alerts_stays_within_the_rate_and_sends_the_newest() -> None:
    live = AlertingStream(stream_with(1))
    widget = PortfolioWidget(live, max_rate_hz=10)  # type: ignore[arg-type]
    sent = record_messages(widget)

    started = time.monotonic()
    for n in range(200):
        live.fire(FiredAlert(f"a{n}", "crossed", "2026-01-04T14:03:12.000Z"))
    settle(widget)
    elapsed = time.monotonic() - started

    assert len(sent) <= 10 * elapsed + 2, f"{len(sent)} messages in {elapsed:.2f}s"
    names = [a["name"] for d in deltas(sent) for a in d.get("alerts", [])]
    assert names[-1] == "a199"
    assert all(len(d.get("alerts", [])) <= widgets.MAX_ALERTS_PER_DELTA for d in deltas(sent))
    widget.close()


def test_only_views_with_toasts_subscribe_to_alerts() -> None:
    live = AlertingStream(stream_with(1))

    badge = LiveBadge(live)  # type: ignore[arg-type]

    assert live.alert_callbacks == []
    badge.close()


def test_a_stream_without_alerts_still_gets_its_widget() -> None:
    live = AlertingStream(stream_with(1), has_alerts=False)

    widget = PortfolioWidget(live)  # type: ignore[arg-type]

    assert widget.rows["positions"], "the widget works; it shows no alerts"
    widget.close()


def test_the_real_streams_alerts_reach_the_widget() -> None:
    live = stream_with(1)
    if not hasattr(live, "alert"):
        pytest.skip("PortfolioStream.alert is not there yet")
    widget = PortfolioWidget(live)
    sent = record_messages(widget)

    live.alert(lambda live: len(live.positions) >= 2, "two positions", name="two")
    tick(live, "S001", 5)
    settle(widget)

    fired = [a for d in deltas(sent) for a in d.get("alerts", [])]
    assert [(a["name"], a["message"]) for a in fired] == [("two", "two positions")], fired
    assert isinstance(fired[0]["fired_at"], str)
    widget.close()


# ------------------------------------------------------------------ the rest


def test_the_done_filter_gets_the_protocols_terminal_statuses() -> None:
    widget = PortfolioWidget(stream_with(0))

    assert widget.get_state()["done_statuses"] == sorted(TERMINAL_ORDER_STATUSES)
    widget.close()
