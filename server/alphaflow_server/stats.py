"""Counters, latency histograms, health and the Prometheus export.

The hot path only bumps plain integers and one histogram; Prometheus reads
them when it scrapes, through a custom collector, so streaming never pays for
metrics it is not asked for.
"""

from __future__ import annotations

import platform
import resource
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from alphaflow_live import __version__
from alphaflow_live.metrics import LatencyHistogram
from alphaflow_live.protocol import PROTOCOL_VERSION, StatsReport

HealthStatus = Literal["healthy", "degraded", "offline"]


class Health:
    """The worst of each component's state: healthy < degraded < offline."""

    _ORDER: ClassVar[dict[str, int]] = {"healthy": 0, "degraded": 1, "offline": 2}

    def __init__(self) -> None:
        self._components: dict[str, tuple[str, str]] = {}

    def set(self, component: str, status: HealthStatus, reason: str = "") -> None:
        if status not in self._ORDER:
            raise ValueError(f"unknown health status {status!r}")
        if status == "healthy":
            self._components.pop(component, None)
        else:
            self._components[component] = (status, reason)

    @property
    def status(self) -> str:
        worst = "healthy"
        for status, _ in self._components.values():
            if self._ORDER[status] > self._ORDER[worst]:
                worst = status
        return worst

    @property
    def reasons(self) -> list[str]:
        return [f"{name}: {reason}" for name, (_, reason) in sorted(self._components.items())]


class FailureTally:
    """Failures counted by cause since the last success: the first of each cause is the one to log."""

    def __init__(self) -> None:
        self._counts: Counter[str] = Counter()
        # When the first failure since the last success happened (as the caller spells time).
        self.since: str | None = None

    def add(self, cause: str, at: str) -> bool:
        """Count one failure; True when it is the first of its cause."""
        if not self._counts:
            self.since = at
        self._counts[cause] += 1
        return self._counts[cause] == 1

    @property
    def total(self) -> int:
        return self._counts.total()

    def clear(self) -> int:
        """Start over after a success; how many failures there were."""
        total = self.total
        self._counts.clear()
        self.since = None
        return total


