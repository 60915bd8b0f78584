"""One server per state directory: the lock every server takes before it reads its state."""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from .store import StateDirInUse, StateError

LOCK_NAME = "alphaflow-state.lock"


class StateDirLock:
    """One server per state directory: an exclusive ``flock`` on ``alphaflow-state.lock``.

    - Taken before anything in the directory is read, and held for the life of
      the process; the kernel drops it when the process dies (``kill -9``
      too), so a lock file left behind never blocks a restart.
    - The file is never deleted: a holder and a newcomer could otherwise lock
      two different files of the same name.
    - It holds the holder's pid, written by ``record_holder`` once the server
      has started: a server that fails to start changes nothing, the lock file
      included. Until then it may name an earlier holder, which is dead.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / LOCK_NAME
        try:
            directory.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise StateError(
                f"cannot open the lock file {self.path}: {exc.strerror}; "
                "the state dir must be writable by the server"
            ) from None
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = self._holder()
            os.close(self._fd)
            raise StateDirInUse(
                f"the state dir {directory.absolute()} is in use by another server ({holder}); "
                "stop it or use another --state-dir"
            ) from None

    def _holder(self) -> str:
        starting = "pid not yet recorded: it is still starting"
        try:
            pid = int(os.pread(self._fd, 32, 0).decode().strip())
        except (OSError, ValueError):
            return starting
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return starting  # an earlier holder's pid: the holder has not started yet
        except PermissionError:
            pass  # alive, and another user's
        return f"pid {pid}"

    def record_holder(self) -> None:
        """Write this process's pid, for the message a second server gets."""
        # Only the message needs it (the flock is the lock): a full disk must not stop a start.
        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, f"{os.getpid()}\n".encode(), 0)

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # closing the last descriptor drops the flock
            self._fd = -1

    def __enter__(self) -> StateDirLock:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()
