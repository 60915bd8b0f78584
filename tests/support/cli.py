"""Running the alphaflow-live command as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .server import LISTENING
from .wait import wait_until


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "alphaflow_server", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        stdin=subprocess.DEVNULL,
        check=False,
    )


@dataclass(frozen=True)
class ServeAttempt:
    """How a ``serve`` that should refuse to start ended."""

    # None when it did not refuse: it started listening, and was killed (SIGKILL, so it wrote no more).
    returncode: int | None
    stdout: str
    stderr: str

    def describe(self) -> str:
        ended = "started listening" if self.returncode is None else f"exited {self.returncode}"
        return f"serve {ended}; stderr:\n{self.stderr}\nstdout:\n{self.stdout}"


def attempt_serve(users_file: Path, state_dir: Path, *args: str, timeout: float = 20) -> ServeAttempt:
    """Run ``serve`` on a fresh port until it exits or listens, whichever comes first."""
    command = [
        sys.executable, "-m", "alphaflow_server", "serve", "--host", "127.0.0.1", "--port", "0",
        "--source", "none", "--users-file", str(users_file), "--state-dir", str(state_dir), *args,
    ]  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="afl-serve-") as scratch:
        out_path, err_path = Path(scratch) / "stdout", Path(scratch) / "stderr"
        with out_path.open("wb") as out, err_path.open("wb") as err:
            proc = subprocess.Popen(command, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        try:
            wait_until(
                lambda: proc.poll() is not None or LISTENING.search(_text(err_path) + _text(out_path)),
                timeout=timeout,
                what="serve to exit or to listen",
            )
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
                returncode = None
            else:
                returncode = proc.returncode
        return ServeAttempt(returncode, _text(out_path), _text(err_path))


def _text(path: Path) -> str:
    return path.read_text(errors="replace")
