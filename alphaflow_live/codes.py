"""Every literal of the contract that is not a message: paths, the default URL, close and refusal codes.

Part of the wire layer (shared/PROTOCOL.md): the server, the kernel-side
client, the command line and the tests take these names from here, so a code
or a path is written once. Message shapes live in ``protocol``.
"""

from __future__ import annotations

import enum
from typing import Final, NamedTuple

DEFAULT_HOST: Final = "127.0.0.1"
DEFAULT_PORT: Final = 8765

# WebSocket streams
PORTFOLIO_PATH: Final = "/ws/portfolio"
INGEST_PATH: Final = "/ws/ingest"
ADMIN_PATH: Final = "/ws/admin"
# Plain HTTP on the same port
SNAPSHOT_PATH: Final = "/api/portfolio/snapshot"
STATS_PATH: Final = "/api/admin/websocket-stats"
HEALTH_PATH: Final = "/healthz"
METRICS_PATH: Final = "/metrics"
# POST (with a user's bearer token) sets the session cookie for browsers; DELETE clears it.
SESSION_PATH: Final = "/api/session"

DEFAULT_URL: Final = f"ws://{DEFAULT_HOST}:{DEFAULT_PORT}{PORTFOLIO_PATH}"

# Credentials: the bearer header or this cookie, nothing else.
SESSION_COOKIE: Final = "alphaflow_session"
# Query parameters that would put a credential in a URL (and so in logs and history): refused.
TOKEN_QUERY_PARAMETERS: Final = frozenset({"token", "access_token", "api_key", "session"})


class Close(NamedTuple):
    """A close code and the reason sent with it."""

    code: int
    reason: str


CLOSE_RATE_LIMIT: Final = Close(1008, "rate limit")
CLOSE_SLOW_CONSUMER: Final = Close(1013, "slow consumer: backlog did not drain")
CLOSE_STREAMING_DISABLED: Final = Close(4003, "streaming disabled")


class Refusal(enum.StrEnum):
    """The ``error`` of a refused handshake or REST request (its JSON body)."""

    # Codes that name a token, not tokens (hence the noqa for "hardcoded password").

    TOKEN_IN_URL = "token_in_url"  # noqa: S105 - 400
    MISSING_TOKEN = "missing_token"  # noqa: S105 - 401
    INVALID_TOKEN = "invalid_token"  # noqa: S105 - 401
    WRONG_ROLE = "wrong_role"  # 403
    NOT_FOUND = "not_found"  # 404
    TOO_MANY_CONNECTIONS = "too_many_connections"  # 429: the per-user limit
    SERVER_FULL = "server_full"  # 503: the total limit
    STREAMING_DISABLED = "streaming_disabled"  # 503, with ``fallback``: the feature flag
    ORIGIN_NOT_ALLOWED = "origin_not_allowed"  # 403: a browser page of another origin
    METHOD_NOT_ALLOWED = "method_not_allowed"  # 405, with ``Allow``
    # No answer at all: the socket is closed at once, past the bound on unfinished handshakes.
    TOO_MANY_PENDING = "too_many_pending"
