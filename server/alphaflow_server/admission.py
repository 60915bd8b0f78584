"""Admission: what the server does with a handshake or an HTTP request (no I/O).

``decide`` reads the request target, the headers and the server's state
(tokens, the streaming flag, the connection counts) and answers with exactly
one decision; it never raises and changes nothing, so the shell in ``app``
applies it (counts the connection or the refusal, builds the response). The
checks run in this order, and the first that fails is the answer:

1. a credential in the URL (a query parameter of ``TOKEN_QUERY_PARAMETERS``,
   any case): 400, whatever the path, and the target is never echoed;
2. the public endpoints (``/healthz``, ``/metrics``) need no token;
3. a path outside ``ROUTES``: 404;
4. no credential (bearer header or session cookie): 401; an unknown one: 401;
5. a token of another role than the route's: 403;
6. the portfolio stream while streaming is switched off: 503 with ``fallback``
   (the REST snapshot keeps being served);
7. the connection limits: the total (503) before the per-user one (429),
   which only the portfolio stream counts.
"""

from __future__ import annotations

import http
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol
from urllib.parse import parse_qsl, urlsplit

from websockets.datastructures import Headers

from alphaflow_live.codes import (
    ADMIN_PATH,
    HEALTH_PATH,
    INGEST_PATH,
    METRICS_PATH,
    PORTFOLIO_PATH,
    SESSION_COOKIE,
    SNAPSHOT_PATH,
    STATS_PATH,
    TOKEN_QUERY_PARAMETERS,
    Refusal,
)

from .auth import Principal, Role
from .limits import Limit

Stream = Literal["portfolio", "ingest", "admin"]
RestEndpoint = Literal["snapshot", "stats"]
PublicEndpoint = Literal["healthz", "metrics"]
Authenticate = Callable[[str], Principal | None]

RETRY_AFTER_S = 5


@dataclass(frozen=True, slots=True)
class StreamRoute:
    stream: Stream
    role: Role
    # Whether the connection counts towards its user's connection limit.
    per_user_limit: bool = False
    # Whether the streaming feature flag switches it off.
    switchable: bool = False


@dataclass(frozen=True, slots=True)
class RestRoute:
    endpoint: RestEndpoint
    role: Role


@dataclass(frozen=True, slots=True)
class PublicRoute:
    """Anyone may ask, with no token (what the bind address exposes is the operator's choice)."""

    endpoint: PublicEndpoint


Route = StreamRoute | RestRoute | PublicRoute

ROUTES: dict[str, Route] = {
    PORTFOLIO_PATH: StreamRoute("portfolio", "user", per_user_limit=True, switchable=True),
    INGEST_PATH: StreamRoute("ingest", "service"),
    ADMIN_PATH: StreamRoute("admin", "admin"),
    SNAPSHOT_PATH: RestRoute("snapshot", "user"),
    STATS_PATH: RestRoute("stats", "admin"),
    HEALTH_PATH: PublicRoute("healthz"),
    METRICS_PATH: PublicRoute("metrics"),
}


@dataclass(frozen=True, slots=True)
class OpenStream:
    """Upgrade to the WebSocket ``stream``; the shell counts it until the socket closes."""

    stream: Stream
    principal: Principal
    per_user_limit: bool
    opened_at: float


@dataclass(frozen=True, slots=True)
class ServeRest:
    """Answer a REST endpoint for ``principal``."""

    endpoint: RestEndpoint
    principal: Principal


@dataclass(frozen=True, slots=True)
class ServePublic:
    """Answer a public endpoint."""

    endpoint: PublicEndpoint


@dataclass(frozen=True, slots=True)
class Refused:
    """Refuse with ``status`` and the JSON body ``{"error": code, **fields, "message": message}``."""

    status: http.HTTPStatus
    code: Refusal
    message: str
    headers: tuple[tuple[str, str], ...] = ()
    # Body fields besides ``error`` and ``message`` (what to do instead).
    fields: tuple[tuple[str, str], ...] = ()


Decision = OpenStream | ServeRest | ServePublic | Refused


class Capacity(Protocol):
    """The connection counts admission reads (``limits.ConnectionLimiter`` is one)."""

    @property
    def max_total(self) -> int: ...

    @property
    def max_per_user(self) -> int: ...

    def check(self, user_id: str, *, per_user_limit: bool = True) -> Refusal | None: ...


