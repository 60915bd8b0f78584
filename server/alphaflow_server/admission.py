"""Admission: what the server does with a handshake or an HTTP request (no I/O).

``decide`` reads the method, the request target, the headers and the
server's state (tokens, allowed origins, the streaming flag, the connection
counts) and answers with exactly one decision; it never raises and changes
nothing, so the shell in ``app`` applies it (counts the connection or the
refusal, builds the response). The checks run in this order, and the first
that fails is the answer:

1. a credential in the URL (a query parameter of ``TOKEN_QUERY_PARAMETERS``,
   any case): 400, whatever the path, and the target is never echoed;
2. a path outside ``ROUTES``: 404;
3. the public endpoints (``/healthz``, ``/metrics``) need no token and hold
   nothing private, so they skip the Origin check; any method but GET: 405;
4. an ``Origin`` header that is neither the server's own (the scheme of the
   connection, the host and port of ``Host``) nor one of ``allowed_origins``:
   403, so a page elsewhere cannot ride on a browser's session cookie.
   From here on, answers on the REST routes carry CORS headers for that origin;
5. ``OPTIONS`` on a REST route: the preflight (204); a method the route does
   not take: 405 with ``Allow``;
6. ``DELETE`` on the session route clears the cookie, with no token needed
   (a rotated token must still be able to log out);
7. no credential (bearer header or session cookie; the session route takes
   the bearer header only): 401; an unknown one: 401;
8. a token of another role than the route's: 403;
9. the portfolio stream while streaming is switched off: 503 with ``fallback``
   (the REST snapshot keeps being served);
10. the connection limits: the total (503) before the per-user one (429),
    which only the portfolio stream counts.
"""

from __future__ import annotations

import http
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
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
    SESSION_PATH,
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
# How long a browser may cache a preflight's answer.
PREFLIGHT_MAX_AGE_S = 600
DEFAULT_PORTS = {"http": 80, "https": 443}
Header = tuple[str, str]


@dataclass(frozen=True, slots=True)
class StreamRoute:
    stream: Stream
    role: Role
    # Whether the connection counts towards its user's connection limit.
    per_user_limit: bool = False
    # Whether the streaming feature flag switches it off.
    switchable: bool = False
    methods: tuple[str, ...] = ("GET",)
    cors: bool = False


@dataclass(frozen=True, slots=True)
class RestRoute:
    endpoint: RestEndpoint
    role: Role
    methods: tuple[str, ...] = ("GET",)
    # Browsers read it with fetch: CORS headers and preflights.
    cors: bool = True


@dataclass(frozen=True, slots=True)
class SessionRoute:
    """Turns a bearer token into the session cookie (POST) and clears it (DELETE), for browsers."""

    role: Role
    methods: tuple[str, ...] = ("POST", "DELETE")
    cors: bool = True


@dataclass(frozen=True, slots=True)
class PublicRoute:
    """Anyone may ask, with no token (what the bind address exposes is the operator's choice)."""

    endpoint: PublicEndpoint
    methods: tuple[str, ...] = ("GET",)
    cors: bool = False


Route = StreamRoute | RestRoute | SessionRoute | PublicRoute

ROUTES: dict[str, Route] = {
    PORTFOLIO_PATH: StreamRoute("portfolio", "user", per_user_limit=True, switchable=True),
    INGEST_PATH: StreamRoute("ingest", "service"),
    ADMIN_PATH: StreamRoute("admin", "admin"),
    SNAPSHOT_PATH: RestRoute("snapshot", "user"),
    STATS_PATH: RestRoute("stats", "admin"),
    SESSION_PATH: SessionRoute("user"),
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
    """Answer a REST endpoint for ``principal``, with ``cors`` among the response's headers."""

    endpoint: RestEndpoint
    principal: Principal
    cors: tuple[Header, ...] = ()


@dataclass(frozen=True, slots=True)
class ServeSession:
    """Set the session cookie to ``token`` (``principal`` logs in) or, with no principal, clear it."""

    principal: Principal | None
    token: str = field(default="", repr=False)
    # The cookie is ``Secure`` when the browser reached the server over TLS (or a proxy's TLS).
    secure: bool = False
    cors: tuple[Header, ...] = ()


@dataclass(frozen=True, slots=True)
class Preflight:
    """Answer ``OPTIONS``: 204 with ``headers`` (CORS for a browser's preflight, else ``Allow``)."""

    headers: tuple[Header, ...]


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
    headers: tuple[Header, ...] = ()
    # Body fields besides ``error`` and ``message`` (what to do instead).
    fields: tuple[tuple[str, str], ...] = ()


Decision = OpenStream | ServeRest | ServeSession | Preflight | ServePublic | Refused


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
    method: str = "GET",
    allowed_origins: Collection[str] = (),
    secure: bool = False,
) -> Decision:
    """The one decision for a ``method`` request to ``target`` (path and query), as of ``now``.

    ``allowed_origins`` holds ``canonical_origin`` forms; ``secure`` says the
    request came over TLS (the scheme of the server's own origin).
    """
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
        if method not in route.methods:
            return _method_not_allowed(method, path, route, ())
        return ServePublic(route.endpoint)
    origins = headers.get_all("Origin")
    cors: tuple[Header, ...] = ()
    if origins:
        own = canonical_origin(f"{'https' if secure else 'http'}://{_single(headers, 'Host')}")
        origin = canonical_origin(origins[0]) if len(origins) == 1 else None
        if origin is None or (origin != own and origin not in allowed_origins):
            return Refused(
                http.HTTPStatus.FORBIDDEN,
                Refusal.ORIGIN_NOT_ALLOWED,
                "the page's origin (its Origin header) may not use this server: serve the page "
                "from the server's own origin, or list its origin in --allowed-origins",
            )
        if route.cors:
            # The page's exact spelling: browsers compare it byte for byte.
            cors = (
                ("Access-Control-Allow-Origin", origins[0].strip()),
                ("Access-Control-Allow-Credentials", "true"),
                ("Vary", "Origin"),
            )
    if method == "OPTIONS" and route.cors:
        return Preflight(_preflight_headers(route, cors))
    if method not in route.methods:
        return _method_not_allowed(method, path, route, cors)
    if isinstance(route, SessionRoute) and method == "DELETE":
        return ServeSession(None, secure=_tls_to_the_browser(headers, secure), cors=cors)
    token = bearer_or_cookie(headers, cookie=not isinstance(route, SessionRoute))
    if token is None:
        return Refused(
            http.HTTPStatus.UNAUTHORIZED,
            Refusal.MISSING_TOKEN,
            "no credentials: send 'Authorization: Bearer <token>' (create one with alphaflow-live users add)",
            headers=(("WWW-Authenticate", "Bearer"), *cors),
        )
    principal = authenticate(token)
    if principal is None:
        return Refused(
            http.HTTPStatus.UNAUTHORIZED,
            Refusal.INVALID_TOKEN,
            "token rejected: unknown token (run alphaflow-live users add, or users rotate)",
            headers=(("WWW-Authenticate", 'Bearer error="invalid_token"'), *cors),
        )
    if principal.role != route.role:
        return Refused(
            http.HTTPStatus.FORBIDDEN,
            Refusal.WRONG_ROLE,
            f"{path} needs a token of role '{route.role}'; this token has role '{principal.role}'",
            headers=cors,
        )
    if isinstance(route, RestRoute):
        return ServeRest(route.endpoint, principal, cors)
    if isinstance(route, SessionRoute):
        return ServeSession(principal, token, secure=_tls_to_the_browser(headers, secure), cors=cors)
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
        return per_user_refusal(principal.name, capacity.max_per_user)
    return OpenStream(route.stream, principal, route.per_user_limit, now)


