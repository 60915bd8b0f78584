"""LatencyHistogram percentiles, Health and the stats report."""

from __future__ import annotations

import math
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alphaflow_live.protocol import LatencySummary
from alphaflow_server.stats import Health, LatencyHistogram, ServerStats

PROPERTY = settings(max_examples=200, deadline=None)
RATIO = 1.04 * (1 + 1e-9)


# ------------------------------------------------------------ LatencyHistogram


def test_empty_histogram_has_no_percentiles() -> None:
    histogram = LatencyHistogram()

    assert histogram.percentile(0.5) is None
    assert histogram.summary_ms() == LatencySummary(count=0, p50=None, p95=None, p99=None, max=None)


def test_single_value_is_every_percentile() -> None:
    histogram = LatencyHistogram()
    histogram.record(0.012)

    assert [histogram.percentile(f) for f in (0.0, 0.5, 0.99, 1.0)] == [0.012] * 4


@given(st.lists(st.tuples(st.floats(0, 10), st.integers(1, 5)), max_size=20))
@PROPERTY
def test_recording_a_value_n_times_at_once_is_recording_it_n_times(observations: list) -> None:
    at_once, one_by_one = LatencyHistogram(), LatencyHistogram()
    for seconds, times in observations:
        at_once.record(seconds, times)
        for _ in range(times):
            one_by_one.record(seconds)

    assert at_once.summary_ms() == one_by_one.summary_ms()
    assert at_once.count == one_by_one.count
    assert at_once.sum == pytest.approx(one_by_one.sum)


def test_percentiles_are_within_four_percent_above_the_true_value() -> None:
    histogram = LatencyHistogram()
    for ms in range(1, 101):
        histogram.record(ms / 1000)

    p50, p95, p99 = (histogram.percentile(f) for f in (0.50, 0.95, 0.99))

    assert p50 is not None
    assert p95 is not None
    assert p99 is not None
    assert 0.050 <= p50 <= 0.050 * RATIO, f"p50: expected ~0.050, got {p50}"
    assert 0.095 <= p95 <= 0.095 * RATIO, f"p95: expected ~0.095, got {p95}"
    assert 0.099 <= p99 <= 0.099 * RATIO, f"p99: expected ~0.099, got {p99}"


def test_percentile_never_exceeds_the_maximum() -> None:
    histogram = LatencyHistogram()
    for _ in range(10):
        histogram.record(0.0101)

    assert histogram.percentile(0.99) == 0.0101


def test_values_beyond_the_last_bucket_report_the_maximum() -> None:
    histogram = LatencyHistogram()
    histogram.record(0.001)
    histogram.record(250.0)

    assert histogram.percentile(1.0) == 250.0
    assert histogram.percentile(0.5) == pytest.approx(0.001, rel=0.04)


def test_negative_latency_counts_as_zero() -> None:
    histogram = LatencyHistogram()
    histogram.record(-0.5)

    assert (histogram.count, histogram.sum, histogram.max, histogram.percentile(0.5)) == (1, 0.0, 0.0, 0.0)


def test_summary_is_in_milliseconds_rounded_to_microseconds() -> None:
    histogram = LatencyHistogram()
    for seconds in (0.001, 0.002, 0.003, 0.250):
        histogram.record(seconds)

    summary = histogram.summary_ms()

    assert summary.count == 4
    assert summary.max == 250.0
    assert summary.p50 is not None
    assert 2.0 <= summary.p50 <= 2.0 * RATIO
    assert summary.p99 == 250.0


def test_count_sum_and_max_are_exact() -> None:
    histogram = LatencyHistogram()
    for seconds in (0.5, 0.25, 1.5):
        histogram.record(seconds)

    assert (histogram.count, histogram.sum, histogram.max) == (3, 2.25, 1.5)


def test_cumulative_buckets_are_monotonic_and_bounded_by_count() -> None:
    histogram = LatencyHistogram()
    for seconds in (0.0005, 0.002, 0.02, 0.2, 2.0, 20.0):
        histogram.record(seconds)

    got = list(histogram.cumulative_buckets([0.001, 0.01, 0.1, 1.0, 10.0]))

    assert got == [(0.001, 1), (0.01, 2), (0.1, 3), (1.0, 4), (10.0, 5)]


