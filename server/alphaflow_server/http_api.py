"""HTTP answers on the WebSocket port: refusals with JSON bodies and the plain endpoints."""

from __future__ import annotations

import http
from collections.abc import Iterable
from typing import Any

import msgspec
from websockets.datastructures import Headers
from websockets.http11 import Response

from alphaflow_live.protocol import encode

from .admission import Refused
from .stats import Health, StatsCollector


def response(
    status: http.HTTPStatus,
    body: bytes,
    content_type: str,
    headers: Iterable[tuple[str, str]] = (),
) -> Response:
    return Response(
        status.value,
        status.phrase,
        Headers(
            [
                ("Content-Type", content_type),
                ("Content-Length", str(len(body))),
                ("Cache-Control", "no-store"),
                *headers,
            ]
        ),
        body,
    )


def json_response(status: http.HTTPStatus, payload: Any, headers: Iterable[tuple[str, str]] = ()) -> Response:
    body = encode(payload) if isinstance(payload, msgspec.Struct) else msgspec.json.encode(payload)
    return response(status, body, "application/json", headers)


def refusal(refused: Refused) -> Response:
    """Every refused handshake or request: ``{"error": code, ...fields, "message": text}``."""
    body = {"error": refused.code.value, **dict(refused.fields), "message": refused.message}
    return json_response(refused.status, body, refused.headers)


def health_response(
    health: Health, *, streaming_enabled: bool, connections: int, uptime_s: float
) -> Response:
    """``/healthz``: 200 while the server serves at all, 503 once it is offline."""
    status = health.status
    body = {
        "status": status,
        "reasons": health.reasons,
        "streaming_enabled": streaming_enabled,
        "connections": connections,
        "uptime_s": round(uptime_s, 3),
    }
    code = http.HTTPStatus.SERVICE_UNAVAILABLE if status == "offline" else http.HTTPStatus.OK
    return json_response(code, body)


class MetricsEndpoint:
    """``/metrics``: the collector's figures in Prometheus text format.

    prometheus_client is imported at the first scrape, so a server nobody
    scrapes never loads it.
    """

    def __init__(self, collector: StatsCollector) -> None:
        self._collector = collector
        self._registry: Any = None

    def response(self) -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

        if self._registry is None:
            self._registry = CollectorRegistry(auto_describe=False)
            self._registry.register(self._collector)
        return response(http.HTTPStatus.OK, generate_latest(self._registry), CONTENT_TYPE_LATEST)
