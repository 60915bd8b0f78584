"""One structured line per event: ``<UTC time> <LEVEL> <logger> <message>``.

Messages are ``key=value`` pairs (``event=connect user=alice conn=c-1f``) or a
short sentence for lifecycle lines such as ``listening on ws://HOST:PORT``.
Tokens and full payloads never reach a log line.
"""

from __future__ import annotations

import logging
import sys

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