@PROPERTY
@given(
    st.lists(st.floats(min_value=1e-5, max_value=99.0, allow_nan=False), min_size=1, max_size=200),
    st.floats(min_value=0.0, max_value=1.0),
)
def test_percentile_is_the_true_order_statistic_rounded_up_by_at_most_one_bucket(
    values: list[float], fraction: float
) -> None:
    histogram = LatencyHistogram()
    for value in values:
        histogram.record(value)

    got = histogram.percentile(fraction)

    rank = max(1, math.ceil(fraction * len(values)))
    true = sorted(values)[rank - 1]
    assert got is not None
    assert true <= got <= true * RATIO, (
        f"p{fraction * 100:g} of {len(values)} values: expected ~{true}, got {got}"
    )
    assert got <= max(values)


# ----------------------------------------------------------------------- Health


def test_health_without_reports_is_healthy() -> None:
    health = Health()

    assert (health.status, health.reasons) == ("healthy", [])


def test_health_is_the_worst_component_state() -> None:
    health = Health()
    health.set("ingest", "degraded", "no publisher for 60 s")
    health.set("journal", "offline", "disk full")

    assert health.status == "offline"
    assert health.reasons == ["ingest: no publisher for 60 s", "journal: disk full"]


def test_a_component_reporting_healthy_again_is_forgotten() -> None:
    health = Health()
    health.set("ingest", "degraded", "slow")

    health.set("ingest", "healthy")

    assert (health.status, health.reasons) == ("healthy", [])


def test_unknown_health_status_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown health status"):
        Health().set("ingest", "sick")


# ------------------------------------------------------------------ ServerStats


def test_batch_efficiency_is_none_before_any_delivery() -> None:
    assert ServerStats(started_at=0.0).batch_efficiency() is None


def test_batch_efficiency_is_the_share_of_events_without_a_frame_of_their_own() -> None:
    stats = ServerStats(started_at=0.0, events_delivered=1000, batches_out=40)

    assert stats.batch_efficiency() == 0.96


def test_report_carries_counters_health_and_string_close_codes() -> None:
    stats = ServerStats(started_at=100.0, events_in=7, handshakes_refused=Counter({"server_full": 2}))
    stats.disconnects_by_code.update({1001: 3, 1000: 1})
    health = Health()
    health.set("ingest", "degraded", "slow")

    report = stats.report(
        now=112.5,
        health=health,
        streaming_enabled=True,
        connections_by_stream={"portfolio": 3, "ingest": 1},
        connections_per_user={"alice": 3},
    )

    assert (report.health, report.health_reasons) == ("degraded", ["ingest: slow"])
    assert (report.uptime_s, report.connections_total, report.events_in) == (12.5, 4, 7)
    assert report.handshakes_refused == {"server_full": 2}
    assert report.disconnects_by_code == {"1000": 1, "1001": 3}
    assert report.memory_rss_bytes > 0
    assert report.latency_ms.count == 0


# ------------------------------------------------------------ /metrics (defect 13)


def scrape(pending: int | None = None) -> str:
    from alphaflow_server.http_api import MetricsEndpoint
    from alphaflow_server.stats import StatsCollector

    stats = ServerStats(started_at=0.0, handshakes_refused=Counter({"too_many_pending": 3}))

    def read() -> object:
        return stats.report(
            now=1.0,
            health=Health(),
            streaming_enabled=True,
            connections_by_stream={"portfolio": 0},
            connections_per_user={},
        )

    collector = StatsCollector(read, stats.latency, None if pending is None else (lambda: pending))
    response = MetricsEndpoint(collector).response()
    assert response.status_code == 200
    return bytes(response.body or b"").decode()


@pytest.mark.parametrize(
    "name",
    ["process_cpu_seconds_total", "process_resident_memory_bytes", "process_open_fds", "process_max_fds"],
)
def test_metrics_carry_the_process_metrics(name: str) -> None:
    assert f"\n{name} " in scrape(), f"{name} missing from /metrics"


def test_metrics_carry_build_info_with_version_protocol_and_python() -> None:
    import platform

    import alphaflow_live

    expected = (
        f'alphaflow_build_info{{protocol="1",python="{platform.python_version()}",'
        f'version="{alphaflow_live.__version__}"}} 1.0'
    )

    assert expected in scrape().splitlines()


def test_metrics_carry_the_platform_collectors_python_info() -> None:
    assert "python_info{" in scrape()


def test_metrics_carry_pending_handshakes_and_their_refusals() -> None:
    text = scrape(pending=7).splitlines()

    assert "alphaflow_pending_handshakes 7.0" in text
    assert 'alphaflow_handshakes_refused_total{reason="too_many_pending"} 3.0' in text
