"""Alpaca as a live source, through alpaca-py's own clients.

Per account: the REST ``TradingClient`` reconciles (account, positions, open
orders, published as authoritative) at start, after every trading-stream
(re)connect and every ``reconcile_s``; the ``TradingStream`` turns trade
updates into order and fill events; the ``StockDataStream`` turns trades of
the held symbols into price ticks. Everything enters through the SourcePort
(the server's ingest path), the only part of the server a feed sees. Keys
come from environment variables only and never reach a log.

Traps of alpaca-py 0.44 handled here: its streams run inside our loop via
``_run_forever()`` and stop with ``stop_ws()``; its blocking calls (REST, and
``subscribe_*``/``unsubscribe_*``, which block on the stream's own loop) run in
threads; data-stream handlers are registered before it starts (it spins the
CPU until one exists); a failed stream login retries forever without telling
anyone, so bad keys are detected with REST (401/403).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alphaflow_live.protocol import (
    ClosedPosition,
    Event,
    PositionClosedEvent,
    Prices,
    Publish,
    format_timestamp,
)

from . import alpaca_map
from .port import Source, SourcePort

log = logging.getLogger("alphaflow.server.alpaca")


@dataclass(frozen=True, slots=True)
class AlpacaAccount:
    """One Alpaca account streamed into one AlphaFlow user; keys named, never held here."""

    user_id: str
    key_env: str = "APCA_API_KEY_ID"
    secret_env: str = "APCA_API_SECRET_KEY"  # noqa: S105 - the variable's name, not a secret
    paper: bool = True


@dataclass(frozen=True, slots=True)
class AlpacaOptions:
    feed: str = "iex"
    trading_url: str | None = None
    stream_url: str | None = None
    data_url: str | None = None
    reconcile_s: float = 60.0


class AlpacaConfigError(ValueError):
    """The accounts file or the environment does not say how to reach Alpaca."""


def load_accounts(path: Path) -> list[AlpacaAccount]:
    """``[[account]]`` tables with ``user``, ``key_env``, ``secret_env`` and optional ``paper``."""
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise AlpacaConfigError(f"cannot read the Alpaca accounts file {path}: {exc}") from None
    accounts = []
    for index, entry in enumerate(data.get("account", [])):
        try:
            accounts.append(
                AlpacaAccount(
                    user_id=str(entry["user"]),
                    key_env=str(entry["key_env"]),
                    secret_env=str(entry["secret_env"]),
                    paper=bool(entry.get("paper", True)),
                )
            )
        except KeyError as exc:
            raise AlpacaConfigError(f"{path}: account #{index + 1} needs {exc.args[0]!r}") from None
    if not accounts:
        raise AlpacaConfigError(f"{path} names no [[account]]")
    return accounts


def credentials(account: AlpacaAccount) -> tuple[str, str]:
    key, secret = os.environ.get(account.key_env), os.environ.get(account.secret_env)
    missing = [name for name, value in ((account.key_env, key), (account.secret_env, secret)) if not value]
    if missing:
        raise AlpacaConfigError(
            f"Alpaca keys for user '{account.user_id}' missing: set {' and '.join(missing)}"
        )
    return str(key), str(secret)


class AccountFeed:
    """One account: REST reconcile, trade updates and market data, fed into the port."""

    def __init__(self, port: SourcePort, account: AlpacaAccount, options: AlpacaOptions) -> None:
        from alpaca.data.enums import DataFeed
        from alpaca.data.live import StockDataStream
        from alpaca.trading.client import TradingClient
        from alpaca.trading.stream import TradingStream

        self.port = port
        self.account = account
        self.options = options
        self.user_id = account.user_id
        self.component = f"source:alpaca:{account.user_id}"
        key, secret = credentials(account)
        # raw_data=True everywhere: dicts with the broker's exact decimal strings.
        self.rest: Any = TradingClient(
            key, secret, paper=account.paper, raw_data=True, url_override=options.trading_url
        )
        feed = self

        class _TradingStream(TradingStream):
            async def _start_ws(self) -> None:
                await super()._start_ws()  # type: ignore[no-untyped-call]
                feed.on_trading_connected()

            async def _wait_before_reconnect(self, retries: int) -> None:
                feed.on_stream_failure(retries)
                await super()._wait_before_reconnect(retries)

        self.trading: Any = _TradingStream(
            key,
            secret,
            paper=account.paper,
            raw_data=True,
            url_override=options.stream_url,  # type: ignore[arg-type]
        )
        data_feed = DataFeed.SIP if options.feed == "sip" else DataFeed.IEX
        self.data: Any = StockDataStream(
            key, secret, raw_data=True, feed=data_feed, url_override=options.data_url
        )
        self.trading.subscribe_trade_updates(self._on_trade_update)
        self._subscribed: set[str] = set()
        self._subscription_lock = asyncio.Lock()
        self._holding_something = asyncio.Event()
        self._reconcile_soon = asyncio.Event()
        self._healthy_rest = False
        # The problem last logged, so that a failure repeating every reconcile is logged once.
        self._problem: str | None = None

    # ---------------------------------------------------------------- running

    async def run(self) -> None:
        # Bad keys or an unreachable broker: keep serving the last known state and retry.
        while not await self.reconcile():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._reconcile_soon.wait(), self.options.reconcile_s)
            self._reconcile_soon.clear()
        tasks = [
            asyncio.create_task(self.trading._run_forever(), name=f"alpaca-trading-{self.user_id}"),
            asyncio.create_task(self._run_data(), name=f"alpaca-data-{self.user_id}"),
            asyncio.create_task(self._reconcile_loop(), name=f"alpaca-reconcile-{self.user_id}"),
        ]
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(self.trading.stop_ws(), self.data.stop_ws(), return_exceptions=True)
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _run_data(self) -> None:
        # The SDK spins the CPU until a handler exists, so start it only once a
        # symbol is held (subscribing before the start only registers the handler).
        await self._holding_something.wait()
        await self.data._run_forever()

    async def _reconcile_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._reconcile_soon.wait(), self.options.reconcile_s)
            self._reconcile_soon.clear()
            await self.reconcile()

    def on_trading_connected(self) -> None:
        log.info("event=alpaca_stream_connected user=%s", self.user_id)
        self._reconcile_soon.set()  # a fill may have happened while it was down

    def on_stream_failure(self, retries: int) -> None:
        log.warning("event=alpaca_stream_retry user=%s attempt=%d", self.user_id, retries)
        if retries % 3 == 0:
            self._reconcile_soon.set()  # which also tells bad keys apart from a network fault

    # -------------------------------------------------------------- reconcile

    async def reconcile(self) -> bool:
        """Publish the broker's account, positions and open orders; False when REST failed."""
        from alpaca.common.exceptions import APIError
        from alpaca.trading.enums import QueryOrderStatus
        from alpaca.trading.requests import GetOrdersRequest

        try:
            account, positions, orders = await asyncio.gather(
                asyncio.to_thread(self.rest.get_account),
                asyncio.to_thread(self.rest.get_all_positions),
                asyncio.to_thread(
                    self.rest.get_orders, GetOrdersRequest(status=QueryOrderStatus.OPEN, limit=500)
                ),
            )
        except APIError as exc:
            status = getattr(exc, "status_code", None)
            if status in (401, 403):
                reason = (
                    f"Alpaca refused the keys (HTTP {status}): check {self.account.key_env} and "
                    f"{self.account.secret_env}"
                )
            else:
                reason = f"Alpaca REST failed (HTTP {status})"
            return self._unhealthy(reason)
        except Exception as exc:  # network errors come in many shapes from requests
            return self._unhealthy(f"Alpaca REST unreachable: {type(exc).__name__}")
        now = format_timestamp(time.time())
        events: list[Event] = [alpaca_map.position_event(p, now=now) for p in positions]
        gone = self.port.holdings(self.user_id) - {p["symbol"] for p in positions}
        events += [PositionClosedEvent(ts=now, data=ClosedPosition(symbol=s)) for s in sorted(gone)]
        events += [alpaca_map.order_event(o, now=now) for o in orders]
        realized = self.port.realized_pl_today(self.user_id)
        events.append(alpaca_map.account_event(account, realized_pl_today=realized, now=now))
        await self.port.ingest(Publish(user_id=self.user_id, events=events))
        if not self._healthy_rest:
            log.info(
                "event=alpaca_reconciled user=%s positions=%d open_orders=%d",
                self.user_id,
                len(positions),
                len(orders),
            )
        self._healthy_rest = True
        self._problem = None
        self.port.report_health(self.component, "healthy")
        await self._sync_subscriptions()
        return True

    def _unhealthy(self, reason: str) -> bool:
        if reason != self._problem:
            log.error("event=alpaca_unavailable user=%s reason=%r", self.user_id, reason)
        self._problem = reason
        self._healthy_rest = False
        self.port.report_health(self.component, "degraded", reason)
        return False

    # ---------------------------------------------------------------- streams

    async def _on_trade_update(self, raw: dict[str, Any]) -> None:
        now = format_timestamp(time.time())
        try:
            events, execution_id = alpaca_map.trade_update_events(raw, now=now)
        except (KeyError, ValueError, ArithmeticError) as exc:
            log.warning("event=alpaca_bad_update user=%s error=%s", self.user_id, exc)
            return
        if execution_id is not None and self.port.has_fill(self.user_id, execution_id):
            events = events[1:]  # a redelivered execution: the order state still counts, the fill once
        await self.port.ingest(Publish(user_id=self.user_id, events=events))
        await self._sync_subscriptions()

    async def _on_market_trade(self, raw: dict[str, Any]) -> None:
        try:
            tick = alpaca_map.price_tick(raw, now=format_timestamp(time.time()))
        except (KeyError, ValueError, ArithmeticError):
            return
        await self.port.ingest(Prices(prices=[tick]))

    async def _sync_subscriptions(self) -> None:
        """Trades of exactly the held symbols."""
        async with self._subscription_lock:
            held = set(self.port.holdings(self.user_id))
            new, gone = sorted(held - self._subscribed), sorted(self._subscribed - held)
            # The SDK's subscribe calls block on its own loop: run them in a thread.
            if new:
                await asyncio.to_thread(self.data.subscribe_trades, self._on_market_trade, *new)
            if gone:
                await asyncio.to_thread(self.data.unsubscribe_trades, *gone)
            self._subscribed = held
            if held:
                self._holding_something.set()


def alpaca_source(accounts: Sequence[AlpacaAccount], options: AlpacaOptions) -> Source:
    """The server source: one AccountFeed per account, all through the port's ``ingest``."""

    async def run(port: SourcePort) -> None:
        feeds = []
        for account in accounts:
            try:
                feeds.append(AccountFeed(port, account, options))
            except AlpacaConfigError as exc:
                log.error("event=alpaca_config_error reason=%r", str(exc))
                port.report_health(f"source:alpaca:{account.user_id}", "degraded", str(exc))
        await asyncio.gather(*(feed.run() for feed in feeds))

    return run
