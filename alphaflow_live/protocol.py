"""The wire schema of AlphaFlow Live, protocol version 1 (shared/PROTOCOL.md).

Every frame on every stream is one of the msgspec Structs below, tagged by
``type``. The server, the kernel-side client, the tests and the JSON Schema
export all use these definitions; nothing else spells out a message.

Money and quantities are ``decimal.Decimal`` here and decimal strings on the
wire. What publishers send must be plain and bounded (``DECIMAL_PATTERN``): see
``decode_ingest_message``. Timestamps stay the exact strings their source sent (ISO 8601 UTC, ``Z``,
millisecond or finer), so the server never rewrites an event's ``ts``.
"""

from __future__ import annotations

import calendar
import contextlib
import contextvars
import functools
import re
import time
from collections.abc import Iterable, Iterator
from decimal import Decimal
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Final, Generic, Literal, TypeVar, Union, cast

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType

PROTOCOL_VERSION: Final = 1

Channel = Literal["positions", "orders", "account", "trades"]
CHANNELS: Final[tuple[Channel, ...]] = ("positions", "orders", "account", "trades")

# Patterns end in (?!\n)$ because Python's $ also matches before a final newline;
# the lookahead keeps them exact in Python and in the exported JSON Schema alike.
TIMESTAMP_PATTERN: Final = (
    r"^\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])T([01]\d|2[0-3]):[0-5]\d:[0-5]\d\.\d{3,9}Z(?!\n)$"
)
Timestamp = Annotated[
    str,
    Meta(
        pattern=TIMESTAMP_PATTERN,
        description="ISO 8601 UTC with a Z suffix and millisecond or finer precision",
        examples=["2026-01-04T14:03:11.120Z"],
    ),
]
# A decimal as publishers must send it (shared/PROTOCOL.md, Transport): plain ASCII digits, so
# that what Decimal() would also take ("1e30", "1_000", " 5", "١٢") is refused, and bounded, so
# that the engine's arithmetic on any accepted value is exact and cannot fail (engine.py says why).
DECIMAL_INTEGER_DIGITS: Final = 15
DECIMAL_FRACTION_DIGITS: Final = 10
DECIMAL_PATTERN: Final = (
    rf"^-?[0-9]{{1,{DECIMAL_INTEGER_DIGITS}}}(\.[0-9]{{1,{DECIMAL_FRACTION_DIGITS}}})?(?!\n)$"
)
_plain_decimal = re.compile(DECIMAL_PATTERN).match
Symbol = Annotated[str, Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9./_-]{0,31}(?!\n)$")]
UserId = Annotated[str, Meta(pattern=r"^[A-Za-z0-9_.@-]{1,64}(?!\n)$")]
MessageId = int | str

OrderStatus = Literal[
    "new",
    "accepted",
    "partially_filled",
    "filled",
    "canceled",
    "expired",
    "rejected",
    "replaced",
    "pending_cancel",
]
TERMINAL_ORDER_STATUSES: Final = frozenset({"filled", "canceled", "expired", "rejected", "replaced"})

ErrorCode = Literal[
    "invalid_json",
    "invalid_message",
    "unknown_type",
    "invalid_channel",
    "resume_unavailable",
    "unavailable",
    "internal",
]


def _check_date(field: str, timestamp: str | UnsetType | None) -> None:
    """The pattern allows day 31 in any month; refuse the dates that do not exist."""
    # Every month has days up to 28 (the pattern checked the digits); a change may leave it out.
    if not isinstance(timestamp, str) or timestamp[8:10] <= "28":
        return
    year, month, day = int(timestamp[:4]), int(timestamp[5:7]), int(timestamp[8:10])
    if day > calendar.monthrange(year, month)[1]:
        raise ValueError(f"field '{field}' is not a real date: {timestamp[:10]}")


# Set while code builds structs from values it computed out of validated ones (the server's
# portfolio engine), which need no second check: see ``trusted_construction``.
_trusted: contextvars.ContextVar[bool] = contextvars.ContextVar("alphaflow_trusted", default=False)


@contextlib.contextmanager
def trusted_construction() -> Iterator[None]:
    """Build data and events without their value checks (finite decimals, real dates, …).

    Decoding always checks. This is for code that derives values from data
    that was checked already, where the checks would only cost time: the
    engine's re-mark of thousands of positions per second.
    """
    token = _trusted.set(True)
    try:
        yield
    finally:
        _trusted.reset(token)