def rss_bytes() -> int:
    """Current resident set size (Linux /proc; the peak elsewhere)."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            pages = int(statm.read().split()[1])
        return pages * resource.getpagesize()
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@dataclass
class ServerStats:
    started_at: float
    events_in: int = 0
    events_delivered: int = 0
    batches_out: int = 0
    snapshots_out: int = 0
    bytes_out: int = 0
    slow_consumer_resyncs: int = 0
    handshakes_refused: Counter[str] = field(default_factory=Counter)
    disconnects_by_code: Counter[int] = field(default_factory=Counter)
    # Ingest received → batch frame handed to the socket.
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)

    def batch_efficiency(self) -> float | None:
        if self.events_delivered == 0:
            return None
        return round(1.0 - self.batches_out / self.events_delivered, 6)

    def report(
        self,
        *,
        now: float,
        health: Health,
        streaming_enabled: bool,
        connections_by_stream: dict[str, int],
        connections_per_user: dict[str, int],
        replay: tuple[int, int] = (0, 0),
        remark_turns: tuple[int, int] = (0, 0),
    ) -> StatsReport:
        return StatsReport(
            health=health.status,
            health_reasons=health.reasons,
            streaming_enabled=streaming_enabled,
            uptime_s=round(now - self.started_at, 3),
            memory_rss_bytes=rss_bytes(),
            replay_events=replay[0],
            replay_bytes=replay[1],
            connections_total=sum(connections_by_stream.values()),
            connections_by_stream=connections_by_stream,
            connections_per_user=connections_per_user,
            handshakes_refused=dict(self.handshakes_refused),
            events_in=self.events_in,
            events_delivered=self.events_delivered,
            batches_out=self.batches_out,
            snapshots_out=self.snapshots_out,
            bytes_out=self.bytes_out,
            batch_efficiency=self.batch_efficiency(),
            slow_consumer_resyncs=self.slow_consumer_resyncs,
            remark_turns=remark_turns[0],
            remark_turns_shed=remark_turns[1],
            latency_ms=self.latency.summary_ms(),
            disconnects_by_code={str(code): n for code, n in sorted(self.disconnects_by_code.items())},
        )


_PROMETHEUS_LATENCY_EDGES = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0]


def build_labels() -> dict[str, str]:
    """What ``alphaflow_build_info`` says about the running server."""
    return {"version": __version__, "protocol": str(PROTOCOL_VERSION), "python": platform.python_version()}


class StatsCollector:
    """A prometheus_client collector that reads a StatsReport when scraped."""

    def __init__(
        self, read: Any, histogram: LatencyHistogram, pending_handshakes: Callable[[], int] | None = None
    ) -> None:
        self._read = read
        self._histogram = histogram
        self._pending_handshakes = pending_handshakes

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        report: StatsReport = self._read()
        labels = build_labels()
        build = GaugeMetricFamily(
            "alphaflow_build_info", "The server's version, protocol and Python; always 1", labels=list(labels)
        )
        build.add_metric(list(labels.values()), 1.0)
        yield build
        if self._pending_handshakes is not None:
            pending = GaugeMetricFamily(
                "alphaflow_pending_handshakes", "Sockets accepted that have not sent a whole request yet"
            )
            pending.add_metric([], self._pending_handshakes())
            yield pending
        up = GaugeMetricFamily("alphaflow_up", "1 healthy, 0.5 degraded, 0 offline")
        up.add_metric([], {"healthy": 1.0, "degraded": 0.5}.get(report.health, 0.0))
        yield up
        streaming = GaugeMetricFamily("alphaflow_streaming_enabled", "The streaming feature flag")
        streaming.add_metric([], 1.0 if report.streaming_enabled else 0.0)
        yield streaming
        connections = GaugeMetricFamily(
            "alphaflow_connections", "Open WebSocket connections", labels=["stream"]
        )
        for stream, count in sorted(report.connections_by_stream.items()):
            connections.add_metric([stream], count)
        yield connections
        for name, value, help_text in (
            ("alphaflow_events_in", report.events_in, "Events accepted from ingest and sources"),
            ("alphaflow_events_delivered", report.events_delivered, "Events handed to batchers"),
            ("alphaflow_batches_out", report.batches_out, "Batch frames sent"),
            ("alphaflow_remark_turns", report.remark_turns, "Users re-marked after price ticks"),
            (
                "alphaflow_remark_turns_shed",
                report.remark_turns_shed,
                "Re-mark turns shed: taken half an interval or more late",
            ),
            ("alphaflow_snapshots_out", report.snapshots_out, "Snapshot frames sent"),
            (
                "alphaflow_bytes_out",
                report.bytes_out,
                "Bytes of stream frames sent (before compression)",
            ),
            (
                "alphaflow_slow_consumer_resyncs",
                report.slow_consumer_resyncs,
                "Backlogs discarded for a snapshot",
            ),
        ):
            counter = CounterMetricFamily(name, help_text)
            counter.add_metric([], value)
            yield counter
        refused = CounterMetricFamily("alphaflow_handshakes_refused", "Refused handshakes", labels=["reason"])
        for reason, count in sorted(report.handshakes_refused.items()):
            refused.add_metric([reason], count)
        yield refused
        disconnects = CounterMetricFamily("alphaflow_disconnects", "Closed connections", labels=["code"])
        for code, count in sorted(report.disconnects_by_code.items()):
            disconnects.add_metric([code], count)
        yield disconnects
        rss = GaugeMetricFamily("alphaflow_memory_rss_bytes", "Resident set size")
        rss.add_metric([], report.memory_rss_bytes)
        yield rss
        replay = GaugeMetricFamily("alphaflow_replay_bytes", "Encoded size of every user's replay buffer")
        replay.add_metric([], report.replay_bytes)
        yield replay
        replay_events = GaugeMetricFamily("alphaflow_replay_events", "Events kept for resume, every user")
        replay_events.add_metric([], report.replay_events)
        yield replay_events
        latency = HistogramMetricFamily(
            "alphaflow_delivery_latency_seconds", "Ingest received to batch frame sent"
        )
        buckets = [
            (str(edge), count)
            for edge, count in self._histogram.cumulative_buckets(_PROMETHEUS_LATENCY_EDGES)
        ]
        buckets.append(("+Inf", self._histogram.count))
        latency.add_metric([], buckets, sum_value=self._histogram.sum)
        yield latency
