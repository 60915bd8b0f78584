"""One node's sharded pub/sub: shard channels subscribed and unsubscribed as users come and go.

Redis pub/sub is at most once: a message sent while the connection is down
is lost for good. Every subscriber here can tell (each message carries
seqs, or asks for an answer that a timeout stands in for), and
``on_reconnect`` callbacks run after each reconnection so that they look
for what they missed. redis-py subscribes the channels again on a new
connection by itself (``PubSub.on_connect``); on Redis Cluster it keeps one
connection per master (``ClusterPubSub``), each read by its own task here,
so a quiet master never delays a busy one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import redis.asyncio
from redis.asyncio.client import PubSub
from redis.asyncio.cluster import ClusterPubSub

from .cancel import honour_cancel, pause
from .redis_log import UNAVAILABLE_ERRORS, Client

log = logging.getLogger("alphaflow.server.cluster")

Handler = Callable[[bytes], None]

# How long one read waits before the reader looks at the set of connections again.
_READ_TIMEOUT_S = 1.0
_RETRY_S = (0.05, 0.1, 0.2, 0.5, 1.0)


class ShardSubscriber:
    def __init__(self, client: Client) -> None:
        self._client = client
        self._pubsub: PubSub | ClusterPubSub = client.pubsub()
        self._cluster = isinstance(client, redis.asyncio.RedisCluster)
        self._handlers: dict[bytes, Handler] = {}
        self._readers: dict[int, asyncio.Task[None]] = {}
        self._reconnect_listeners: list[Callable[[], None]] = []
        self._stopped = False
        self._changed = asyncio.Event()
        self._changing = asyncio.Lock()
        self._unsubscribing: set[asyncio.Task[None]] = set()

    def on_reconnect(self, listener: Callable[[], None]) -> None:
        self._reconnect_listeners.append(listener)

    async def add(self, channel: str, handler: Handler) -> None:
        """Deliver the channel's messages to ``handler`` (in order, on the event loop)."""
        self._handlers[channel.encode()] = handler
        async with self._changing:
            await self._pubsub.ssubscribe(channel)
        self._changed.set()

    def remove(self, channel: str) -> None:
        """Stop delivering the channel at once; it is unsubscribed in the background, unless it
        was added again meanwhile (the two never cross on the wire: one change at a time)."""
        if self._handlers.pop(channel.encode(), None) is None:
            return
        task = asyncio.get_running_loop().create_task(self._unsubscribe(channel))
        self._unsubscribing.add(task)
        task.add_done_callback(self._unsubscribing.discard)

    async def _unsubscribe(self, channel: str) -> None:
        async with self._changing:
            if channel.encode() in self._handlers:
                return
            with contextlib.suppress(*UNAVAILABLE_ERRORS):
                await self._pubsub.sunsubscribe(channel)

    def __contains__(self, channel: str) -> bool:
        return channel.encode() in self._handlers

    async def run(self) -> None:
        """Read every connection until cancelled."""
        try:
            while not self._stopped:
                for pubsub in self._connections():
                    key = id(pubsub)
                    if key not in self._readers or self._readers[key].done():
                        self._readers[key] = asyncio.create_task(self._read(pubsub), name="shard-reader")
                self._changed.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(_READ_TIMEOUT_S):
                        await self._changed.wait()
        finally:
            for task in self._readers.values():
                task.cancel()
            await asyncio.gather(*self._readers.values(), return_exceptions=True)

    async def close(self) -> None:
        self._stopped = True
        self._changed.set()
        with contextlib.suppress(Exception):
            await self._pubsub.aclose()

    def _connections(self) -> list[PubSub]:
        if isinstance(self._pubsub, ClusterPubSub):
            return list(self._pubsub.node_pubsub_mapping.values())
        return [self._pubsub] if self._pubsub.subscribed else []

    async def _read(self, pubsub: PubSub) -> None:
        failures = 0
        while True:
            honour_cancel()
            try:
                message = await pubsub.get_message(timeout=_READ_TIMEOUT_S)
            except UNAVAILABLE_ERRORS as error:
                if failures == 0:
                    log.warning("event=pubsub_lost reason=%r", f"{type(error).__name__}: {error}")
                await pause(_RETRY_S[min(failures, len(_RETRY_S) - 1)])
                failures += 1
                if not pubsub.subscribed:
                    return
                with contextlib.suppress(*UNAVAILABLE_ERRORS):
                    # A read on a closed connection reconnects, and on_connect subscribes again.
                    await pubsub.ping()
                continue
            if failures:
                failures = 0
                log.warning("event=pubsub_recovered")
                self._reconnected()
            if message is not None:
                self._dispatch(message)
            elif not pubsub.subscribed and self._cluster:
                return

    def _dispatch(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind not in (b"smessage", "smessage"):
            return
        channel = message["channel"]
        handler = self._handlers.get(channel if isinstance(channel, bytes) else channel.encode())
        if handler is None:
            return
        try:
            handler(message["data"])
        except Exception:
            log.exception("event=pubsub_handler_failed channel=%r", channel)

    def _reconnected(self) -> None:
        for listener in list(self._reconnect_listeners):
            try:
                listener()
            except Exception:
                log.exception("event=reconnect_listener_failed")
