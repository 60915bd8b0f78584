"""Hypothesis strategies for the values inside protocol messages: decimals in and outside the
contract's grammar, timestamps, symbols, and whole event data drawn from the shared schema.

The grammar is PROTOCOL.md's, written out here rather than imported, so the
fuzzer holds the server to the contract and not to its own reading of it: an
optional ``-``, 1 to 15 digits, optionally ``.`` and 1 to 10 digits, ASCII only.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import msgspec
import msgspec.inspect as mi
from hypothesis import strategies as st

from alphaflow_live.protocol import TIMESTAMP_PATTERN

GRAMMAR = re.compile(r"-?[0-9]{1,15}(\.[0-9]{1,10})?")
DIGITS = "0123456789"
# Symbols several events share, so that fills, positions and ticks meet in one book.
SYMBOLS = ("AAPL", "MSFT", "HX", "BRK.B", "X")
# A value a strategy may draw for an optional field: leave the field out.
OMIT: Any = object()

# Decimals the grammar refuses, the ones PROTOCOL.md and issue 14 name first.
BAD_DECIMALS = (
    "1e30", "1E5", "1e-3", "1_000", " 5", "5 ", "+1", "١٢", "१२", "１２", "٣.٥", "0x1A", ".5", "5.",
    "1.2.3", "--1", "-", "", "NaN", "nan", "Infinity", "-Infinity", "inf", "1,000", "½", "²", "1 000",
    "\t1", "1\n", "−5", "1234567890123456", "0.12345678901", "-1234567890123456.5", "0.5e1", "1.0E+2",
)  # fmt: skip


@st.composite
def plain_decimals(draw: st.DrawFn, *, positive: bool = False) -> str:
    """Any decimal the grammar accepts (leading zeros, ``-0`` and the extremes included)."""
    whole = draw(st.text(DIGITS, min_size=1, max_size=15))
    fraction = draw(st.text(DIGITS, max_size=10))
    text = whole + (f".{fraction}" if fraction else "")
    if positive:
        return text if Decimal(text) > 0 else text[:-1] + "1"
    return draw(st.sampled_from(("", "-"))) + text


def cents(low: int, high: int, *, nonzero: bool = False) -> st.SearchStrategy[str]:
    """Hundredths from ``low`` to ``high`` as plain decimals: values a model keeps exact."""
    values = st.integers(low, high).filter(lambda n: n != 0) if nonzero else st.integers(low, high)
    return values.map(lambda n: format(Decimal(n).scaleb(-2), "f"))


def bad_decimals() -> st.SearchStrategy[str]:
    """Strings that look like numbers but are outside the grammar."""
    exponent = st.tuples(st.integers(1, 9), st.sampled_from("eE"), st.integers(-40, 40)).map(
        lambda t: f"{t[0]}{t[1]}{t[2]}"
    )
    too_long = st.text(DIGITS, min_size=16, max_size=40)
    too_fine = st.text(DIGITS, min_size=11, max_size=30).map(lambda f: "0." + f)
    other_scripts = st.text(
        st.characters(categories=["Nd"], exclude_characters=DIGITS), min_size=1, max_size=5
    )
    near = st.tuples(plain_decimals(), st.sampled_from(("+", " ", "_", ",", "\n", "\u00a0", "e"))).map(
        lambda t: t[1] + t[0] if t[1] in "+ " else t[0] + t[1] + "1"
    )
    return st.one_of(st.sampled_from(BAD_DECIMALS), exponent, too_long, too_fine, other_scripts, near).filter(
        lambda s: GRAMMAR.fullmatch(s) is None
    )


@st.composite
def timestamps(draw: st.DrawFn) -> str:
    """ISO 8601 UTC with ``Z``, at millisecond, microsecond or nanosecond precision."""
    moment = draw(st.datetimes(datetime(2000, 1, 1), datetime(2099, 12, 31), timezones=st.just(UTC)))
    digits = draw(st.sampled_from((3, 6, 9)))
    fraction = f"{moment.microsecond:06d}{draw(st.integers(0, 999)):03d}"[:digits]
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + fraction + "Z"


def symbols() -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from(SYMBOLS), st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9./_-]{0,31}\Z"))


def _strategy_for(kind: Any, name: str) -> st.SearchStrategy[Any]:
    """A valid wire value for a field of msgspec type ``kind`` (decimals as grammar strings)."""
    if isinstance(kind, mi.Metadata):
        return _strategy_for(kind.type, name)
    if isinstance(kind, mi.DecimalType):
        return plain_decimals()
    if isinstance(kind, mi.StrType):
        if kind.pattern == TIMESTAMP_PATTERN:
            return timestamps()
        if kind.pattern is not None and "A-Za-z0-9./_-" in kind.pattern:
            return symbols()
        return st.text(min_size=kind.min_length or 0, max_size=min(kind.max_length or 40, 40))
    if isinstance(kind, mi.LiteralType):
        return st.sampled_from(kind.values)
    if isinstance(kind, mi.UnionType):
        return st.one_of([_strategy_for(k, name) for k in kind.types])
    if isinstance(kind, mi.NoneType):
        return st.none()
    if isinstance(kind, mi.IntType):
        return st.integers(0 if kind.ge == 0 else -(2**53), 2**53)
    raise TypeError(f"no strategy for field {name!r} of type {kind!r}")


@st.composite
def wire_data(
    draw: st.DrawFn, cls: type[msgspec.Struct], overrides: Mapping[str, st.SearchStrategy[Any]] | None = None
) -> dict[str, Any]:
    """The JSON object of a valid ``cls`` (a protocol data struct), field by field from its schema."""
    overrides = overrides or {}
    data: dict[str, Any] = {}
    for f in _fields(cls):
        if f.name in overrides:
            value = draw(overrides[f.name])
        elif not f.required and draw(st.booleans()):
            value = OMIT
        else:
            value = draw(_strategy_for(f.type, f.name))
        if value is not OMIT:
            data[f.encode_name] = value
    return data


def _fields(cls: type[msgspec.Struct]) -> tuple[mi.Field, ...]:
    info = mi.type_info(cls)
    assert isinstance(info, mi.StructType), f"{cls} is not a struct"
    return info.fields


@st.composite
def deep_nesting(draw: st.DrawFn, budget: int) -> str:
    """A JSON value nested 5,000 levels deep or more, of arrays or objects, in ``budget`` bytes."""
    objects = draw(st.booleans())
    per_level = 5 if objects else 2
    depth = draw(st.integers(5_000, max(5_000, min(20_000, budget // per_level))))
    return '{"":' * depth + "0" + "}" * depth if objects else "[" * depth + "]" * depth
