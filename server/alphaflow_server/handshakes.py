"""The bound on unfinished handshakes: the asyncio shell around ``limits.PendingHandshakes``.

A socket counts from the moment it is accepted until it has sent a whole HTTP
request (then admission answers it, and an accepted stream counts in the
``ConnectionLimiter``) or goes away. A socket that finds no place is aborted
at once, before it has cost more than the accept; each refusal is counted in
``handshakes_refused["too_many_pending"]`` and logged at most once a second.
"""

from __future__ import annotations

import asyncio
import logging
import resource

from websockets.asyncio.server import ServerConnection

from alphaflow_live.codes import Refusal

from .limits import PendingHandshakes, default_pending_handshakes
from .logs import ThrottledLog
from .stats import ServerStats


def open_file_limit() -> int:
    """The process's soft limit on file descriptors (what accept(2) fails past)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


def pending_bound(configured: int | None) -> int:
    return configured if configured is not None else default_pending_handshakes(open_file_limit())


def gated_connections(
    gate: PendingHandshakes[ServerConnection], stats: ServerStats, log: logging.Logger
) -> type[ServerConnection]:
    """A ServerConnection class (for ``serve(create_connection=...)``) that keeps to ``gate``."""
    refusals = ThrottledLog(log)

    def refuse(connection: ServerConnection) -> None:
        stats.handshakes_refused[Refusal.TOO_MANY_PENDING.value] += 1
        refusals.event(
            logging.WARNING,
            "event=handshake_refused reason=%s bound=%d count=%d",
            Refusal.TOO_MANY_PENDING,
            gate.bound,
        )
        connection.transport.abort()

    class GatedConnection(ServerConnection):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(transport)
            arrival = gate.arrive(self, self.loop.time())
            for evicted in arrival.evicted:
                refuse(evicted)
            if not arrival.admitted:
                refuse(self)
                return
            self.request_rcvd.add_done_callback(lambda _: gate.done(self))
            self.connection_lost_waiter.add_done_callback(lambda _: gate.done(self))

    return GatedConnection
