"""Hypothesis strategies for /ws/portfolio frames: ping, subscribe (with and without resume) and
unsubscribe, valid and spoiled, plus the frames issue 14 names."""

from __future__ import annotations

import json
from typing import Any

import msgspec.inspect as mi
from hypothesis import strategies as st

from alphaflow_live.protocol import CHANNELS, Ping, Subscribe, Unsubscribe

from .fuzz_cases import (
    EPOCH,
    MAX_FRAME_BYTES,
    REPLY,
    WRONG_VALUES,
    Case,
    accepts,
    dumps,
    echo_of,
    message_ids,
    not_messages,
    slots_of,
    splice,
    spoil,
    with_id,
)
from .fuzz_values import OMIT, deep_nesting


def channel_lists(min_size: int = 0) -> st.SearchStrategy[list[str]]:
    return st.lists(st.sampled_from(CHANNELS), min_size=min_size, max_size=6)


@st.composite
def valid_portfolio(draw: st.DrawFn) -> Case:
    kind = draw(st.sampled_from(("ping", "subscribe", "unsubscribe")))
    message: dict[str, Any] = {"type": kind}
    resume = False
    if kind == "subscribe":
        channels = draw(st.one_of(st.just(OMIT), st.none(), channel_lists(min_size=1)))
        if channels is not OMIT:
            message["channels"] = channels
        if draw(st.booleans()):
            message["resume"] = {
                "epoch": draw(st.sampled_from((EPOCH, "e-unknown"))),
                "seq": draw(st.integers(0, 10**6)),
            }
            resume = True
    elif kind == "unsubscribe":
        message["channels"] = draw(channel_lists())
    message = with_id(message, draw(message_ids()))
    return Case(f"valid {kind}", dumps(message), frozenset({REPLY}), kind, echo_of(message), resume=resume)


_PORTFOLIO = {
    "ping": mi.type_info(Ping),
    "subscribe": mi.type_info(Subscribe),
    "unsubscribe": mi.type_info(Unsubscribe),
}


@st.composite
def spoiled_portfolio(draw: st.DrawFn) -> Case:
    """A valid portfolio frame spoiled in one way."""
    base = draw(valid_portfolio())
    assert isinstance(base.frame, str)
    message = json.loads(base.frame)
    slots = slots_of(message, _PORTFOLIO[base.kind])
    invalid = frozenset({"invalid_message"})

    def case(label: str, spoiled: Any, accept: frozenset[str], raw: str | None = None) -> Case:
        if raw is not None:  # a frame that cannot be decoded has no id the server could echo
            return Case(label, raw, accept, base.kind, None, resume=base.resume)
        return Case(label, dumps(spoiled), accept, base.kind, echo_of(spoiled), resume=base.resume)

    named = [s[0] for s in slots if s[0][0] == "channels" and len(s[0]) == 2]
    ways = ["extra", "huge", "nested"]
    ways += ["wrong_type"] if slots else []
    ways += ["missing"] if any(s[2] for s in slots) else []
    ways += ["channel"] if named or (base.kind == "subscribe" and "channels" in message) else []
    ways += ["seq"] if base.resume else []
    how = draw(st.sampled_from(sorted(ways)))
    if how == "channel" and named:
        name = draw(
            st.one_of(st.sampled_from(("Positions", "position", "", "trades ", "*")), st.text(max_size=12))
        )
        if name not in CHANNELS:
            spoiled = spoil(message, draw(st.sampled_from(named)), name)
            return case("an unknown channel", spoiled, frozenset({"invalid_channel"}))
    if how == "channel" and base.kind == "subscribe" and "channels" in message:
        return case(
            "subscribe to no channel", spoil(message, ("channels",), []), frozenset({"invalid_channel"})
        )
    if how == "huge" and named:
        spoiled = spoil(message, draw(st.sampled_from(named)), "p" * 50_000)
        return case("a huge channel name", spoiled, frozenset({"invalid_channel"}))
    if how == "huge":
        return case("a huge id", spoil(message, ("id",), "i" * 50_000), frozenset({REPLY}))
    if how == "seq":
        seq = draw(st.sampled_from((-1, -(2**40), 1.5, "12", None)))
        return case("a resume seq that is no seq", spoil(message, ("resume", "seq"), seq), invalid)
    if how == "missing":
        required = draw(st.sampled_from([s[0] for s in slots if s[2]]))
        return case("a required field left out", spoil(message, required, OMIT), invalid)
    if how == "nested":
        path = draw(st.sampled_from([s[0] for s in slots] + [("channels",), ("x",)]))
        raw = splice(message, path, draw(deep_nesting(MAX_FRAME_BYTES - len(base.frame.encode()))))
        return case("deep nesting in a field", message, frozenset({"invalid_json"}), raw)
    if how == "wrong_type":
        path, kind, _ = draw(st.sampled_from(slots))
        wrong = [v for v in WRONG_VALUES if not accepts(kind, v)]
        return case("a wrong type", spoil(message, path, draw(st.sampled_from(wrong))), invalid)
    name = "x-" + draw(st.text(min_size=1, max_size=10))
    return case("an unknown field", spoil(message, (name,), draw(st.integers())), invalid | {REPLY})


def portfolio_cases() -> st.SearchStrategy[Case]:
    return st.one_of(valid_portfolio(), spoiled_portfolio(), not_messages(("publish", "prices", "welcome")))


def named_portfolio_cases() -> list[Case]:
    cases = [
        Case(f"named: a frame nested {depth} deep", "[" * depth + "]" * depth, frozenset({"invalid_json"}))
        for depth in (5_000, 10_000)
    ]
    raw = '{"type":"subscribe","id":1,"channels":' + "[" * 5_000 + "]" * 5_000 + "}"
    cases.append(Case("named: channels nested 5000 deep", raw, frozenset({"invalid_json"}), "subscribe"))
    cases.append(
        Case(
            "named: a binary frame", b'{"type":"ping","id":1}', frozenset({"invalid_message", "invalid_json"})
        )
    )
    cases.append(
        Case("named: subscribe", dumps({"type": "subscribe", "id": 2}), frozenset({REPLY}), "subscribe", 2)
    )
    return cases
