"""Alpaca's JSON → protocol events: exact decimals, signed shorts, statuses, fills, ticks."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import msgpack
import pytest

from alphaflow_live.protocol import FillEvent, OrderEvent
from alphaflow_server.sources import alpaca_map

NOW = "2026-01-04T14:03:11.120Z"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("2026-01-04T14:03:11.120234Z", "2026-01-04T14:03:11.120234Z"),
        ("2026-01-04T14:03:11.123456789Z", "2026-01-04T14:03:11.123456789Z"),
        ("2026-01-04T14:03:11Z", "2026-01-04T14:03:11.000Z"),
        ("2026-01-04T14:03:11.5+00:00", "2026-01-04T14:03:11.500Z"),
        ("2026-01-04T09:03:11.120-05:00", "2026-01-04T14:03:11.120Z"),
    ],
)
def test_alpaca_times_become_protocol_timestamps(raw: str, expected: str) -> None:
    assert alpaca_map.timestamp(raw) == expected


def test_a_market_data_time_becomes_a_protocol_timestamp() -> None:
    moment = msgpack.Timestamp.from_datetime(datetime(2026, 1, 4, 14, 3, 11, 120000, tzinfo=UTC))

    assert alpaca_map.timestamp(moment) == "2026-01-04T14:03:11.120Z"


def position_json(**overrides: str) -> dict[str, str]:
    base = {
        "symbol": "AAPL",
        "qty": "10",
        "side": "long",
        "avg_entry_price": "187.2",
        "current_price": "191.05",
        "market_value": "1910.5",
        "cost_basis": "1872",
        "unrealized_pl": "38.5",
        "unrealized_plpc": "0.0205662393",
        "unrealized_intraday_pl": "12.3",
        "change_today": "0.0051",
        "asset_class": "us_equity",
    }
    return {**base, **overrides}


def test_a_position_keeps_the_brokers_exact_strings() -> None:
    event = alpaca_map.position_event(position_json(), now=NOW)

    assert event.data.avg_entry_price == Decimal("187.2")
    assert event.data.unrealized_plpc == Decimal("0.0205662393")
    assert (event.data.qty, event.data.side, event.ts) == (Decimal("10"), "long", NOW)


@pytest.mark.parametrize("qty", ["-5", "5"])
def test_a_short_position_has_a_negative_qty(qty: str) -> None:
    event = alpaca_map.position_event(position_json(qty=qty, side="short", market_value="-955.25"), now=NOW)

    assert (event.data.qty, event.data.side) == (Decimal("-5"), "short")


def order_json(**overrides: object) -> dict[str, object]:
    base = {
        "id": "0d8e-1",
        "client_order_id": "my-1",
        "symbol": "AAPL",
        "side": "buy",
        "type": "limit",
        "order_type": "limit",
        "time_in_force": "day",
        "qty": "10",
        "filled_qty": "4",
        "filled_avg_price": "187.1",
        "limit_price": "187.2",
        "stop_price": None,
        "status": "partially_filled",
        "submitted_at": "2026-01-04T14:00:00.1Z",
        "updated_at": "2026-01-04T14:03:11.120234Z",
        "filled_at": None,
    }
    return {**base, **overrides}


@pytest.mark.parametrize(
    ("alpaca", "ours"),
    [
        ("pending_new", "new"),
        ("accepted", "accepted"),
        ("done_for_day", "expired"),
        ("pending_replace", "pending_cancel"),
        ("filled", "filled"),
        ("something_new", "accepted"),
    ],
)
def test_alpaca_order_statuses_fold_into_the_protocols(alpaca: str, ours: str) -> None:
    assert alpaca_map.order(order_json(status=alpaca), now=NOW).status == ours


def test_an_order_keeps_prices_and_times() -> None:
    event = alpaca_map.order_event(order_json(), now=NOW)

    assert event.data.filled_avg_price == Decimal("187.1") and event.data.stop_price is None
    assert event.data.submitted_at == "2026-01-04T14:00:00.100Z"
    assert event.ts == event.data.updated_at == "2026-01-04T14:03:11.120234Z"


def test_a_notional_order_without_qty_shows_what_filled() -> None:
    assert alpaca_map.order(order_json(qty=None, filled_qty="0.5"), now=NOW).qty == Decimal("0.5")


def test_a_fill_update_becomes_a_fill_and_the_orders_state() -> None:
    update = {
        "stream": "trade_updates",
        "data": {
            "event": "partial_fill",
            "execution_id": "ex-1",
            "order": order_json(),
            "timestamp": "2026-01-04T14:03:11.2Z",
            "price": "187.05",
            "qty": "4",
            "position_qty": "14",
        },
    }

    events, execution_id = alpaca_map.trade_update_events(update, now=NOW)

    fill, order = events
    assert execution_id == "ex-1"
    assert isinstance(fill, FillEvent) and isinstance(order, OrderEvent)
    assert (fill.data.id, fill.data.qty, fill.data.price, fill.data.position_qty) == (
        "ex-1",
        Decimal("4"),
        Decimal("187.05"),
        Decimal("14"),
    )
    assert fill.ts == order.ts == "2026-01-04T14:03:11.200Z"


def test_a_non_fill_update_is_only_the_orders_state() -> None:
    update = {"data": {"event": "canceled", "order": order_json(status="canceled"), "timestamp": NOW}}

    events, execution_id = alpaca_map.trade_update_events(update, now=NOW)

    assert execution_id is None
    assert [type(e).__name__ for e in events] == ["OrderEvent"]
    assert events[0].data.status == "canceled"


def test_a_feed_price_float_becomes_the_decimal_it_meant() -> None:
    tick = alpaca_map.price_tick({"T": "t", "S": "AAPL", "p": 191.1, "s": 100, "t": None}, now=NOW)

    assert tick.price == Decimal("191.1") and str(tick.price) == "191.1"
    assert tick.ts == NOW


def test_an_account_keeps_the_engines_realized_pl() -> None:
    raw = {
        "equity": "100068.0",
        "last_equity": "100000",
        "cash": "96003",
        "buying_power": "192000.5",
        "portfolio_value": "100068.0",
        "long_market_value": "4065",
        "short_market_value": "0",
        "currency": "USD",
    }

    event = alpaca_map.account_event(raw, realized_pl_today=Decimal("50"), now=NOW)

    assert (event.data.cash, event.data.equity, event.data.realized_pl_today) == (
        Decimal("96003"),
        Decimal("100068.0"),
        Decimal("50"),
    )
