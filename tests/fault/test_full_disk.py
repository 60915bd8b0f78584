"""A full disk under the state dir: publishes answer ``unavailable`` and change nothing,
``/healthz`` says degraded, and everything comes back once there is space again."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from alphaflow_live.protocol import Event
from tests.support import events as ev
from tests.support.book_model import BookModel
from tests.support.client import close_all, health, rest_snapshot
from tests.support.disk import fill_disk, tmpfs
from tests.support.pipeline import Acked, Outcome, PipelinedPublisher, Refused
from tests.support.server import StartServer, Tokens
from tests.support.wait import async_wait_until

pytestmark = pytest.mark.timeout(90)

# Publishes tried once the disk is full before the test gives up on it filling.
MAX_PUBLISHES_TO_FILL = 300


def fills(tag: str, count: int = 20) -> list[Event]:
    """A publish of ``count`` fills: a commit that needs a few pages of the disk."""
    symbols = ("AAPL", "MSFT")
    return [ev.fill(f"{tag}.{n}", symbol=symbols[n % 2], qty="1.5", price="100.25") for n in range(count)]


async def test_a_full_disk_answers_unavailable_degrades_health_and_loses_nothing_acked(
    start_server: StartServer, tokens: Tokens, tmp_path: Path
) -> None:
    with tmpfs(tmp_path / "disk", size="2m") as disk:
        server = start_server("--state-dir", str(disk / "state"))
        try:
            feed = await PipelinedPublisher.connect(server.ws_base, tokens.service, window=1)
            model = BookModel()

            async def publish(events: Sequence[Event]) -> Outcome:
                outcome = await feed.request("alice", events)
                if isinstance(outcome, Acked):
                    model.apply(events)
                return outcome

            assert isinstance(await publish([ev.account(cash="100000.00")]), Acked)
            for n in range(3):
                assert isinstance(await publish(fills(f"before-{n}")), Acked)
            assert (await health(server.http_base))["status"] == "healthy"

            filler = disk / "filler"
            await asyncio.to_thread(fill_disk, filler)
            refused: list[Refused] = []
            for n in range(MAX_PUBLISHES_TO_FILL):  # until the disk is full, and a few more
                outcome = await publish(fills(f"full-{n}"))
                if isinstance(outcome, Refused):
                    refused.append(outcome)
                    if len(refused) == 3:
                        break
            assert refused, f"{MAX_PUBLISHES_TO_FILL} publishes were acked on a full disk"
            degraded = await health(server.http_base)
            changed_while_full = model.mismatches(await rest_snapshot(server.http_base, tokens.alice))

            filler.unlink()

            async def acked_again() -> Acked | None:
                outcome = await publish(fills("after"))
                return outcome if isinstance(outcome, Acked) else None

            await async_wait_until(acked_again, timeout=10, what="a publish acked once the disk has space")

            async def healthy() -> dict[str, Any] | None:
                status = await health(server.http_base)
                return status if status["status"] == "healthy" else None

            recovered = await async_wait_until(healthy, timeout=10, what="/healthz healthy again")
            await asyncio.to_thread(server.stop, signal.SIGKILL)
            server.port = 0
            await asyncio.to_thread(server.start)
            after_restart = await rest_snapshot(server.http_base, tokens.alice)
            violations = feed.violations
        finally:
            await close_all()
            if server.proc is not None and server.proc.poll() is None:
                await asyncio.to_thread(server.stop)

    assert [r.code for r in refused] == ["unavailable"] * len(refused), (
        f"a full disk must answer unavailable (nothing changed, retry), got {refused}"
    )
    assert degraded["status"] == "degraded" and degraded["reasons"], f"/healthz on a full disk: {degraded}"
    assert not changed_while_full, f"refused publishes changed the book: {changed_while_full}"
    assert recovered["reasons"] == [], recovered
    assert not violations, f"replies that broke the contract: {violations[:3]}"
    assert not model.mismatches(after_restart), f"after a restart: {model.mismatches(after_restart)}"
