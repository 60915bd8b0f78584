"""JupyterLab, Notebook 7, marimo and Debian's Chromium, started by tests on free loopback ports."""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Self

from .wait import wait_until

CHROMIUM = "/usr/bin/chromium"
# Flags for a root, headless Chromium on a machine with no network but loopback.
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
]  # fmt: skip


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class _WebApp:
    """A web app in a child process on a free loopback port, reached with a token; stopped by ``stop``."""

    name = ""
    status_path = "/"

    def __init__(self, work_dir: Path, env: dict[str, str]) -> None:
        self.work_dir = work_dir
        self.env = env
        self.token = secrets.token_hex(16)
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = work_dir / f"{self.name.replace(' ', '-')}.log"

    def command(self) -> list[str]:
        raise NotImplementedError

    def environment(self) -> dict[str, str]:
        return {**os.environ, **self.env}

    def start(self, timeout: float = 60) -> Self:
        self.port = free_port()
        self.work_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            self.command(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=self.environment(), cwd=self.work_dir,
        )  # fmt: skip
        log.close()
        wait_until(self._ready, timeout=timeout, what=f"{self.name} to answer (log: {self.log_path})")
        return self

    def _ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            log = self.log_path.read_text(errors="replace")
            raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{log}")
        try:
            with urllib.request.urlopen(self.url(self.status_path), timeout=2):  # noqa: S310 - loopback
                return True
        except (urllib.error.URLError, OSError):
            return False

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}?token={self.token}"

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


class JupyterLab(_WebApp):
    """``jupyter lab`` with its own config, data and runtime dirs, serving ``root_dir``."""

    name = "jupyter lab"
    module = "jupyterlab"
    status_path = "/api/status"

    def __init__(self, root_dir: Path, work_dir: Path, env: dict[str, str]) -> None:
        super().__init__(work_dir, env)
        self.root_dir = root_dir

    def environment(self) -> dict[str, str]:
        dirs = {name: self.work_dir / name.lower() for name in ("JUPYTER_CONFIG_DIR", "JUPYTER_RUNTIME_DIR")}
        for path in dirs.values():
            path.mkdir(parents=True, exist_ok=True)
        # No "get notified about Jupyter news?" prompt over the page.
        labconfig = dirs["JUPYTER_CONFIG_DIR"] / "labconfig"
        labconfig.mkdir(exist_ok=True)
        (labconfig / "page_config.json").write_text(
            json.dumps({"disabledExtensions": {"@jupyterlab/apputils-extension:announcements": True}})
        )
        env = {**os.environ, **{k: str(v) for k, v in dirs.items()}, **self.env}
        # The widget manager's lab extension lives in the venv's share/jupyter: keep the venv's data dir.
        env.pop("JUPYTER_DATA_DIR", None)
        return env

    def command(self) -> list[str]:
        return [
            sys.executable, "-m", self.module, "--no-browser", "--ip=127.0.0.1", f"--port={self.port}",
            f"--IdentityProvider.token={self.token}", f"--ServerApp.root_dir={self.root_dir}", "--allow-root",
            "--ServerApp.open_browser=False", *self.quiet_flags(),
        ]  # fmt: skip

    def quiet_flags(self) -> list[str]:
        return ["--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]


class Notebook7(JupyterLab):
    """``jupyter notebook`` (Notebook 7, on the same server and widget manager as JupyterLab)."""

    name = "jupyter notebook"
    module = "notebook"

    def quiet_flags(self) -> list[str]:
        return ["--JupyterNotebookApp.news_url="]


class Marimo(_WebApp):
    """``marimo run app.py``: the app read-only, as its users see it, behind a token."""

    name = "marimo run"
    status_path = "/health"

    def __init__(self, app_file: Path, work_dir: Path, env: dict[str, str]) -> None:
        super().__init__(work_dir, env)
        self.app_file = app_file

    def environment(self) -> dict[str, str]:
        # No look-up of a newer marimo on PyPI, no usage reports: the machine has no network.
        return {**os.environ, "MARIMO_SKIP_UPDATE_CHECK": "1", **self.env}

    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "marimo", "run", str(self.app_file), "--headless", "--host=127.0.0.1",
            f"--port={self.port}", f"--token-password={self.token}", "--session-ttl=5",
        ]  # fmt: skip

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}?access_token={self.token}"


def launch_chromium(playwright: Any, **options: Any) -> Any:
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True, **options)
