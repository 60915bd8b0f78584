"""A real `alphaflow-live serve` process on an ephemeral loopback port."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from alphaflow_server.auth import TokenStore, save_users_file

from .wait import wait_until

LISTENING = re.compile(r"listening on ws://(?P<host>[^:\s]+):(?P<port>\d+)")


@dataclass(frozen=True)
class Tokens:
    """One token per role, plus a second user to prove isolation."""

    alice: str
    bob: str
    service: str
    admin: str


def write_users(path: Path) -> Tokens:
    store = TokenStore()
    tokens = Tokens(
        alice=store.add("alice", "user"),
        bob=store.add("bob", "user"),
        service=store.add("svc", "service"),
        admin=store.add("ops", "admin"),
    )
    save_users_file(path, store)
    return tokens


@dataclass
class ServerProcess:
    users_file: Path
    log_path: Path
    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    port: int = 0
    state_dir: Path = Path()

    def __post_init__(self) -> None:
        if self.state_dir == Path():
            self.state_dir = self.log_path.with_suffix(".state")

    def start(self, timeout: float = 20.0) -> ServerProcess:
        # Defaults for a quiet, isolated server; flags in self.args come later and win.
        command = [
            sys.executable, "-m", "alphaflow_server", "serve",
            "--host", "127.0.0.1", "--port", str(self.port), "--source", "none",
            "--users-file", str(self.users_file), "--state-dir", str(self.state_dir), *self.args,
        ]  # fmt: skip
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **self.env},
        )
        log.close()
        match = wait_until(self._listening, timeout=timeout, what=f"server to listen (log: {self.log_path})")
        self.port = int(match.group("port"))
        return self

    def _listening(self) -> re.Match[str] | None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
        return LISTENING.search(self.log()[self._log_offset :])

    @property
    def ws_base(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def http_base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        """Signal the server and wait for it to exit; returns its exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
                raise
        return self.proc.returncode

    def restart(self) -> ServerProcess:
        """Stop and start again on the same port and files."""
        self.stop()
        deadline = time.monotonic() + 10
        while True:
            try:
                return self.start()
            except RuntimeError:
                # The port may linger briefly after the previous process exited.
                if time.monotonic() > deadline:
                    raise


class StartServer(Protocol):
    """The ``start_server`` fixture (tests/conftest.py): a server with extra flags, stopped after the test."""

    def __call__(
        self, *args: str, users_file: Path | None = None, env: dict[str, str] | None = None
    ) -> ServerProcess: ...