# Data and events are never part of a reference cycle (they hold strings, decimals and other
# data), so they stay out of the cyclic garbage collector (``gc=False``): a server journals
# millions of them, and collections that walk every one cost it a sixth of its time.
class _Data(Struct, kw_only=True, gc=False):
    # Decimal fields that must be above zero (msgspec's Meta(gt=) is for ints and floats).
    _positive: ClassVar[tuple[str, ...]] = ()
    _timestamps: ClassVar[tuple[str, ...]] = ()
    # Every Decimal field (found once per class: this check runs for every event decoded or built).
    _decimals: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        annotations: dict[str, Any] = {}
        for klass in reversed(cls.__mro__):
            annotations.update(getattr(klass, "__annotations__", {}))
        cls._decimals = tuple(
            name
            for name, hint in annotations.items()
            if "Decimal" in str(hint) and "ClassVar" not in str(hint)
        )

    def __post_init__(self) -> None:
        if _trusted.get():
            return
        for name in self._timestamps:
            _check_date(name, getattr(self, name))
        # NaN and infinities parse as Decimal, but money never is either.
        for name in self._decimals:
            value = getattr(self, name)
            if isinstance(value, Decimal) and not value.is_finite():
                raise ValueError(f"field '{name}' must be a finite decimal, got {value}")
        for name in self._positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"field '{name}' must be above zero, got {getattr(self, name)}")


# --------------------------------------------------------------------------- data


class Position(_Data, kw_only=True):
    """One open position; field names are Alpaca's. ``qty`` is negative when short."""

    symbol: Symbol
    qty: Decimal
    side: Literal["long", "short"]
    avg_entry_price: Decimal
    current_price: Decimal
    market_value: Decimal
    cost_basis: Decimal
    unrealized_pl: Decimal
    unrealized_plpc: Decimal
    unrealized_intraday_pl: Decimal
    change_today: Decimal
    asset_class: str = "us_equity"
    updated_at: Timestamp
    _timestamps = ("updated_at",)


class Order(_Data, kw_only=True):
    id: Annotated[str, Meta(min_length=1, max_length=128)]
    client_order_id: Annotated[str, Meta(max_length=128)] = ""
    symbol: Symbol
    side: Literal["buy", "sell"]
    type: Literal["market", "limit", "stop", "stop_limit"]
    time_in_force: str = "day"
    qty: Decimal
    filled_qty: Decimal
    filled_avg_price: Decimal | None = None
    limit_price: Decimal | None = None
    stop_price: Decimal | None = None
    status: OrderStatus
    submitted_at: Timestamp
    updated_at: Timestamp
    filled_at: Timestamp | None = None
    _timestamps = ("submitted_at", "updated_at", "filled_at")


class Account(_Data, kw_only=True):
    equity: Decimal
    last_equity: Decimal
    cash: Decimal
    buying_power: Decimal
    portfolio_value: Decimal
    long_market_value: Decimal
    short_market_value: Decimal
    realized_pl_today: Decimal
    currency: str = "USD"
    updated_at: Timestamp
    _timestamps = ("updated_at",)


class Fill(_Data, kw_only=True):
    id: Annotated[str, Meta(min_length=1, max_length=128)]
    order_id: Annotated[str, Meta(min_length=1, max_length=128)]
    symbol: Symbol
    side: Literal["buy", "sell"]
    _positive = ("qty", "price")
    _timestamps = ("timestamp",)
    qty: Decimal
    price: Decimal
    position_qty: Decimal
    timestamp: Timestamp


class ClosedPosition(Struct, gc=False):
    symbol: Symbol


# ------------------------------------------------------------------------- events


class _Event(Struct, kw_only=True, tag_field="type", gc=False):
    # ``seq`` is assigned by the server's journal; publishers leave it out.
    seq: int = 0
    ts: Timestamp
    # A field delta (below), which a client makes whole against what it holds before applying.
    is_delta: ClassVar[bool] = False

    def __post_init__(self) -> None:
        if not _trusted.get():
            _check_date("ts", self.ts)


class PositionEvent(_Event, tag="position", kw_only=True):
    channel: Literal["positions"] = "positions"
    data: Position


class PositionClosedEvent(_Event, tag="position_closed", kw_only=True):
    channel: Literal["positions"] = "positions"
    data: ClosedPosition


