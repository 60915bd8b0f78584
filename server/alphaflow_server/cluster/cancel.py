"""A pause between Redis calls that never lets a loop outlive its cancellation.

redis-py 8 sends every command through ``asyncio.wait_for`` (its socket
timeout); on Python 3.11 a cancel that lands as the write completes is lost
there (CPython gh-86296, fixed in 3.12): the command returns, the task
stays ``cancelling()``, and a loop that only awaits Redis and sleeps would
run on forever. Every background loop of the cluster sleeps through
``pause``, which raises that cancel first.
"""

from __future__ import annotations

import asyncio


def honour_cancel() -> None:
    """Raise the cancel an earlier await swallowed, if there was one."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


async def pause(seconds: float) -> None:
    honour_cancel()
    await asyncio.sleep(seconds)
