"""A fake Alpaca broker on loopback, for integration tests that drive alpaca-py's real clients.

``FakeAlpaca`` runs in a thread of its own with its own asyncio loop, like a remote service,
and serves everything on one ephemeral 127.0.0.1 port with ``websockets``:

* REST, answered from ``process_request``: ``GET /v2/account``, ``/v2/positions[/{symbol}]``,
  ``/v2/orders[/{id}]`` (``status=open|closed|all``, ``symbols=A,B``, ``limit``, ``direction``),
  authenticated by the ``APCA-API-KEY-ID`` / ``APCA-API-SECRET-KEY`` headers. GET only: the
  websockets HTTP parser refuses other methods before this code sees them.
* ``/stream``: the trading stream, JSON in binary frames (as paper-api sends it).
* ``/v2/iex``, ``/v2/sip``, ``/v2/test``: the stock data stream, msgpack.

Pass ``trading_url``, ``stream_url`` and ``data_url`` as alpaca-py's ``url_override``. The data
stream uses its override verbatim (no feed appended), so ``data_url`` ends in ``/v2/iex``.
Test-facing methods are thread-safe and return promptly: pushes are queued on the fake's loop
and return how many connections they went to. Keys are never logged or echoed.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import itertools
import json
import logging
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

import msgpack
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

T = TypeVar("T")
Json = dict[str, Any]

DEFAULT_KEY_ID = "PKFAKE00000000000000"
DEFAULT_SECRET = "fake-secret-not-a-real-one"
TRADING_PATH = "/stream"
DATA_PATHS = frozenset({"/v2/iex", "/v2/sip", "/v2/test"})
DATA_CHANNELS = ("trades", "quotes", "bars", "updatedBars", "dailyBars", "statuses", "lulds")
CLOSED_STATUSES = frozenset({"filled", "canceled", "expired", "rejected", "replaced"})
INT_FIELDS = frozenset({"daytrade_count", "options_approved_level", "options_trading_level"})

# websockets logs request headers and frames (so keys) at DEBUG; this logger never goes that low.
_log = logging.getLogger("tests.fake_alpaca")
_log.setLevel(logging.WARNING)


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def num(value: Any) -> Any:
    """Alpaca sends decimals as strings: numbers become plain decimal strings, the rest passes."""
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
        return value
    d = Decimal(str(value))
    if d.as_tuple().exponent < -10:  # type: ignore[operator]
        d = round(d, 10)
    return format(d.normalize(), "f")


def asset_id(symbol: str) -> str:
    """The same symbol always gets the same asset id."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"fake-alpaca/{symbol}"))


def order_json(
    symbol: str = "AAPL", side: str = "buy", qty: Any = 10, *, status: str = "new", **fields: Any
) -> Json:
    """An order as GET /v2/orders and trade updates carry it; ``fields`` set or override any key
    (filled_qty, filled_avg_price, limit_price, order_type, time_in_force, id, client_order_id, ...).
    Numbers become decimal strings; a "filled" order's filled_qty defaults to ``qty``."""
    at = fields.get("created_at") or now_iso()
    order_type = fields.pop("order_type", fields.get("type", "market"))
    # fmt: off
    order = {
        "id": str(uuid.uuid4()), "client_order_id": str(uuid.uuid4()),
        "created_at": at, "updated_at": at, "submitted_at": at,
        "filled_at": at if status == "filled" else None, "canceled_at": at if status == "canceled" else None,
        "expired_at": None, "expires_at": None, "failed_at": None,
        "replaced_at": None, "replaced_by": None, "replaces": None,
        "asset_id": asset_id(symbol), "symbol": symbol, "asset_class": "us_equity",
        "notional": None, "qty": qty, "filled_qty": qty if status == "filled" else 0,
        "filled_avg_price": None,
        "order_class": "simple", "order_type": order_type, "type": order_type, "side": side,
        "position_intent": "buy_to_open" if side == "buy" else "sell_to_close",
        "time_in_force": "day", "limit_price": None, "stop_price": None, "status": status,
        "extended_hours": False, "legs": None, "trail_percent": None, "trail_price": None, "hwm": None,
    }
    # fmt: on
    order.update(fields)
    money = ("qty", "filled_qty", "filled_avg_price", "limit_price", "stop_price", "notional")
    return {k: num(v) if k in money else v for k, v in order.items()}