class OrderEvent(_Event, tag="order", kw_only=True):
    channel: Literal["orders"] = "orders"
    data: Order


class AccountEvent(_Event, tag="account", kw_only=True):
    channel: Literal["account"] = "account"
    data: Account


class FillEvent(_Event, tag="fill", kw_only=True):
    channel: Literal["trades"] = "trades"
    data: Fill


Event = PositionEvent | PositionClosedEvent | OrderEvent | AccountEvent | FillEvent

# ------------------------------------------------ field deltas (an optional extension)
#
# A client that subscribes with ``"deltas": true`` is sent, after the first full
# ``position``, ``order`` or ``account`` event of each key on its connection,
# events that carry only the fields that changed since the last one it was sent
# (docs/protocol.md, "Field deltas"). A change type is generated from its full
# type, so the two cannot drift: the key stays required, and every other field
# is optional, left out when unchanged.


def _change_type(full: type[_Data], key: str | None) -> type[_Data]:
    fields: list[tuple[str, Any] | tuple[str, Any, Any]] = [
        (f.name, f.type) if f.name == key else (f.name, Union[f.type, UnsetType], UNSET)  # noqa: UP007
        for f in msgspec.structs.fields(full)
    ]
    change = msgspec.defstruct(
        f"{full.__name__}Change",
        fields,
        bases=(_Data,),
        kw_only=True,
        module=__name__,
        gc=False,
        namespace={
            "__doc__": f"The fields of a {full.__name__} that changed; the others are left out.",
            "_timestamps": full._timestamps,
        },
    )
    return cast("type[_Data]", change)


if TYPE_CHECKING:  # what a type checker can know of the generated types: their keys

    class PositionChange(_Data, kw_only=True):
        symbol: str

    class OrderChange(_Data, kw_only=True):
        id: str

    class AccountChange(_Data, kw_only=True):
        pass

else:
    PositionChange = _change_type(Position, "symbol")
    OrderChange = _change_type(Order, "id")
    AccountChange = _change_type(Account, None)


class PositionDeltaEvent(_Event, tag="position_delta", kw_only=True):
    is_delta = True
    channel: Literal["positions"] = "positions"
    data: PositionChange


class OrderDeltaEvent(_Event, tag="order_delta", kw_only=True):
    is_delta = True
    channel: Literal["orders"] = "orders"
    data: OrderChange


class AccountDeltaEvent(_Event, tag="account_delta", kw_only=True):
    is_delta = True
    channel: Literal["account"] = "account"
    data: AccountChange


DeltaEvent = PositionDeltaEvent | OrderDeltaEvent | AccountDeltaEvent
# What a batch carries: full events, and deltas on a connection that asked for them.
StreamEvent = Event | DeltaEvent

# -------------------------------------------------- portfolio stream: server → client


class Welcome(Struct, tag_field="type", tag="welcome", kw_only=True):
    protocol: int = PROTOCOL_VERSION
    user_id: str
    connection_id: str
    epoch: str
    server_time: Timestamp
    batch_window_ms: int
    heartbeat_s: float
    channels: list[Channel]
    # The node that serves the stream, when several serve one cluster (left out on a single node).
    node: str | UnsetType = UNSET


class Subscribed(Struct, tag_field="type", tag="subscribed", kw_only=True):
    channels: list[Channel]
    recovered: bool
    # True when the subscribe asked for field deltas and the server sends them (left out otherwise).
    deltas: bool | UnsetType = UNSET


class Snapshot(Struct, tag_field="type", tag="snapshot", kw_only=True, omit_defaults=True):
    epoch: str
    seq: int
    server_time: Timestamp
    # Channels that are not subscribed are left out of the object.
    positions: list[Position] | UnsetType = UNSET
    orders: list[Order] | UnsetType = UNSET
    account: Account | UnsetType | None = UNSET
    fills: list[Fill] | UnsetType = UNSET


class Batch(Struct, tag_field="type", tag="batch", kw_only=True):
    epoch: str
    from_seq: int
    to_seq: int
    server_time: Timestamp
    events: list[StreamEvent]


class Heartbeat(Struct, tag_field="type", tag="heartbeat", kw_only=True):
    server_time: Timestamp
    # The seq this connection has been brought up to (last batch or snapshot).
    seq: int


class Pong(Struct, tag_field="type", tag="pong", kw_only=True):
    id: MessageId | None = None
    server_time: Timestamp


