"""A daemon thread with an asyncio loop of its own: where a stream's connection and timers run.

Measured in JupyterLab (ipykernel 7): trait updates sent from a background
thread reach the browser while a cell is busy, updates from a task on the
kernel's own loop wait until the cell ends. So the stream never touches the
kernel's loop (no nest_asyncio): everything it does runs here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable, Coroutine
from concurrent.futures import Future
from typing import Any

log = logging.getLogger("alphaflow_live")


class LoopThread:
    """Started on first use; after ``stop`` it schedules nothing more (``call_later`` says so)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._guard = threading.Lock()
        self._stopped = False

    @property
    def running(self) -> bool:
        return self._loop is not None and not self._stopped

    def _ensure_started(self) -> asyncio.AbstractEventLoop | None:
        with self._guard:
            if self._stopped:
                return None
            if self._loop is None:
                loop = asyncio.new_event_loop()
                self._thread = threading.Thread(target=self._main, args=(loop,), name=self.name, daemon=True)
                self._loop = loop
                self._thread.start()
            return self._loop

    def _main(self, loop: asyncio.AbstractEventLoop) -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
        finally:
            # Whatever did not finish by itself (a connection that ignored its stop) is cancelled.
            pending = asyncio.all_tasks(loop)
            for task in pending:
                task.cancel()
            with contextlib.suppress(Exception):
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
                loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    def submit(self, coroutine: Coroutine[Any, Any, Any]) -> Future[Any] | None:
        """Run ``coroutine`` on the loop; None (and the coroutine closed) after ``stop``."""
        loop = self._ensure_started()
        if loop is None:
            coroutine.close()
            return None
        return asyncio.run_coroutine_threadsafe(coroutine, loop)

    def call_later(self, delay_s: float, callback: Callable[[], None]) -> bool:
        """Call ``callback`` on the loop after ``delay_s``; False when the loop has stopped."""
        loop = self._ensure_started()
        if loop is None:
            return False
        try:
            loop.call_soon_threadsafe(loop.call_later, max(0.0, delay_s), self._guarded, callback)
        except RuntimeError:  # closed in between
            return False
        return True

    @staticmethod
    def _guarded(callback: Callable[[], None]) -> None:
        try:
            callback()
        except Exception:
            log.exception("alphaflow-live: a scheduled callback raised")

    def in_thread(self) -> bool:
        return self._thread is threading.current_thread()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the loop once what is scheduled now has run, and wait for the thread (idempotent)."""
        with self._guard:
            self._stopped = True
            loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(loop.stop)
        if thread is not threading.current_thread():
            thread.join(timeout)