def default_account() -> Json:
    # fmt: off
    return {
        "id": str(uuid.uuid5(uuid.NAMESPACE_URL, "fake-alpaca/account")), "account_number": "PA3FAKE00001",
        "status": "ACTIVE", "crypto_status": "ACTIVE", "currency": "USD",
        "created_at": "2024-01-02T15:00:00.000000Z", "balance_asof": "2024-01-01",
        "cash": "100000", "equity": "100000", "last_equity": "100000", "portfolio_value": "100000",
        "buying_power": "200000", "regt_buying_power": "200000",
        "non_marginable_buying_power": "100000", "options_buying_power": "100000",
        "long_market_value": "0", "short_market_value": "0", "position_market_value": "0",
        "initial_margin": "0", "maintenance_margin": "0", "last_maintenance_margin": "0", "sma": "0",
        "accrued_fees": "0", "pending_transfer_in": "0", "multiplier": "2", "shorting_enabled": True,
        "pattern_day_trader": False, "trading_blocked": False, "transfers_blocked": False,
        "account_blocked": False, "trade_suspended_by_user": False, "daytrade_count": 0,
        "options_approved_level": 0, "options_trading_level": 0,
    }
    # fmt: on


def position_json(
    symbol: str, qty: Any, avg_entry_price: Any, current_price: Any, lastday_price: Any = None
) -> Json:
    """A position with the P&L fields derived the way Alpaca reports them (numbers as strings)."""
    q, avg, cur = Decimal(str(qty)), Decimal(str(avg_entry_price)), Decimal(str(current_price))
    last = cur if lastday_price is None else Decimal(str(lastday_price))
    value, cost, day_base = q * cur, q * avg, q * last

    def ratio(a: Decimal, b: Decimal) -> Decimal:
        return a / abs(b) if b else Decimal(0)

    # fmt: off
    return {
        "asset_id": asset_id(symbol), "symbol": symbol, "exchange": "NASDAQ", "asset_class": "us_equity",
        "asset_marginable": True, "side": "long" if q >= 0 else "short",
        "qty": num(q), "qty_available": num(q), "avg_entry_price": num(avg),
        "market_value": num(value), "cost_basis": num(cost),
        "unrealized_pl": num(value - cost), "unrealized_plpc": num(ratio(value - cost, cost)),
        "unrealized_intraday_pl": num(value - day_base),
        "unrealized_intraday_plpc": num(ratio(value - day_base, day_base)),
        "current_price": num(cur), "lastday_price": num(last), "change_today": num(ratio(cur - last, last)),
    }
    # fmt: on