class Error(Struct, tag_field="type", tag="error", kw_only=True, omit_defaults=True):
    code: ErrorCode
    message: str
    ref: MessageId | UnsetType = UNSET


# -------------------------------------------------- portfolio stream: client → server


class ResumePoint(Struct):
    epoch: str
    seq: Annotated[int, Meta(ge=0)]


class Subscribe(Struct, tag_field="type", tag="subscribe", kw_only=True):
    id: MessageId | None = None
    # Leaving ``channels`` out subscribes to every channel.
    channels: list[str] | None = None
    resume: ResumePoint | None = None
    # Field deltas (docs/protocol.md): later events of a key carry only what changed.
    deltas: bool = False


class Unsubscribe(Struct, tag_field="type", tag="unsubscribe", kw_only=True):
    id: MessageId | None = None
    channels: list[str]


class Ping(Struct, tag_field="type", tag="ping", kw_only=True):
    id: MessageId | None = None


ClientMessage = Subscribe | Unsubscribe | Ping

# --------------------------------------------------------------- ingest (service)


class PriceTick(_Data, kw_only=True):
    _positive = ("price",)
    _timestamps = ("ts",)
    symbol: Symbol
    price: Decimal
    ts: Timestamp


class Publish(Struct, tag_field="type", tag="publish", kw_only=True):
    id: MessageId | None = None
    user_id: UserId
    events: Annotated[list[Event], Meta(min_length=1, max_length=1000)]


class Prices(Struct, tag_field="type", tag="prices", kw_only=True):
    id: MessageId | None = None
    prices: Annotated[list[PriceTick], Meta(min_length=1, max_length=5000)]


IngestMessage = Publish | Prices


class Ack(Struct, tag_field="type", tag="ack", kw_only=True, omit_defaults=True):
    id: MessageId | None = None
    seqs: list[int] | UnsetType = UNSET
    # Ids of published fills that were applied before (by an earlier publish, or earlier in this
    # one) and so changed nothing; each id once, in the publish's order. Left out when empty.
    duplicates: list[str] = []


# ------------------------------------------------------------------ admin stream


class SetStreaming(Struct, tag_field="type", tag="set_streaming", kw_only=True):
    id: MessageId | None = None
    enabled: bool


class GetStats(Struct, tag_field="type", tag="get_stats", kw_only=True):
    id: MessageId | None = None


AdminMessage = SetStreaming | GetStats


class LatencySummary(Struct, kw_only=True):
    count: int
    p50: float | None
    p95: float | None
    p99: float | None
    max: float | None


class StatsReport(Struct, kw_only=True):
    """What ``/api/admin/websocket-stats`` and the admin ``get_stats`` report."""

    health: str
    health_reasons: list[str]
    streaming_enabled: bool
    uptime_s: float
    memory_rss_bytes: int
    # Every user's replay buffer: events kept for resume, and their encoded size.
    replay_events: int = 0
    replay_bytes: int = 0
    connections_total: int
    connections_by_stream: dict[str, int]
    connections_per_user: dict[str, int]
    handshakes_refused: dict[str, int]
    events_in: int
    events_delivered: int
    batches_out: int
    snapshots_out: int
    bytes_out: int
    # 1 − frames ÷ events delivered: the share of events that did not need a frame of their own.
    batch_efficiency: float | None
    slow_consumer_resyncs: int
    # Users re-marked after price ticks (one turn each), and the turns a loop behind shed: a turn
    # taken half an interval or more late counts the next from then, not from when it was due.
    remark_turns: int = 0
    remark_turns_shed: int = 0
    latency_ms: LatencySummary
    disconnects_by_code: dict[str, int]
    # In a cluster: the node that answered, and every live node's own report (the fields above
    # are then the totals over those nodes).
    node_id: str | None = None
    nodes: dict[str, StatsReport] | None = None


class Stats(StatsReport, tag_field="type", tag="stats", kw_only=True):
    id: MessageId | None = None


ServerMessage = Welcome | Subscribed | Snapshot | Batch | Heartbeat | Pong | Error
IngestReply = Ack | Error
AdminReply = Ack | Stats | Error


# ------------------------------------------------------------------ encode/decode

_encoder = msgspec.json.Encoder(decimal_format="string")
encode = _encoder.encode

T = TypeVar("T")
TOO_DEEP = "frame is nested too deeply to decode (messages of this protocol nest a few levels)"


