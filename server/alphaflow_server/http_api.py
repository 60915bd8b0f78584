"""HTTP answers on the WebSocket port: refusals with JSON bodies and the plain endpoints."""

from __future__ import annotations

import http
from collections.abc import Iterable
from typing import Any

import msgspec
from websockets.datastructures import Headers
from websockets.http11 import Response

from alphaflow_live.protocol import encode

# Query parameters that would put a credential in a URL (and so in logs and history).
TOKEN_QUERY_PARAMETERS = frozenset({"token", "access_token", "api_key", "session"})
SESSION_COOKIE = "alphaflow_session"


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


def refusal(
    status: http.HTTPStatus,
    code: str,
    message: str,
    *,
    headers: Iterable[tuple[str, str]] = (),
    **extra: Any,
) -> Response:
    """Every refused handshake: ``{"error": code, "message": text, ...}``."""
    return json_response(status, {"error": code, "message": message, **extra}, headers)


def bearer_or_cookie(headers: Headers) -> str | None:
    """The token from ``Authorization: Bearer`` or the session cookie; nothing else counts."""
    authorization = headers.get("Authorization")
    if authorization:
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
        return None
    for cookie_header in headers.get_all("Cookie"):
        for part in cookie_header.split(";"):
            name, sep, value = part.strip().partition("=")
            if sep and name == SESSION_COOKIE and value:
                return value.strip('"')
    return None