def per_user_refusal(user: str, max_per_user: int) -> Refused:
    """A user at the per-user limit: on this node, or (in a cluster) on all nodes together."""
    return Refused(
        http.HTTPStatus.TOO_MANY_REQUESTS,
        Limit.PER_USER,
        f"user '{user}' already has {max_per_user} connections (the per-user limit); close one first",
        headers=(("Retry-After", str(RETRY_AFTER_S)),),
    )


def canonical_origin(text: str) -> str | None:
    """``scheme://host:port`` (lower case, the port always spelled out) of an origin, or None.

    Only http and https origins, with no user, path (but "/"), query or
    fragment: what browsers send, and what ``--allowed-origins`` lists. The
    opaque origin ``null`` (sandboxed frames, files) is no origin.
    """
    try:
        url = urlsplit(text.strip())
        port = url.port
    except ValueError:
        return None
    scheme = url.scheme.lower()
    host = url.hostname
    if (
        scheme not in DEFAULT_PORTS
        or not host
        or "@" in url.netloc
        or url.path not in ("", "/")
        or url.query
        or url.fragment
        or "#" in text
        or "?" in text
    ):
        return None
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}:{DEFAULT_PORTS[scheme] if port is None else port}"


def allow_header(route: Route) -> str:
    """The methods a route takes, for ``Allow``."""
    return ", ".join((*route.methods, "OPTIONS") if route.cors else route.methods)


def _method_not_allowed(method: str, path: str, route: Route, cors: tuple[Header, ...]) -> Refused:
    # The method is echoed only when it is a plain token: it is the client's text.
    shown = method if method.isascii() and method.isalpha() and len(method) <= 16 else "this method"
    return Refused(
        http.HTTPStatus.METHOD_NOT_ALLOWED,
        Refusal.METHOD_NOT_ALLOWED,
        f"{shown} is not allowed on {path}; use {' or '.join(route.methods)}",
        headers=(("Allow", allow_header(route)), *cors),
    )


def _tls_to_the_browser(headers: Headers, secure: bool) -> bool:
    """Whether the browser reached us over TLS: this connection, or a proxy that terminated it.

    ``X-Forwarded-Proto`` is trusted for this alone: all it can do is make the
    cookie ``Secure``, which only narrows where a browser sends it.
    """
    return secure or _single(headers, "X-Forwarded-Proto").strip().lower() == "https"


def _single(headers: Headers, name: str) -> str:
    """The header's value when it appears once; "" when it is missing or repeated (which one to trust?)."""
    values = headers.get_all(name)
    return values[0] if len(values) == 1 else ""


def _preflight_headers(route: Route, cors: tuple[Header, ...]) -> tuple[Header, ...]:
    if not cors:  # OPTIONS from no browser page: which methods there are
        return (("Allow", allow_header(route)),)
    return (
        *cors,
        ("Access-Control-Allow-Methods", ", ".join(route.methods)),
        ("Access-Control-Allow-Headers", "Authorization"),
        ("Access-Control-Max-Age", str(PREFLIGHT_MAX_AGE_S)),
    )


def bearer_or_cookie(headers: Headers, *, cookie: bool = True) -> str | None:
    """The token from ``Authorization: Bearer`` or (unless not ``cookie``) the session cookie.

    Nothing else counts. An ``Authorization`` header of another scheme is no
    credential, even with a cookie beside it; neither are several
    ``Authorization`` headers (which one would count is anyone's guess).
    """
    authorizations = [value for value in headers.get_all("Authorization") if value]
    if authorizations:
        scheme, _, token = authorizations[0].strip().partition(" ")
        if len(authorizations) == 1 and scheme.lower() == "bearer" and token.strip():
            return token.strip()
        return None
    if not cookie:
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
