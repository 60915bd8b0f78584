"""Trusted decoders: the server's own frames, decoded without checking their values again.

The strict types in ``protocol`` check every value they decode (timestamp and
symbol patterns, real dates, finite and positive decimals), which is right for
what publishers send. What the stream server sends back was built from values
it checked on the way in, and checking them a second time costs the kernel more
than half of its decode (bench/bench_client.py times both). A client opts into these decoders for
frames from its server; ``protocol.server_message_decoder`` stays strict.

There is still one schema. Each trusted type is generated from its strict one
(``trusted_type``), never written out:

* it subclasses the strict type, so ``isinstance`` (the state, the tracker,
  the frames) sees the message it always saw;
* its fields are the strict type's, in the same order, with the same names,
  wire names and defaults, and the same types with every ``Meta`` constraint
  dropped and every nested Struct replaced by its trusted twin;
* its ``__post_init__`` checks nothing;
* it is equal to a strict message of the same values (and reads the same:
  it has the strict type's name; its module, ``alphaflow_live.trusted``,
  tells the two apart), so state decoded either way compares as it should.

Decimals stay ``decimal.Decimal`` and timestamps stay strings: only the checks
go. What the JSON does not fit (a missing field, a wrong type, an unknown
``type`` tag) is still a ``msgspec.ValidationError``.
"""

from __future__ import annotations

import functools
import operator
import types
from typing import Annotated, Any, Final, TypeVar, Union, cast, get_args, get_origin

import msgspec
from msgspec import NODEFAULT, Struct

from .protocol import FrameDecoder, ServerMessage, Snapshot

S = TypeVar("S", bound=Struct)


def _no_checks(self: Struct) -> None:
    """Trusted: the values were checked where they entered the system."""


def _equality(strict: type[Struct]) -> dict[str, Any]:
    """``__eq__`` and ``__ne__`` for the twin of ``strict``: msgspec's own between twins, and
    field by field against a ``strict`` instance (msgspec's compare only equal types)."""
    same_type = Struct.__eq__
    names = strict.__struct_fields__

    def __eq__(self: Struct, other: object) -> bool:
        if type(other) is type(self):
            result: bool = same_type(self, other)
            return result
        if type(other) is strict:
            return all(getattr(self, name) == getattr(other, name) for name in names)
        return NotImplemented

    def __ne__(self: Struct, other: object) -> bool:
        equal = __eq__(self, other)
        return equal if equal is NotImplemented else not equal

    return {"__eq__": __eq__, "__ne__": __ne__}


@functools.cache
def trusted_type(strict: type[S]) -> type[S]:
    """The trusted twin of the Struct type ``strict`` (one per type; see the module's docstring)."""
    fields: list[tuple[str, Any] | tuple[str, Any, Any]] = []
    for field in msgspec.structs.fields(strict):
        hint = unconstrained(field.type)
        if field.default is not NODEFAULT:
            fields.append((field.name, hint, field.default))
        elif field.default_factory is not NODEFAULT:
            fields.append((field.name, hint, msgspec.field(default_factory=field.default_factory)))
        else:
            fields.append((field.name, hint))
    config = strict.__struct_config__
    namespace = {"__post_init__": _no_checks, "__doc__": f"{strict.__name__}, decoded unchecked."}
    twin = msgspec.defstruct(
        strict.__name__,
        fields,
        bases=(strict,),
        module=__name__,
        namespace=namespace | _equality(strict),
        # ``__match_args__`` names a Struct's positional fields: keep them positional.
        kw_only=not strict.__match_args__,
        tag_field=config.tag_field,
        tag=config.tag,
    )
    return cast("type[S]", twin)


def unconstrained(hint: Any) -> Any:
    """``hint`` without its ``Meta`` constraints, with trusted twins for the Structs it names."""
    origin = get_origin(hint)
    if origin is Annotated:
        return unconstrained(get_args(hint)[0])
    if isinstance(hint, type) and issubclass(hint, Struct):
        return trusted_type(hint)
    if origin is Union or origin is types.UnionType:
        return functools.reduce(operator.or_, map(unconstrained, get_args(hint)))
    if origin in (list, dict, tuple, set, frozenset):
        return origin[tuple(map(unconstrained, get_args(hint)))]
    return hint  # str, int, Decimal, Literal[...], UnsetType, None: nothing to drop


TrustedServerMessage: Final = functools.reduce(operator.or_, map(trusted_type, ServerMessage.__args__))

trusted_server_message_decoder: FrameDecoder[ServerMessage] = FrameDecoder(TrustedServerMessage)
trusted_snapshot_decoder: FrameDecoder[Snapshot] = FrameDecoder(trusted_type(Snapshot))