class FakeAlpaca:
    """Alpaca's trading REST API, trading stream and stock data stream, on one loopback port."""

    order_json = staticmethod(order_json)

    def __init__(self, key_id: str = DEFAULT_KEY_ID, secret: str = DEFAULT_SECRET) -> None:
        self.key_id, self.secret = key_id, secret
        self.port = 0
        self.auth_failures: Counter[str] = Counter()  # rejected keys by surface: rest, trading, data
        self._lock = threading.Lock()  # guards everything the test thread reads or writes
        self._account = default_account()
        self._positions: dict[str, Json] = {}
        self._orders: dict[str, Json] = {}
        self._rest_calls: list[str] = []
        self._auths: Counter[str] = Counter()
        self._open: dict[ServerConnection, str] = {}  # every open stream connection: "trading" | "data"
        self._listening: set[ServerConnection] = set()  # trading connections listening to trade_updates
        self._data: dict[ServerConnection, dict[str, set[str]]] = {}  # authenticated data conns -> subs
        self._last_update: bytes | None = None
        self._trade_ids = itertools.count(1)
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop = asyncio.Event()
        self._thread = threading.Thread(target=self._run, name="fake-alpaca", daemon=True)

    # ------------------------------------------------------------------ lifecycle and URLs

    def __enter__(self) -> FakeAlpaca:
        self._thread.start()
        if not self._ready.wait(10) or not self.port:
            raise TimeoutError("FakeAlpaca did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def _run(self) -> None:
        try:
            self._loop.run_until_complete(self._main())
        finally:
            self._ready.set()
            self._loop.close()

    async def _main(self) -> None:
        server = await serve(self._handler, "127.0.0.1", 0, process_request=self._rest, logger=_log)
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        await self._stop.wait()
        server.close()  # sends close frames to stream clients still connected
        try:
            await asyncio.wait_for(server.wait_closed(), 2)
        except TimeoutError:
            self._abort(list(self._open))

    @property
    def trading_url(self) -> str:
        """``url_override`` for TradingClient."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def stream_url(self) -> str:
        """``url_override`` for TradingStream."""
        return f"ws://127.0.0.1:{self.port}{TRADING_PATH}"

    @property
    def data_url(self) -> str:
        """``url_override`` for StockDataStream, IEX feed (``/v2/sip`` is served too)."""
        return f"ws://127.0.0.1:{self.port}/v2/iex"

    # ------------------------------------------------------------------ state the test controls

    def set_account(self, **fields: Any) -> Json:
        """Override account fields (numbers become decimal strings); equity also sets portfolio_value."""
        if "equity" in fields:
            fields.setdefault("portfolio_value", fields["equity"])
        with self._lock:
            self._account.update({k: v if k in INT_FIELDS else num(v) for k, v in fields.items()})
            return dict(self._account)

    def set_position(
        self, symbol: str, qty: Any, avg_entry_price: Any, current_price: Any, lastday_price: Any = None
    ) -> Json:
        position = position_json(symbol, qty, avg_entry_price, current_price, lastday_price)
        with self._lock:
            self._positions[symbol] = position
        return position

    def remove_position(self, symbol: str) -> None:
        with self._lock:
            self._positions.pop(symbol, None)

    def add_order(self, order: Json | None = None, **fields: Any) -> Json:
        """Store an order (a dict from ``order_json``, or its arguments); the same id replaces it."""
        order = order if order is not None else order_json(**fields)
        with self._lock:
            self._orders[order["id"]] = order
        return order

    def remove_order(self, order_id: str) -> None:
        with self._lock:
            self._orders.pop(order_id, None)

    # ------------------------------------------------------------------ pushes

    def trade_update(
        self,
        event: str,
        order: Json,
        execution_id: str | None = None,
        qty: Any = None,
        price: Any = None,
        position_qty: Any = None,
        timestamp: str | None = None,
    ) -> int:
        """Push one update to every listening trading-stream client; returns how many got it.

        ``order`` is also stored (replacing the same id), so GET /v2/orders agrees with the stream.
        Fills default ``qty``/``price`` to the order's filled_qty/filled_avg_price. Positions and
        the account are not touched: set them as the test needs.
        """
        if event in ("fill", "partial_fill"):
            qty = order.get("filled_qty") if qty is None else qty
            price = order.get("filled_avg_price") if price is None else price
        data = {"event": event, "execution_id": execution_id or str(uuid.uuid4()), "order": order}
        data["timestamp"] = timestamp or now_iso()
        extras = {"price": price, "qty": qty, "position_qty": position_qty}
        data |= {k: num(v) for k, v in extras.items() if v is not None}
        self.add_order(order)
        payload = json.dumps({"stream": "trade_updates", "data": data}).encode()
        with self._lock:
            self._last_update = payload
        return self._on_loop(lambda: self._fanout(self._listening, payload))

    def redeliver_last(self) -> int:
        """Send the last trade update again, as Alpaca may after a reconnect."""
        with self._lock:
            payload = self._last_update
        if payload is None:
            raise RuntimeError("no trade update was sent yet")
        return self._on_loop(lambda: self._fanout(self._listening, payload))

    def trade(self, symbol: str, price: float, size: int = 100, *, exchange: str = "V") -> int:
        """Push a trade to the data-stream clients subscribed to ``symbol`` (or ``*``)."""
        now = msgpack.Timestamp.from_unix_nano(time.time_ns())
        msg = {"T": "t", "S": symbol, "i": next(self._trade_ids), "x": exchange, "p": float(price)}
        payload = msgpack.packb([msg | {"s": int(size), "c": ["@"], "z": "C", "t": now}])

        def send() -> int:
            return self._fanout([ws for ws, s in self._data.items() if {symbol, "*"} & s["trades"]], payload)

        return self._on_loop(send)

    def drop_trading_stream(self) -> int:
        """Abort every trading-stream connection (no close frame); alpaca-py reconnects."""
        return self._on_loop(
            lambda: self._abort([ws for ws, kind in self._open.items() if kind == "trading"])
        )

    def drop_data_stream(self) -> int:
        """Abort every data-stream connection (no close frame); alpaca-py reconnects and resubscribes."""
        return self._on_loop(lambda: self._abort([ws for ws, kind in self._open.items() if kind == "data"]))

    def _on_loop(self, fn: Callable[[], T]) -> T:
        async def call() -> T:
            return fn()

        return asyncio.run_coroutine_threadsafe(call(), self._loop).result(timeout=5)

    def _fanout(self, targets: Iterable[ServerConnection], payload: bytes) -> int:
        targets = list(targets)
        for ws in targets:  # tasks start in creation order, so every connection gets pushes in order
            task = asyncio.ensure_future(self._send(ws, payload))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return len(targets)

    @staticmethod
    async def _send(ws: ServerConnection, payload: bytes) -> None:
        with contextlib.suppress(ConnectionClosed):
            await ws.send(payload)

    @staticmethod
    def _abort(connections: list[ServerConnection]) -> int:
        for ws in connections:
            ws.transport.abort()
        return len(connections)

    # ------------------------------------------------------------------ introspection

    @property
    def rest_calls(self) -> list[str]:
        """Paths (without query) of every REST request, authorized or not."""
        with self._lock:
            return list(self._rest_calls)

    @property
    def trading_connections(self) -> int:
        """Trading-stream authentications that succeeded so far (one more per reconnect)."""
        with self._lock:
            return self._auths["trading"]

    @property
    def trading_listeners(self) -> int:
        """Open trading-stream connections listening to trade_updates: pushes reach these."""
        with self._lock:
            return len(self._listening)

    @property
    def data_connections(self) -> int:
        """Data-stream authentications that succeeded so far."""
        with self._lock:
            return self._auths["data"]

    @property
    def data_subscriptions(self) -> set[str]:
        """Symbols whose trades an open data-stream connection is subscribed to."""
        return self.subscriptions("trades")

    def subscriptions(self, channel: str) -> set[str]:
        with self._lock:
            return set().union(*(subs[channel] for subs in self._data.values()))

    @property
    def orders(self) -> list[Json]:
        with self._lock:
            return list(self._orders.values())

    def wait_for(self, predicate: Callable[[], T], timeout: float = 10.0, what: str = "condition") -> T:
        """Poll ``predicate`` until it is truthy and return it; blocks the calling thread."""
        deadline = time.monotonic() + timeout
        while not (result := predicate()):
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
            time.sleep(0.01)
        return result

    async def async_wait_for(
        self, predicate: Callable[[], T], timeout: float = 10.0, what: str = "condition"
    ) -> T:
        """``wait_for`` for a coroutine: sleeps on the caller's loop (where alpaca-py's streams run)."""
        deadline = time.monotonic() + timeout
        while not (result := predicate()):
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
            await asyncio.sleep(0.01)
        return result

    # ------------------------------------------------------------------ REST

    def _valid(self, key: Any, secret: Any) -> bool:
        if not isinstance(key, str) or not isinstance(secret, str):
            return False
        key_ok = hmac.compare_digest(key.encode(), self.key_id.encode())
        return hmac.compare_digest(secret.encode(), self.secret.encode()) and key_ok

    def _rest(self, conn: ServerConnection, request: Request) -> Response | None:
        url = urlsplit(request.path)
        if url.path == TRADING_PATH or url.path in DATA_PATHS:
            return None  # go on with the WebSocket handshake
        headers = request.headers
        with self._lock:
            self._rest_calls.append(url.path)
            if not self._valid(headers.get("APCA-API-KEY-ID"), headers.get("APCA-API-SECRET-KEY")):
                self.auth_failures["rest"] += 1
                return self._json(conn, 401, {"code": 40110000, "message": "request is not authorized"})
            query = {k: v[-1] for k, v in parse_qs(url.query).items()}
            match url.path.strip("/").split("/"):
                case ["v2", "account"]:
                    return self._json(conn, 200, self._account)
                case ["v2", "positions"]:
                    return self._json(conn, 200, [self._positions[s] for s in sorted(self._positions)])
                case ["v2", "positions", symbol]:
                    return self._json_or_404(conn, self._positions.get(symbol), "position does not exist")
                case ["v2", "orders"]:
                    return self._json(conn, 200, self._query_orders(query))
                case ["v2", "orders", order_id]:
                    return self._json_or_404(conn, self._orders.get(order_id), "order not found")
        return self._json_or_404(conn, None, "endpoint not found")

    def _query_orders(self, query: dict[str, str]) -> list[Json]:
        status = query.get("status", "open")
        symbols = set(query["symbols"].split(",")) if query.get("symbols") else None
        orders = [
            o
            for o in self._orders.values()
            if (status == "all" or (o["status"] in CLOSED_STATUSES) == (status == "closed"))
            and (symbols is None or o["symbol"] in symbols)
        ]
        orders.sort(key=lambda o: o["created_at"], reverse=query.get("direction", "desc") == "desc")
        return orders[: int(query.get("limit", 50))]

    @staticmethod
    def _json(conn: ServerConnection, status: int, body: Any) -> Response:
        response = conn.respond(status, json.dumps(body))  # also sets Connection: close
        del response.headers["Content-Type"]
        response.headers["Content-Type"] = "application/json; charset=utf-8"
        return response

    def _json_or_404(self, conn: ServerConnection, body: Json | None, message: str) -> Response:
        if body is None:
            return self._json(conn, 404, {"code": 40410000, "message": message})
        return self._json(conn, 200, body)

    # ------------------------------------------------------------------ streams

    async def _handler(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        trading = urlsplit(ws.request.path).path == TRADING_PATH
        self._open[ws] = "trading" if trading else "data"
        try:
            await (self._serve_trading(ws) if trading else self._serve_data(ws))
        except ConnectionClosed:
            pass
        finally:
            with self._lock:
                self._open.pop(ws, None)
                self._listening.discard(ws)
                self._data.pop(ws, None)

    async def _serve_trading(self, ws: ServerConnection) -> None:
        async def reply(stream: str, data: Json) -> None:
            await ws.send(json.dumps({"stream": stream, "data": data}).encode())

        authed = False
        async for raw in ws:
            try:
                msg = json.loads(raw)
                action, data = msg.get("action"), msg.get("data") or {}
            except (ValueError, AttributeError):
                await reply("error", {"error_message": "invalid syntax"})
                continue
            if action == "authenticate":
                authed = self._valid(data.get("key_id"), data.get("secret_key"))
                with self._lock:
                    (self._auths if authed else self.auth_failures)["trading"] += 1
                status = "authorized" if authed else "unauthorized"
                await reply("authorization", {"status": status, "action": "authenticate"})
                if not authed:
                    await ws.close(1008, "unauthorized")
            elif action == "listen" and authed:
                streams = [s for s in data.get("streams") or [] if s == "trade_updates"]
                with self._lock:
                    (self._listening.add if streams else self._listening.discard)(ws)
                await reply("listening", {"streams": streams})
            elif action == "listen":
                await reply("authorization", {"status": "unauthorized", "action": "listen"})
            else:
                await reply("error", {"error_message": "unknown action"})

    async def _serve_data(self, ws: ServerConnection) -> None:
        async def reply(msg: Json) -> None:
            await ws.send(msgpack.packb([msg]))

        await reply({"T": "success", "msg": "connected"})
        async for raw in ws:
            try:
                msg = msgpack.unpackb(raw) if isinstance(raw, bytes) else json.loads(raw)
                action = msg.get("action")
            except (ValueError, AttributeError, msgpack.UnpackException):
                await reply({"T": "error", "code": 400, "msg": "invalid syntax"})
                continue
            if action == "auth":
                authed = self._valid(msg.get("key"), msg.get("secret"))
                with self._lock:
                    (self._auths if authed else self.auth_failures)["data"] += 1
                    if authed:
                        self._data[ws] = {channel: set() for channel in DATA_CHANNELS}
                if not authed:
                    await reply({"T": "error", "code": 402, "msg": "auth failed"})
                    await ws.close(1008, "auth failed")
                    return
                await reply({"T": "success", "msg": "authenticated"})
            elif action in ("subscribe", "unsubscribe") and ws in self._data:
                with self._lock:
                    subs = self._data[ws]
                    for channel in DATA_CHANNELS:
                        change = set(msg.get(channel) or ())
                        subs[channel] = (
                            subs[channel] | change if action == "subscribe" else subs[channel] - change
                        )
                    ack = {channel: sorted(symbols) for channel, symbols in subs.items()}
                ack["corrections"] = ack["cancelErrors"] = ack["trades"]
                await reply({"T": "subscription", **ack})
            elif action in ("subscribe", "unsubscribe"):
                await reply({"T": "error", "code": 401, "msg": "not authenticated"})
            else:
                await reply({"T": "error", "code": 400, "msg": "invalid syntax"})
