"""One ``--redis`` URL opens a client of a single Redis or of a Redis Cluster, whichever it names.

- The URL may be ``redis://``, ``rediss://`` (TLS) or ``unix://``; a
  cluster is recognised by asking the node (``INFO cluster``), so operators
  pass the same flag either way and every key already carries a hash tag.
- Connecting gives up after a few seconds, and redis-py's retry on
  connection errors is a few quick attempts, so a Redis that is away is
  ``Unavailable`` within about a second per command, not after minutes.
  The same retry reconnects a pooled connection that a Redis restart broke,
  so an open client keeps working across restarts.
- Reads wait up to ``SOCKET_TIMEOUT_S``: long, because callers block on
  purpose (XREAD BLOCK, pub/sub ``get_message(timeout=...)``) with their own,
  shorter, timeouts; yet finite, so a Redis that hangs is noticed.
- Replies stay bytes (``decode_responses=False``): events are stored as the
  bytes the clients receive.
- No URL ever reaches a log or an error with its password: ``redacted``.
"""

from __future__ import annotations

import re
from typing import Any, TypeAlias
from urllib.parse import urlsplit

import redis
import redis.asyncio
import redis.asyncio.retry
import redis.backoff
import redis.retry

from .redis_log import UNAVAILABLE_ERRORS, Client, Unavailable

SyncClient: TypeAlias = "redis.Redis | redis.RedisCluster"

SCHEMES = ("redis", "rediss", "unix")
CONNECT_TIMEOUT_S = 3.0
SOCKET_TIMEOUT_S = 30.0
# An idle pooled connection is PINGed before reuse after this long, so a dead one is replaced first.
HEALTH_CHECK_S = 10
# Attempts after the first, 50 ms apart doubling to 400 ms: about 0.7 s in all against a refusing port.
RETRIES = 3
_BACKOFF_BASE_S = 0.05
_BACKOFF_CAP_S = 0.4
_QUERY_PASSWORD = re.compile(r"(^|&)(password=)[^&]*")


def redacted(url: str) -> str:
    """``url`` with its password (in the user info or the query) replaced by ``***``."""
    parts = urlsplit(url)
    # Edited in place rather than rebuilt: urlunsplit would turn unix:///path into unix:/path.
    userinfo, at, _host = parts.netloc.rpartition("@")
    if at and ":" in userinfo:
        url = url.replace(f"{userinfo}@", f"{userinfo.split(':', 1)[0]}:***@", 1)
    if parts.query:
        url = url.replace(f"?{parts.query}", "?" + _QUERY_PASSWORD.sub(r"\1\2***", parts.query), 1)
    return url


async def open_client(url: str, *, socket_timeout: float | None = SOCKET_TIMEOUT_S) -> Client:
    """An asyncio client of the Redis or Redis Cluster at ``url``, connected and ready to route.

    ``Unavailable`` if Redis cannot be reached now; ``ValueError`` if the URL is not a Redis URL.
    """
    scheme = _check_url(url)
    probe: redis.asyncio.Redis = redis.asyncio.Redis.from_url(
        url, **_options(socket_timeout, redis.asyncio.retry.Retry)
    )
    try:
        _check_bytes(probe)
        clustered = await _is_cluster_async(probe, url)
    except BaseException:
        await probe.aclose()
        raise
    if not clustered:
        return probe
    await probe.aclose()
    _refuse_unix_cluster(scheme, url)
    cluster = redis.asyncio.RedisCluster.from_url(url, **_options(socket_timeout, redis.asyncio.retry.Retry))
    try:
        # Slots are learnt here, not on the first command: a subscription needs them before any command.
        await cluster.initialize()
    except UNAVAILABLE_ERRORS as error:
        await cluster.aclose()
        raise _unreachable(url, error) from error
    except BaseException:
        await cluster.aclose()
        raise
    return cluster


def open_sync_client(url: str, *, socket_timeout: float | None = SOCKET_TIMEOUT_S) -> SyncClient:
    """``open_client`` for synchronous code (the CLI): the same URLs, timeouts and errors."""
    scheme = _check_url(url)
    probe: redis.Redis = redis.Redis.from_url(url, **_options(socket_timeout, redis.retry.Retry))
    try:
        _check_bytes(probe)
        clustered = _is_cluster_sync(probe, url)
    except BaseException:
        probe.close()
        raise
    if not clustered:
        return probe
    probe.close()
    _refuse_unix_cluster(scheme, url)
    try:
        # The sync cluster client learns the slots as it is made.
        cluster = redis.RedisCluster.from_url(url, **_options(socket_timeout, redis.retry.Retry))
    except UNAVAILABLE_ERRORS as error:
        raise _unreachable(url, error) from error
    return cluster


def _options(socket_timeout: float | None, retry_class: type[Any]) -> dict[str, Any]:
    backoff = redis.backoff.ExponentialWithJitterBackoff(base=_BACKOFF_BASE_S, cap=_BACKOFF_CAP_S)
    return {
        "decode_responses": False,
        "socket_connect_timeout": CONNECT_TIMEOUT_S,
        "socket_timeout": socket_timeout,
        "health_check_interval": HEALTH_CHECK_S,
        "retry": retry_class(backoff, RETRIES),
    }


def _check_url(url: str) -> str:
    scheme = urlsplit(url).scheme
    if scheme not in SCHEMES:
        raise ValueError(
            f"--redis {redacted(url)!r} is not a Redis URL: expected redis://HOST:PORT, "
            "rediss://HOST:PORT (TLS) or unix:///PATH/TO/redis.sock"
        )
    return scheme


async def _is_cluster_async(probe: redis.asyncio.Redis, url: str) -> bool:
    try:
        info = await probe.info("cluster")
    except UNAVAILABLE_ERRORS as error:
        raise _unreachable(url, error) from error
    return _cluster_enabled(info)


def _is_cluster_sync(probe: redis.Redis, url: str) -> bool:
    try:
        info = probe.info("cluster")
    except UNAVAILABLE_ERRORS as error:
        raise _unreachable(url, error) from error
    return _cluster_enabled(info)


def _cluster_enabled(info: Any) -> bool:
    return isinstance(info, dict) and str(info.get("cluster_enabled", 0)) == "1"


def _refuse_unix_cluster(scheme: str, url: str) -> None:
    if scheme == "unix":
        raise ValueError(
            f"Redis at {redacted(url)} is a cluster node, and a Redis Cluster client reaches its "
            "nodes over TCP only: pass redis://HOST:PORT of one of its nodes"
        )


def _unreachable(url: str, error: Exception) -> Unavailable:
    return Unavailable(
        f"cannot reach Redis at {redacted(url)}: {type(error).__name__}: {error} "
        "(is it running, and is the URL of --redis or $ALPHAFLOW_REDIS right?)"
    )


def _check_bytes(probe: redis.Redis | redis.asyncio.Redis) -> None:
    # A query string such as ?decode_responses=true wins over our options; events must stay bytes.
    if probe.get_encoder().decode_responses:
        raise ValueError("the Redis URL must not set decode_responses: events stay bytes")