def decide(
    target: str,
    headers: Headers,
    now: float,
    *,
    authenticate: Authenticate,
    streaming_enabled: bool,
    capacity: Capacity,
) -> Decision:
    """The one decision for a request to ``target`` (path and query), as of ``now``."""
    path, query = _split(target)
    if _has_token_parameter(query):
        return Refused(
            http.HTTPStatus.BAD_REQUEST,
            Refusal.TOKEN_IN_URL,
            "credentials in the URL are refused; send 'Authorization: Bearer <token>' "
            f"or the {SESSION_COOKIE} cookie",
        )
    route = ROUTES.get(path)
    if route is None:
        return Refused(http.HTTPStatus.NOT_FOUND, Refusal.NOT_FOUND, f"no endpoint at {path}")
    if isinstance(route, PublicRoute):
        return ServePublic(route.endpoint)
    token = bearer_or_cookie(headers)
    if token is None:
        return Refused(
            http.HTTPStatus.UNAUTHORIZED,
            Refusal.MISSING_TOKEN,
            "no credentials: send 'Authorization: Bearer <token>' (create one with alphaflow-live users add)",
            headers=(("WWW-Authenticate", "Bearer"),),
        )
    principal = authenticate(token)
    if principal is None:
        return Refused(
            http.HTTPStatus.UNAUTHORIZED,
            Refusal.INVALID_TOKEN,
            "token rejected: unknown token (run alphaflow-live users add, or users rotate)",
            headers=(("WWW-Authenticate", 'Bearer error="invalid_token"'),),
        )
    if principal.role != route.role:
        return Refused(
            http.HTTPStatus.FORBIDDEN,
            Refusal.WRONG_ROLE,
            f"{path} needs a token of role '{route.role}'; this token has role '{principal.role}'",
        )
    if isinstance(route, RestRoute):
        return ServeRest(route.endpoint, principal)
    if route.switchable and not streaming_enabled:
        return Refused(
            http.HTTPStatus.SERVICE_UNAVAILABLE,
            Refusal.STREAMING_DISABLED,
            f"streaming is switched off by the operator; poll {SNAPSHOT_PATH}",
            fields=(("fallback", SNAPSHOT_PATH),),
        )
    refused = capacity.check(principal.name, per_user_limit=route.per_user_limit)
    if refused is Limit.TOTAL:
        return Refused(
            http.HTTPStatus.SERVICE_UNAVAILABLE,
            refused,
            f"the server holds its maximum of {capacity.max_total} connections; retry later",
            headers=(("Retry-After", str(RETRY_AFTER_S)),),
        )
    if refused is not None:
        return Refused(
            http.HTTPStatus.TOO_MANY_REQUESTS,
            refused,
            f"user '{principal.name}' already has {capacity.max_per_user} connections "
            "(the per-user limit); close one first",
            headers=(("Retry-After", str(RETRY_AFTER_S)),),
        )
    return OpenStream(route.stream, principal, route.per_user_limit, now)


def bearer_or_cookie(headers: Headers) -> str | None:
    """The token from ``Authorization: Bearer`` or the session cookie; nothing else counts.

    An ``Authorization`` header of another scheme is no credential, even with a
    cookie beside it; neither are several ``Authorization`` headers (which one
    would count is anyone's guess).
    """
    authorizations = [value for value in headers.get_all("Authorization") if value]
    if authorizations:
        scheme, _, token = authorizations[0].strip().partition(" ")
        if len(authorizations) == 1 and scheme.lower() == "bearer" and token.strip():
            return token.strip()
        return None
    for cookie_header in headers.get_all("Cookie"):
        for part in cookie_header.split(";"):
            name, sep, value = part.strip().partition("=")
            if sep and name == SESSION_COOKIE and value:
                return value.strip('"')
    return None


def _split(target: str) -> tuple[str, str]:
    """The path and the query of a request target."""
    try:
        url = urlsplit(target)
    except ValueError:
        # Not a URL at all (say "//[" in the path): take it as a path, so it meets the 404.
        path, _, rest = target.partition("?")
        return path, rest.partition("#")[0]
    return url.path, url.query


def _has_token_parameter(query: str) -> bool:
    return any(name.lower() in TOKEN_QUERY_PARAMETERS for name, _ in parse_qsl(query, keep_blank_values=True))
