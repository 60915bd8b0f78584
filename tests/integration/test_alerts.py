"""Alerts on a real stream: account events published to a real server cross a threshold."""

from __future__ import annotations

import logging
import threading
from datetime import UTC, timedelta

import pytest

import alphaflow_live as afl
from alphaflow_live.protocol import AccountEvent
from tests.support import events as ev
from tests.support.client import Publisher
from tests.support.server import Tokens

pytestmark = pytest.mark.timeout(60)

FAST = {"backoff_base_s": 0.05, "backoff_cap_s": 0.5, "poll_interval_s": 0.2, "connect_timeout_s": 5}
DAY_LOSS = "day loss over 1,000"


def day(equity: str) -> AccountEvent:
    """The account at ``equity`` (all cash), on a day that started at 100,000."""
    event = ev.account(cash=equity, equity=equity)
    event.data.last_equity = ev.D("100000.00")
    return event


def day_loss(live: afl.PortfolioStream) -> bool:
    return bool(live.account["equity"] - live.account["last_equity"] < -1_000)


class Probe:
    """An alert that never fires and records the equity each evaluation saw. Added after the
    alerts under test, it is evaluated after them: once it saw a value, their pass for it is over."""

    def __init__(self, live: afl.PortfolioStream) -> None:
        self.seen: list[float] = []
        self.handle = live.alert(self._look, "probe")

    def _look(self, live: afl.PortfolioStream) -> bool:
        self.seen.append(live.account["equity"])
        return False

    def saw(self, equity: float) -> bool:
        return bool(self.seen) and self.seen[-1] == equity


async def publish_and_settle(feed: Publisher, live: afl.PortfolioStream, probe: Probe, equity: str) -> None:
    """Publish the account at ``equity`` and wait until the alerts were evaluated on it."""
    await feed.publish("alice", [day(equity)])
    await live.until(lambda live: probe.saw(float(equity)), timeout=10)


async def test_an_alert_fires_once_per_crossing_and_again_after_it_reset(
    start_server, tokens: Tokens
) -> None:
    server = start_server("--batch-window-ms", "5")
    feed = await Publisher.connect(server.ws_base, tokens.service)
    await feed.publish("alice", [day("100000.00")])
    with afl.connect(f"{server.ws_base}/ws/portfolio", tokens.alice, **FAST) as live:
        await live.until(lambda live: live.status == "live" and live.account["equity"] == 100_000)
        received: list[tuple[afl.Alert, str]] = []
        live.on("alert", lambda alert: received.append((alert, threading.current_thread().name)))
        handle = live.alert(day_loss, lambda live: f"{DAY_LOSS}: equity {live.account['equity']:,.0f}",
                            name=DAY_LOSS, cooldown_s=0)  # fmt: skip
        probe = Probe(live)

        await publish_and_settle(feed, live, probe, "99500.00")
        assert received == [], "a loss of 500 is within the limit"
        await publish_and_settle(feed, live, probe, "98500.00")
        assert len(received) == 1, f"expected one firing on the crossing, got {received}"
        alert, thread = received[0]
        assert (alert.name, alert.message, alert.fire_count) == (DAY_LOSS, f"{DAY_LOSS}: equity 98,500", 1)
        assert alert.value is True and alert.seq == live.seq
        assert alert.fired_at.tzinfo is UTC
        assert thread == "alphaflow-live-stream", "callbacks run on the stream's thread"

        for equity in ("98000.00", "97000.00", "98900.00"):
            await publish_and_settle(feed, live, probe, equity)
        assert len(received) == 1, "no second firing while the loss stays over the limit"
        assert live.alerts.loc[DAY_LOSS, "state"] == "active"

        await publish_and_settle(feed, live, probe, "99900.00")
        assert live.alerts.loc[DAY_LOSS, "state"] == "armed", "back within the limit: armed again"
        await publish_and_settle(feed, live, probe, "98800.00")
        assert [a.fire_count for a, _ in received] == [1, 2], "the next crossing fires again"
        assert live.alerts.loc[DAY_LOSS, "fire_count"] == 2

        handle.cancel()
        await publish_and_settle(feed, live, probe, "100000.00")
        await publish_and_settle(feed, live, probe, "90000.00")
        assert len(received) == 2, "a cancelled alert never fires"
        assert list(live.alerts.index) == ["probe"]


