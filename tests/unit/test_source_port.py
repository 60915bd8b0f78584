"""The port sources publish through: a storage outage is waited out, nothing is dropped."""

from __future__ import annotations

import pytest

from alphaflow_live.protocol import Ack, MessageError, Prices, Publish
from alphaflow_server.bus import EventBus
from alphaflow_server.engine import PortfolioEngine
from alphaflow_server.sources.port import RETRY_CAP_S, ServerPort
from alphaflow_server.stats import Health

from .factories import fill


def port_over(outcomes: list[Ack | MessageError], slept: list[float]) -> tuple[ServerPort, list[object]]:
    sent: list[object] = []

    async def ingest(message: Publish | Prices) -> Ack:
        sent.append(message)
        outcome = outcomes.pop(0)
        if isinstance(outcome, MessageError):
            raise outcome
        return outcome

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    bus = EventBus(new_epoch=lambda: "e-1")
    return ServerPort(ingest, PortfolioEngine(), bus, Health(), sleep=sleep), sent


async def test_a_source_waits_out_a_storage_outage_and_its_message_is_stored_once() -> None:
    unavailable = MessageError("unavailable", "the server could not store this message")
    slept: list[float] = []
    port, sent = port_over([unavailable] * 8 + [Ack(id=1, seqs=[1, 2])], slept)
    message = Publish(id=1, user_id="alice", events=[fill("f-1")])

    ack = await port.ingest(message)

    assert ack.seqs == [1, 2]
    assert sent == [message] * 9, "the same message, until it was stored"
    assert slept[:3] == [0.1, 0.2, 0.4] and max(slept) == RETRY_CAP_S, "backing off, capped"


async def test_a_refused_message_is_not_retried() -> None:
    port, sent = port_over([MessageError("invalid_message", "field 'qty' is not a decimal")], [])

    with pytest.raises(MessageError, match="qty"):
        await port.ingest(Publish(id=1, user_id="alice", events=[fill("f-1")]))

    assert len(sent) == 1
