"""HTTP answers on the WebSocket port: refusals with JSON bodies, the plain endpoints, the session cookie."""

from __future__ import annotations

import http
from collections.abc import Iterable, Mapping
from typing import Any

import msgspec
from websockets.datastructures import Headers
from websockets.http11 import Response

from alphaflow_live.codes import SESSION_COOKIE
from alphaflow_live.protocol import encode

from .admission import Preflight, Refused, ServeSession
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


def no_content(headers: Iterable[tuple[str, str]]) -> Response:
    """204: no body, so no Content-Type or Content-Length either."""
    status = http.HTTPStatus.NO_CONTENT
    return Response(status.value, status.phrase, Headers([("Cache-Control", "no-store"), *headers]), b"")


def preflight_response(preflight: Preflight) -> Response:
    return no_content(preflight.headers)


def session_response(session: ServeSession) -> Response:
    """``Set-Cookie`` with the session token, or one that clears it (``Max-Age=0``).

    ``HttpOnly``: no script reads it; ``SameSite=Strict``: a browser sends it
    only from pages of the server's own site, so no other site's page can
    ride on it; ``Path=/``: every stream and endpoint. No ``Max-Age`` when it
    is set: it lasts as long as the browser session, and the token's own life
    (``users rotate``) still bounds it.
    """
    value = session.token if session.principal is not None else ""
    attributes = ["HttpOnly", "SameSite=Strict", "Path=/"]
    if session.principal is None:
        attributes.insert(0, "Max-Age=0")
    if session.secure:
        attributes.append("Secure")
    cookie = "; ".join([f"{SESSION_COOKIE}={value}", *attributes])
    return no_content([("Set-Cookie", cookie), *session.cors])


def json_response(status: http.HTTPStatus, payload: Any, headers: Iterable[tuple[str, str]] = ()) -> Response:
    body = encode(payload) if isinstance(payload, msgspec.Struct) else msgspec.json.encode(payload)
    return response(status, body, "application/json", headers)


def refusal(refused: Refused) -> Response:
    """Every refused handshake or request: ``{"error": code, ...fields, "message": text}``."""
    body = {"error": refused.code.value, **dict(refused.fields), "message": refused.message}
    return json_response(refused.status, body, refused.headers)


def health_response(
    health: Health,
    *,
    streaming_enabled: bool,
    connections: int,
    uptime_s: float,
    cluster: Mapping[str, Any] | None = None,
) -> Response:
    """``/healthz``: 200 while the server serves at all, 503 once it is offline. A cluster node
    adds ``cluster``'s fields (its id, whether Redis is reachable, the partitions it owns)."""
    status = health.status
    body: dict[str, Any] = {
        "status": status,
        "reasons": health.reasons,
        "streaming_enabled": streaming_enabled,
        "connections": connections,
        "uptime_s": round(uptime_s, 3),
        **(cluster or {}),
    }
    code = http.HTTPStatus.SERVICE_UNAVAILABLE if status == "offline" else http.HTTPStatus.OK
    return json_response(code, body)


class MetricsEndpoint:
    """``/metrics``: the collector's figures, the process's and Python's, in Prometheus text format.

    prometheus_client is imported at the first scrape, so a server nobody
    scrapes never loads it. The registry is the server's own (not the global
    one), so two servers in one process never mix their figures.
    """

    def __init__(self, collector: StatsCollector) -> None:
        self._collector = collector
        self._registry: Any = None

    def response(self) -> Response:
        from prometheus_client import (
            CONTENT_TYPE_LATEST,
            CollectorRegistry,
            PlatformCollector,
            ProcessCollector,
            generate_latest,
        )

        if self._registry is None:
            self._registry = CollectorRegistry(auto_describe=False)
            self._registry.register(self._collector)
            # process_*: CPU, RSS, open and maximum file descriptors, start time (Linux /proc).
            ProcessCollector(registry=self._registry)
            PlatformCollector(registry=self._registry)
        return response(http.HTTPStatus.OK, generate_latest(self._registry), CONTENT_TYPE_LATEST)