async def test_a_crossing_within_the_cooldown_fires_when_it_ends_without_new_data(
    start_server, tokens: Tokens
) -> None:
    server = start_server("--batch-window-ms", "5")
    feed = await Publisher.connect(server.ws_base, tokens.service)
    await feed.publish("alice", [day("100000.00")])
    with afl.connect(f"{server.ws_base}/ws/portfolio", tokens.alice, **FAST) as live:
        await live.until(lambda live: live.status == "live" and live.account["equity"] == 100_000)
        received: list[afl.Alert] = []
        live.on("alert", received.append)
        live.alert(day_loss, DAY_LOSS, cooldown_s=1.0)
        probe = Probe(live)

        await publish_and_settle(feed, live, probe, "98000.00")
        await publish_and_settle(feed, live, probe, "100000.00")
        await publish_and_settle(feed, live, probe, "98000.00")
        assert len(received) == 1, "the flicker within the cooldown did not fire"
        assert live.alerts.loc[DAY_LOSS, "state"] == "cooling"

        await live.until(lambda live: len(received) == 2, timeout=10)

        assert received[1].fired_at - received[0].fired_at >= timedelta(seconds=1.0)
        assert live.alerts.loc[DAY_LOSS, "state"] == "active"


async def test_an_alert_already_true_when_added_fires_at_once(start_server, tokens: Tokens) -> None:
    server = start_server("--batch-window-ms", "5")
    feed = await Publisher.connect(server.ws_base, tokens.service)
    await feed.publish("alice", [day("97000.00")])
    with afl.connect(f"{server.ws_base}/ws/portfolio", tokens.alice, **FAST) as live:
        await live.until(lambda live: live.status == "live" and live.account["equity"] == 97_000)
        received: list[afl.Alert] = []
        live.on("alert", received.append)

        live.alert(day_loss, DAY_LOSS)

        await live.until(lambda live: len(received) == 1, timeout=10)
        assert received[0].name == DAY_LOSS


async def test_a_raising_condition_or_callback_never_breaks_the_stream(
    start_server, tokens: Tokens, caplog: pytest.LogCaptureFixture
) -> None:
    server = start_server("--batch-window-ms", "5")
    feed = await Publisher.connect(server.ws_base, tokens.service)
    await feed.publish("alice", [day("100000.00")])
    with (
        caplog.at_level(logging.WARNING, logger="alphaflow_live"),
        afl.connect(f"{server.ws_base}/ws/portfolio", tokens.alice, **FAST) as live,
    ):
        await live.until(lambda live: live.status == "live" and live.account["equity"] == 100_000)
        received: list[afl.Alert] = []
        live.on("alert", lambda alert: 1 / 0)
        live.on("alert", received.append)
        live.alert(lambda live: live.positions.loc["AAPL", "qty"] > 5, "AAPL over 5", name="aapl")
        live.alert(day_loss, DAY_LOSS, cooldown_s=0)
        probe = Probe(live)

        await publish_and_settle(feed, live, probe, "99000.00")
        await publish_and_settle(feed, live, probe, "98000.00")
        await feed.publish("alice", [ev.fill("x-1", qty="7")])
        await live.until(lambda live: "x-1" in live.fills.index and len(received) == 2, timeout=10)

        assert [a.name for a in received] == [DAY_LOSS, "aapl"], "the other alert and, once AAPL exists, it"
        assert live.status == "live"

    raised = [
        r.getMessage() for r in caplog.records if "alert 'aapl': its condition raised" in r.getMessage()
    ]
    assert len(raised) == 1, f"reported once, got {raised}"
    assert "an 'alert' callback raised" in caplog.text