class FrameDecoder(Generic[T]):
    """A typed msgspec decoder whose every failure is a ``msgspec.DecodeError``.

    msgspec raises RecursionError for nesting deeper than it recurses, even
    inside a field it only skips; callers catch DecodeError for frames they
    cannot use, so one deeply nested frame must not escape them as a crash.
    """

    __slots__ = ("_decode",)

    def __init__(self, type_: Any) -> None:
        self._decode = msgspec.json.Decoder(type_).decode

    def decode(self, frame: bytes | str) -> T:
        try:
            result: T = self._decode(frame)
        except RecursionError:
            raise msgspec.DecodeError(TOO_DEEP) from None
        return result


server_message_decoder: FrameDecoder[ServerMessage] = FrameDecoder(ServerMessage)
client_message_decoder: FrameDecoder[ClientMessage] = FrameDecoder(ClientMessage)
ingest_reply_decoder: FrameDecoder[IngestReply] = FrameDecoder(IngestReply)
admin_reply_decoder: FrameDecoder[AdminReply] = FrameDecoder(AdminReply)
snapshot_decoder: FrameDecoder[Snapshot] = FrameDecoder(Snapshot)
_any_decoder = msgspec.json.Decoder()


def encode_batch(epoch: str, from_seq: int, to_seq: int, server_time: str, events: Iterable[bytes]) -> bytes:
    """``encode(Batch(...))`` for events encoded already: the same bytes, without encoding them again.

    A server encodes each event once and sends it to every connection of its
    user in frames built by this join; a test keeps the two encodings equal.
    """
    return b"".join(
        (
            b'{"type":"batch","epoch":',
            encode(epoch),
            b',"from_seq":%d,"to_seq":%d,"server_time":' % (from_seq, to_seq),
            encode(server_time),
            b',"events":[',
            b",".join(events),
            b"]}",
        )
    )


class MessageError(ValueError):
    """A frame the receiver cannot use; ``code`` is the protocol's error code."""

    def __init__(self, code: ErrorCode, message: str, ref: MessageId | None = None) -> None:
        super().__init__(message)
        self.code: ErrorCode = code
        self.message = message
        self.ref = ref

    def to_error(self) -> Error:
        return Error(code=self.code, message=self.message, ref=UNSET if self.ref is None else self.ref)


def _type_tags(union: Any) -> frozenset[str]:
    return frozenset(cls.__struct_config__.tag for cls in union.__args__)


def decode_message(frame: str | bytes, union: Any, *, check_values: bool = False) -> Any:
    """Decode one inbound frame into a member of ``union`` or raise MessageError.

    The frame is parsed once into plain values so that the error can tell
    unparseable JSON, an unknown ``type`` and an invalid field apart, and so
    that ``check_values`` can hold what publishers send to the contract's
    value rules before any of it becomes a Decimal (see ``_check_values``).
    """
    try:
        raw = _any_decoder.decode(frame)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise MessageError("invalid_json", f"frame is not valid JSON: {exc}") from None
    except RecursionError:
        raise MessageError("invalid_json", TOO_DEEP) from None
    if not isinstance(raw, dict):
        raise MessageError("invalid_message", "a frame must be one JSON object")
    ref = raw.get("id")
    if not isinstance(ref, int | str) or isinstance(ref, bool):
        ref = None
    kind = raw.get("type")
    tags = _type_tags(union)
    if not isinstance(kind, str) or kind not in tags:
        expected = ", ".join(sorted(tags))
        raise MessageError("unknown_type", f"unknown message type {kind!r}; expected one of: {expected}", ref)
    if check_values:
        problem = _check_values(raw)
        if problem is not None:
            raise MessageError("invalid_message", problem, ref)
    try:
        return msgspec.convert(raw, union)
    except msgspec.ValidationError as exc:
        raise MessageError("invalid_message", str(exc), ref) from None
    except RecursionError:
        raise MessageError("invalid_json", TOO_DEEP, ref) from None


def _decimal_fields(data: Any) -> frozenset[str]:
    return frozenset(getattr(data, "_decimals", ()))


_NONE: Final[frozenset[str]] = frozenset()


