"""StreamingDeflate: a compressor kept only while the session says the connection streams."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.extensions.permessage_deflate import PerMessageDeflate
from websockets.frames import Frame, Opcode

from alphaflow_server.deflate import StreamingDeflate, StreamingDeflateFactory, streaming_deflate


def server_side(*, takeover_negotiated: bool = True) -> StreamingDeflate:
    return StreamingDeflate(True, not takeover_negotiated, 12, 13, {"memLevel": 6, "level": 1})


def client_side() -> PerMessageDeflate:
    """What the client holds when the server did not send server_no_context_takeover."""
    return PerMessageDeflate(False, True, 13, 12)


def batch(n: int) -> bytes:
    rng = random.Random(n)
    events = ",".join(
        f'{{"type":"position_delta","seq":{n * 10 + i},"data":{{"symbol":"S{i:02d}",'
        f'"current_price":"{100 + rng.random():.6f}","market_value":"{1000 + rng.random():.4f}"}}}}'
        for i in range(10)
    )
    return f'{{"type":"batch","events":[{events}]}}'.encode()


def through(server: StreamingDeflate, client: PerMessageDeflate, payload: bytes) -> tuple[bytes, int]:
    wire = server.encode(Frame(Opcode.TEXT, payload))
    return bytes(client.decode(wire).data), len(wire.data)


def test_a_kept_context_makes_the_next_batch_smaller_and_the_client_reads_every_message() -> None:
    alone, streaming, client_a, client_b = server_side(), server_side(), client_side(), client_side()
    streaming.keep_context(True)
    sizes_alone, sizes_streaming = [], []
    for n in range(20):
        payload = batch(n)
        decoded, size = through(alone, client_a, payload)
        assert decoded == payload
        sizes_alone.append(size)
        decoded, size = through(streaming, client_b, payload)
        assert decoded == payload
        sizes_streaming.append(size)

    assert sizes_streaming[0] == sizes_alone[0]
    assert sum(sizes_streaming[1:]) < 0.9 * sum(sizes_alone[1:])


def test_an_idle_connection_holds_no_compressor() -> None:
    server, client = server_side(), client_side()
    through(server, client, batch(1))
    assert not hasattr(server, "encoder")

    server.keep_context(True)
    through(server, client, batch(2))
    assert hasattr(server, "encoder")
    server.keep_context(False)
    assert not hasattr(server, "encoder")


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 50)), max_size=30))
def test_dropping_and_keeping_the_context_between_any_messages_never_confuses_the_client(
    steps: list[tuple[bool, int]],
) -> None:
    server, client = server_side(), client_side()
    for keep, n in steps:
        server.keep_context(keep)
        payload = batch(n)
        assert through(server, client, payload)[0] == payload


def test_a_client_that_asks_for_no_context_takeover_gets_a_fresh_compressor_every_message() -> None:
    server = server_side(takeover_negotiated=False)
    server.keep_context(True)
    client = PerMessageDeflate(False, True, 13, 12)

    assert through(server, client, batch(1))[0] == batch(1)
    assert not server.keeps_context
    assert not hasattr(server, "encoder")


def test_the_factory_negotiates_context_takeover_and_answers_with_a_streaming_deflate() -> None:
    factory = StreamingDeflateFactory(server_max_window_bits=13, client_no_context_takeover=True)

    response, extension = factory.process_request_params([], [])

    assert ("server_no_context_takeover", None) not in response
    assert streaming_deflate([extension]) is extension
    assert isinstance(extension, StreamingDeflate) and extension.may_keep_context
    _, refused = factory.process_request_params([("server_no_context_takeover", None)], [])
    assert isinstance(refused, StreamingDeflate) and not refused.may_keep_context
