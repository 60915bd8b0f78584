"""A small disk that can be filled: a tmpfs mounted for one test, and a filler file for it."""

from __future__ import annotations

import contextlib
import errno
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


@contextlib.contextmanager
def tmpfs(mount_point: Path, size: str = "2m") -> Iterator[Path]:
    """Mount a tmpfs of ``size`` at ``mount_point`` (skips the test where mount is not permitted)."""
    mount_point.mkdir(parents=True, exist_ok=True)
    try:
        mounted = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount_point)],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except FileNotFoundError:
        pytest.skip("no mount command here: a full disk needs a small tmpfs")
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs (a full disk needs one): {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        unmounted = subprocess.run(
            ["umount", str(mount_point)], capture_output=True, text=True, timeout=10, check=False
        )
        if unmounted.returncode != 0:  # still busy: detach it now, the kernel frees it when it can
            subprocess.run(["umount", "-l", str(mount_point)], capture_output=True, timeout=10, check=False)


def fill_disk(path: Path) -> int:
    """Write ``path`` until the file system has no byte left; how many bytes it took."""
    written = 0
    with path.open("wb", buffering=0) as filler:
        for chunk in (64 * 1024, 4096, 512, 1):
            block = b"\0" * chunk
            while True:
                try:
                    written += filler.write(block) or 0
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
    return written
