"""The client's pure parts: freshness rules, backoff, frames."""

from __future__ import annotations

import random

import numpy as np
import pytest

from alphaflow_live import frames
from alphaflow_live.backoff import Backoff
from alphaflow_live.freshness import FreshnessRules
from alphaflow_live.state import PortfolioState

from .factories import account, fill, order, position, stamp


@pytest.mark.parametrize(
    ("age", "expected"), [(0.0, "live"), (5.0, "live"), (5.01, "delayed"), (30.0, "delayed"), (30.5, "stale")]
)
def test_freshness_follows_the_age_of_the_last_data(age: float, expected: str) -> None:
    assert FreshnessRules().classify("live", last_data_at=100.0, now=100.0 + age) == expected


@pytest.mark.parametrize("status", ["offline", "closed"])
def test_a_disconnected_stream_is_offline_however_recent_its_data(status: str) -> None:
    assert FreshnessRules().classify(status, last_data_at=100.0, now=100.0) == "offline"


def test_no_data_yet_is_offline() -> None:
    assert FreshnessRules().classify("connecting", last_data_at=None, now=1.0) == "offline"


def test_freshness_thresholds_are_configurable_and_checked() -> None:
    assert FreshnessRules(live_s=1, delayed_s=2).classify("polling", 0.0, 1.5) == "delayed"
    with pytest.raises(ValueError, match="thresholds"):
        FreshnessRules(live_s=10, delayed_s=5)


def test_backoff_grows_exponentially_under_full_jitter_and_is_capped() -> None:
    backoff = Backoff(base_s=0.5, cap_s=4.0, rng=random.Random(1))
    bounds = [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    delays = [backoff.next_delay() for _ in bounds]

    assert all(0 <= d <= b for d, b in zip(delays, bounds, strict=True)), delays
    assert len(set(delays)) == len(delays), "jitter spreads the delays"


def test_backoff_starts_over_after_reset() -> None:
    backoff = Backoff(base_s=1.0, cap_s=60.0, rng=random.Random(2))
    for _ in range(10):
        backoff.next_delay()

    backoff.reset()

    assert backoff.next_delay() <= 1.0


def portfolio(symbols: int) -> PortfolioState:
    state = PortfolioState()
    state.epoch, state.seq = "e-1", 0
    events = [position(f"S{i:03d}", qty=str(i + 1)) for i in range(symbols)]
    events += [order("o-1"), account(), fill("f-1")]
    state.apply_events(stamp(events))
    return state


def test_position_frames_have_stable_columns_and_proper_dtypes() -> None:
    frame = frames.positions_frame(portfolio(3).positions, frames.RowCache(frames.POSITION_COLUMNS))

    assert list(frame.columns) == list(frames.POSITION_COLUMNS)
    assert list(frame.index) == ["S000", "S001", "S002"] and frame.index.name == "symbol"
    assert frame["qty"].dtype == np.float64 and frame["unrealized_plpc"].dtype == np.float64
    assert str(frame["updated_at"].dtype) == "datetime64[ns, UTC]"
    assert frame.loc["S002", "qty"] == 3.0


def test_empty_frames_keep_their_columns() -> None:
    empty = PortfolioState()

    positions = frames.positions_frame(empty.positions, frames.RowCache(frames.POSITION_COLUMNS))
    orders = frames.orders_frame(empty.orders, frames.RowCache(frames.ORDER_COLUMNS))

    assert list(positions.columns) == list(frames.POSITION_COLUMNS) and positions.empty
    assert list(orders.columns) == list(frames.ORDER_COLUMNS) and orders.empty
    assert frames.account_series(None).index.tolist() == list(frames.ACCOUNT_FIELDS)


def test_order_frames_keep_missing_prices_as_nan() -> None:
    frame = frames.orders_frame(portfolio(0).orders, frames.RowCache(frames.ORDER_COLUMNS))

    assert np.isnan(frame.loc["o-1", "stop_price"])
    assert frame["filled_at"].isna().all()
    assert frame.loc["o-1", "limit_price"] == 187.0


def test_the_row_cache_reconverts_only_changed_rows() -> None:
    state = portfolio(50)
    cache = frames.RowCache(frames.POSITION_COLUMNS)
    frames.positions_frame(state.positions, cache)
    state.apply_events(stamp([position("S007", qty="99")], 100))
    converted: list[str] = []
    original = frames._cell

    def spy(column: str, value: object) -> object:
        converted.append(column)
        return original(column, value)

    frames._cell = spy  # type: ignore[assignment]
    try:
        frame = frames.positions_frame(state.positions, cache)
    finally:
        frames._cell = original  # type: ignore[assignment]

    assert frame.loc["S007", "qty"] == 99.0
    assert len(converted) == len(frames.POSITION_COLUMNS), "one row converted, not fifty"


def test_equity_history_is_indexed_by_utc_time() -> None:
    frame = frames.equity_frame([("2026-01-04T14:03:11.120Z", 100.0, 50.0, 1.5)])

    assert frame.index.name == "time" and str(frame.index.dtype) == "datetime64[ns, UTC]"
    assert list(frame.columns) == ["equity", "cash", "day_pl"]
