"""The notebook's view of connection problems: a re-run connect(), a per-user limit, several nodes."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import sys
import threading
import types

import pytest

import alphaflow_live as afl
from alphaflow_live.protocol import Stats
from tests.support.admin import admin_request
from tests.support.client import StreamClient
from tests.support.server import Tokens

pytestmark = pytest.mark.timeout(90)

FAST = {"backoff_base_s": 0.05, "backoff_cap_s": 0.5, "poll_interval_s": 0.2, "connect_timeout_s": 5}


async def alice_connections(server, tokens: Tokens) -> int:
    stats = await admin_request(server, tokens, {"type": "get_stats", "id": 1})
    assert isinstance(stats, Stats)
    return stats.connections_per_user.get("alice", 0)


async def test_connecting_again_with_the_same_url_and_token_closes_the_previous_stream(
    start_server, tokens: Tokens
) -> None:
    server = start_server()
    url = f"{server.ws_base}/ws/portfolio"
    first = afl.connect(url, tokens.alice, **FAST)
    await first.until(lambda live: live.status == "live")

    second = afl.connect(url, tokens.alice, **FAST)  # a notebook cell run again
    await second.until(lambda live: live.status == "live")

    assert first.status == "closed"
    assert await alice_connections(server, tokens) == 1
    other = afl.connect(url, tokens.bob, **FAST)  # another token is another stream
    await other.until(lambda live: live.status == "live")
    assert second.status == "live"
    for live in (second, other):
        live.close()


async def test_under_marimo_run_one_viewers_connect_leaves_anothers_stream_alone(
    start_server, tokens: Tokens, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``marimo run`` serves each viewer's session from one process, with a runtime context per
    session (thread-local): only a re-run within a session replaces its stream."""
    server = start_server()
    url = f"{server.ws_base}/ws/portfolio"
    contexts = threading.local()
    fake_marimo = types.ModuleType("marimo._runtime.context")
    fake_marimo.safe_get_context = lambda: getattr(contexts, "current", None)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "marimo._runtime.context", fake_marimo)

    def viewer_connects(context: object) -> afl.PortfolioStream:
        made: list[afl.PortfolioStream] = []

        def run() -> None:
            contexts.current = context
            made.append(afl.connect(url, tokens.alice, **FAST))

        thread = threading.Thread(target=run)
        thread.start()
        thread.join(timeout=10)
        return made[0]

    first_viewer, second_viewer = object(), object()
    first = viewer_connects(first_viewer)
    second = viewer_connects(second_viewer)
    await second.until(lambda live: live.status == "live")
    await first.until(lambda live: live.status == "live")
    rerun = viewer_connects(first_viewer)  # the first viewer runs its cell again
    await rerun.until(lambda live: live.status == "live")
    assert (first.status, second.status) == ("closed", "live")
    for live in (second, rerun):
        live.close()


async def test_a_stream_made_directly_is_not_closed_by_connect(start_server, tokens: Tokens) -> None:
    server = start_server()
    url = f"{server.ws_base}/ws/portfolio"
    kept = afl.PortfolioStream(url, tokens.alice, **FAST)
    await kept.until(lambda live: live.status == "live")

    made = afl.connect(url, tokens.alice, **FAST)
    await made.until(lambda live: live.status == "live")

    assert kept.status == "live"
    for live in (kept, made):
        live.close()


async def test_a_stream_refused_by_the_per_user_limit_polls_and_says_why(
    start_server, tokens: Tokens, caplog: pytest.LogCaptureFixture
) -> None:
    server = start_server("--max-per-user", "1")
    holder = await StreamClient.connect(server.ws_base, tokens.alice)  # takes the one place
    url = f"{server.ws_base}/ws/portfolio"

    with caplog.at_level(logging.WARNING, logger="alphaflow_live"):
        live = afl.connect(url, tokens.alice, **FAST, fallback_after_failures=2)
        await live.until(lambda live: live.status == "polling" and live.seq is not None)
        # The server says Retry-After: 5, so the retries come about every 5 s.
        await live.until(lambda live: live.counters["reconnects"] >= 3, timeout=20)

    assert "HTTP 429" in live.status_reason and "per-user limit" in live.status_reason
    assert live.status_reason.startswith("the stream failed")
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "HTTP 429" in r.getMessage()]
    assert len(warnings) == 1, "one warning for the cause, not one per retry"
    widget = afl.PortfolioWidget(live)
    assert widget.status == "polling" and "HTTP 429" in widget.status_reason, "the banner's text"
    widget.close()

    await holder.close()  # the place frees up: the stream comes back and the reason goes
    await live.until(lambda live: live.status == "live", timeout=20)
    assert live.status_reason == ""
    live.close()


async def test_a_client_given_several_urls_streams_from_one_that_answers_and_moves_when_it_dies(
    start_server, tokens: Tokens
) -> None:
    first, second = start_server(), start_server()
    dead = f"ws://127.0.0.1:{free_port()}/ws/portfolio"  # nothing listens there
    urls = [dead, f"{first.ws_base}/ws/portfolio", f"{second.ws_base}/ws/portfolio"]
    live = afl.connect(urls, tokens.alice, **FAST)
    await live.until(lambda live: live.status == "live", timeout=20)
    serving = first if live.url.startswith(first.ws_base) else second

    await asyncio.to_thread(serving.stop, signal.SIGKILL)
    await live.until(
        lambda live: live.status == "live" and not live.url.startswith(serving.ws_base), timeout=20
    )

    other = second if serving is first else first
    assert live.url.startswith(other.ws_base)
    assert live.urls == urls
    live.close()


def test_alphaflow_url_may_name_every_node_comma_separated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALPHAFLOW_URL", "ws://a:8765/ws/portfolio, ws://b:8765/ws/portfolio,")

    live = afl.PortfolioStream(token="t", start=False)

    assert live.urls == ["ws://a:8765/ws/portfolio", "ws://b:8765/ws/portfolio"]
    live.close()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port
