"""A built-in source (the simulator, Alpaca) runs on one node of a cluster at a time.

Every node started with ``--source sim`` contends for the source's lease
(``afl:{source:<name>}:lease``, the same script and tokens as a partition's);
the holder runs the source and renews, the others wait. A holder that dies
or pauses loses the lease within ``lease_s`` and another node starts the
source; the old one stops it before its local deadline, so two nodes run it
at once only while one is paused past its deadline and not yet scheduled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from alphaflow_live.backoff import Backoff

from .cancel import honour_cancel, pause
from .leases import (
    LEASE_FAILURES,
    LEASE_SCRIPT,
    LeaseReply,
    check_client,
    check_lease,
    interval_for,
    margin_for,
    source_lease_key,
)
from .redis_log import Client, Unavailable

log = logging.getLogger(__name__)


async def run_under_lease(
    client: Client,
    name: str,
    *,
    node_id: str,
    lease_s: float,
    run: Callable[[], Awaitable[None]],
    on_state: Callable[[bool], None] | None = None,
) -> None:
    """Run ``run()`` on one node of the cluster at a time, for as long as this node holds the lease.

    The task is stopped before the lease is given back, and as soon as the
    lease may have gone (a renewal refused, or none confirmed before the local
    deadline), so two nodes overlap only if one was paused past its deadline
    and has not yet been scheduled since. Cancelled: the task stops and the
    lease is released. If ``run()`` ends by itself, the lease is released and
    this returns (or raises) as it did.
    """
    check_lease(lease_s)
    key = source_lease_key(name)
    check_client(client)
    script = client.register_script(LEASE_SCRIPT)
    lease_ms = round(lease_s * 1000)
    interval = interval_for(lease_s)
    valid_s = lease_s - margin_for(lease_s)
    loop = asyncio.get_running_loop()
    backoff = Backoff(base_s=interval / 2, cap_s=lease_s)

    async def call(op: str, token: int, until: float) -> LeaseReply:
        try:
            async with asyncio.timeout_at(until):
                return LeaseReply.parse(await script(keys=[key], args=[op, node_id, lease_ms, token]))
        except LEASE_FAILURES as error:
            raise Unavailable(f"Redis cannot serve the lease of source {name!r}: {error!r}") from error

    async def source() -> None:
        await run()

    def tell(running: bool) -> None:
        log.info("source=%s node=%s running=%s", name, node_id, running)
        if on_state is not None:
            on_state(running)

    while True:
        sent = loop.time()
        try:
            got = await call("acquire", 0, sent + lease_s)
        except Unavailable as error:
            log.warning("source=%s node=%s lease unavailable: %s", name, node_id, error)
            await pause(backoff.next_delay())
            continue
        backoff.reset()
        if got.status != "ok" or loop.time() >= sent + valid_s:
            await pause(interval)
            continue
        token, deadline = got.token, sent + valid_s
        task = asyncio.create_task(source(), name=f"source-{name}")
        tell(True)
        ended = give_back = False
        try:
            while True:
                honour_cancel()
                wake = min(loop.time() + interval, deadline)
                await asyncio.wait({task}, timeout=max(0.0, wake - loop.time()))
                if task.done():
                    ended = give_back = True
                    break
                if loop.time() >= deadline:
                    log.warning("source=%s node=%s lease not renewed in time: stopping", name, node_id)
                    break
                sent = loop.time()
                try:
                    renewed = await call("renew", token, deadline)
                except Unavailable as error:
                    log.warning("source=%s node=%s renewal failed: %s", name, node_id, error)
                    continue
                if renewed.status != "ok":
                    log.warning("source=%s node=%s lease lost to %s", name, node_id, renewed.holder)
                    break
                deadline = sent + valid_s
        except BaseException:
            give_back = True  # cancelled (or a bug): stop, then let another node take over at once
            raise
        finally:
            # The task stops before the lease goes back: the next holder never overlaps with it.
            task.cancel()
            await asyncio.wait({task})
            tell(False)
            if give_back:
                with contextlib.suppress(Unavailable):
                    await call("release", token, loop.time() + interval)
        if ended:
            task.result()  # run() ended by itself: its error, or its end, is ours
            return
