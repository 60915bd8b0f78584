"""One structured line per event: ``<UTC time> <LEVEL> <logger> <message>``.

Messages are ``key=value`` pairs (``event=connect user=alice conn=c-1f``) or a
short sentence for lifecycle lines such as ``listening on ws://HOST:PORT``.
Tokens and full payloads never reach a log line.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import sys
from collections.abc import Callable
from typing import Any

from alphaflow_live.protocol import format_timestamp


class _UtcFormatter(logging.Formatter):
    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return format_timestamp(record.created)


def configure_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_UtcFormatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # The websockets library logs rejected handshakes and request details at
    # INFO/DEBUG; our own handshake code logs what matters, without URLs.
    logging.getLogger("alphaflow.server.websockets").setLevel(logging.WARNING)
    logging.getLogger("websockets").setLevel(logging.WARNING)
    # alpaca-py narrates every (re)connect at INFO; our source logs what matters, structured.
    logging.getLogger("alpaca").setLevel(logging.WARNING)


class Throttle:
    """At most one line per ``interval_s`` for one kind of event, with how many it stands for (no I/O).

    The first event is logged at once; the ones within the interval after it
    are only counted, and the next line (an event, or ``flush`` once the
    interval is over) carries their count. A flood costs a line a second.
    """

    def __init__(self, interval_s: float = 1.0) -> None:
        self.interval_s = interval_s
        self._logged_at: float | None = None
        self._held = 0

    def hit(self, now: float) -> int | None:
        """How many events to log now (this one and those held back), or None: held back."""
        if self._logged_at is not None and now - self._logged_at < self.interval_s:
            self._held += 1
            return None
        count, self._held, self._logged_at = self._held + 1, 0, now
        return count

    def flush(self, now: float) -> int | None:
        """The events held back, once the interval since the last line is over."""
        if not self._held or (self._logged_at is not None and now - self._logged_at < self.interval_s):
            return None
        count, self._held, self._logged_at = self._held, 0, now
        return count

    @property
    def holding(self) -> bool:
        return self._held > 0


class ThrottledLog:
    """A ``Throttle`` with its logger: ``event(...)`` logs at most once per interval, then the rest.

    The message's last placeholder takes the count: ``"event=x reason=%s count=%d"``.
    """

    def __init__(self, logger: logging.Logger, interval_s: float = 1.0) -> None:
        self._log = logger
        self._throttle = Throttle(interval_s)
        self._flush: asyncio.TimerHandle | None = None

    def event(self, level: int, message: str, *args: Any) -> None:
        """Log ``message % (*args, count)``, or count it into a later line."""
        loop = asyncio.get_running_loop()
        count = self._throttle.hit(loop.time())
        if count is not None:
            self._log.log(level, message, *args, count)
        elif self._flush is None:
            # The held-back count is reported even when the flood stops.
            self._flush = loop.call_later(self._throttle.interval_s, self._flush_held, level, message, args)

    def _flush_held(self, level: int, message: str, args: tuple[Any, ...]) -> None:
        self._flush = None
        count = self._throttle.flush(asyncio.get_running_loop().time())
        if count is not None:
            self._log.log(level, message, *args, count)
        elif self._throttle.holding:
            self._flush = asyncio.get_running_loop().call_later(
                self._throttle.interval_s, self._flush_held, level, message, args
            )


# What accept(2) fails with when the process or the system runs out of descriptors or memory.
_RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


ExceptionHandler = Callable[[asyncio.AbstractEventLoop, dict[str, Any]], object]


class _AcceptErrors:
    """The loop's exception handler: accept errors throttled, anything else to the one before."""

    def __init__(self, previous: ExceptionHandler | None, logger: logging.Logger) -> None:
        self._previous = previous
        self._logs: dict[str, ThrottledLog] = {}
        self.logger = logger

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        message = str(context.get("message", ""))
        if isinstance(exc, OSError) and (
            message.startswith("socket.accept()") or "_accept_connection" in repr(context.get("handle"))
        ):
            name = errno.errorcode.get(exc.errno or 0, str(exc.errno))
            hint = (
                ' hint="raise the open-file limit (ulimit -n) or lower --max-pending-handshakes"'
                if exc.errno in _RESOURCE_ERRNOS
                else ""
            )
            log = self._logs.get(name) or self._logs.setdefault(name, ThrottledLog(self.logger))
            log.event(logging.ERROR, "event=accept_failed errno=%s count=%d" + hint, name)
        elif self._previous is not None:
            self._previous(loop, context)
        else:
            loop.default_exception_handler(context)


def throttle_accept_errors(loop: asyncio.AbstractEventLoop, logger: logging.Logger) -> None:
    """Log the loop's accept errors at most once a second each, with a count; pass on anything else.

    asyncio reports every failed ``accept`` to the loop's exception handler, a
    traceback each, and retries a second later: out of file descriptors, a
    flood of half-open sockets turned into thousands of log lines. Installed
    once per loop, however many servers start on it.
    """
    previous = loop.get_exception_handler()
    if isinstance(previous, _AcceptErrors):
        previous.logger = logger
        return
    loop.set_exception_handler(_AcceptErrors(previous, logger))