# Event type → the Decimal fields of its data, for the checks on the parsed frame.
_EVENT_DECIMALS: Final = {
    cls.__struct_config__.tag: _decimal_fields(
        next(f.type for f in msgspec.structs.fields(cls) if f.name == "data")
    )
    for cls in Event.__args__
}
_TICK_DECIMALS: Final = _decimal_fields(PriceTick)
_PLAIN_DECIMAL_HELP = (
    f"send an optional '-', 1 to {DECIMAL_INTEGER_DIGITS} digits, optionally '.' and 1 to "
    f'{DECIMAL_FRACTION_DIGITS} digits, e.g. "187.20" '
    "(no exponent, '+', spaces, '_' or other digit scripts)"
)


def _check_values(raw: dict[str, Any]) -> str | None:
    """What is wrong with the values inside event data or price ticks, if anything.

    A JSON number is refused anywhere in them (a float has lost precision at
    its source), and a Decimal field must be a string of DECIMAL_PATTERN.
    A negative zero ("-0", "-0.00") becomes the zero it means, here, so that
    none gets in (a position of qty "-0" is flat, not a row that says "-0").
    One pass over each payload: a relay sends thousands of ticks a message.
    """
    for key, field in (("events", "data"), ("prices", None)):
        items = raw.get(key)
        if not isinstance(items, list):
            continue
        for index, item in enumerate(items):
            if not isinstance(item, dict):
                continue
            if field is None:
                payload: Any = item
                decimals = _TICK_DECIMALS
            else:
                payload = item.get(field)
                kind = item.get("type")
                decimals = _EVENT_DECIMALS.get(kind, _NONE) if isinstance(kind, str) else _NONE
            if not isinstance(payload, dict):
                continue
            for name, value in payload.items():
                if type(value) is str:
                    if name not in decimals:
                        continue
                    if _plain_decimal(value) is None:
                        shown = repr(value if len(value) <= 40 else value[:40] + "...")
                        where = _where(key, index, field, name)
                        return f"{where} is {shown}, not a plain decimal: {_PLAIN_DECIMAL_HELP}"
                    if value[0] == "-" and not value.strip("-0."):
                        payload[name] = value[1:]  # a value replaced, not a key added: safe mid-loop
                elif isinstance(value, int | float) and not isinstance(value, bool):
                    where = _where(key, index, field, name)
                    return f"{where} is a JSON number; money and quantities travel as decimal strings"
    return None


def _where(key: str, index: int, field: str | None, name: str) -> str:
    return f"`$.{key}[{index}]{'.' + field if field else ''}.{name}`"


def decode_client_message(frame: str | bytes) -> Subscribe | Unsubscribe | Ping:
    result: Subscribe | Unsubscribe | Ping = decode_message(frame, ClientMessage)
    return result


def decode_ingest_message(frame: str | bytes) -> Publish | Prices:
    result: Publish | Prices = decode_message(frame, IngestMessage, check_values=True)
    return result


def decode_admin_message(frame: str | bytes) -> SetStreaming | GetStats:
    result: SetStreaming | GetStats = decode_message(frame, AdminMessage)
    return result


def validate_channels(names: Iterable[str]) -> list[Channel]:
    """Channel names in protocol order, or MessageError naming the unknown ones."""
    wanted = list(names)
    unknown = [name for name in wanted if name not in CHANNELS]
    if unknown:
        raise MessageError(
            "invalid_channel",
            f"unknown channel(s) {', '.join(map(repr, unknown))}; channels are {', '.join(CHANNELS)}",
        )
    return [name for name in CHANNELS if name in wanted]


def format_timestamp(epoch_seconds: float) -> str:
    """Wall-clock seconds as the protocol's timestamp: UTC, milliseconds, ``Z``."""
    whole = int(epoch_seconds)
    millis = round((epoch_seconds - whole) * 1000)
    if millis == 1000:
        whole, millis = whole + 1, 0
    return f"{_whole_second(whole)}.{millis:03d}Z"


@functools.lru_cache(maxsize=4)
def _whole_second(whole: int) -> str:
    # A server stamps thousands of frames a second: format each second once.
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))


def json_schema() -> dict[str, Any]:
    """The JSON Schema of every message, for the front end and other services."""
    types = [
        *ServerMessage.__args__,
        *ClientMessage.__args__,
        *IngestMessage.__args__,
        Ack,
        *AdminMessage.__args__,
        Stats,
    ]
    schemas, components = msgspec.json.schema_components(types, ref_template="#/$defs/{name}")
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": f"AlphaFlow Live wire protocol v{PROTOCOL_VERSION}",
        "oneOf": list(schemas),
        "$defs": components,
    }
