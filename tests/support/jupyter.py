"""JupyterLab and Debian's Chromium, started by tests on free loopback ports."""

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
from typing import Any

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


class JupyterLab:
    """``jupyter lab`` with its own config, data and runtime dirs, serving ``root_dir``."""

    def __init__(self, root_dir: Path, work_dir: Path, env: dict[str, str]) -> None:
        self.root_dir = root_dir
        self.work_dir = work_dir
        self.env = env
        self.token = secrets.token_hex(16)
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = work_dir / "jupyterlab.log"

    def start(self, timeout: float = 60) -> JupyterLab:
        self.port = free_port()
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
        command = [
            sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={self.port}",
            f"--IdentityProvider.token={self.token}", f"--ServerApp.root_dir={self.root_dir}", "--allow-root",
            "--ServerApp.open_browser=False", "--LabApp.news_url=", "--LabApp.check_for_updates_class="
            "jupyterlab.NeverCheckForUpdate",
        ]  # fmt: skip
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
        )
        log.close()
        wait_until(self._ready, timeout=timeout, what=f"JupyterLab to answer (log: {self.log_path})")
        return self

    def _ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(
                f"jupyter lab exited with {self.proc.returncode}:\n{self.log_path.read_text()}"
            )
        try:
            with urllib.request.urlopen(self.url("/api/status"), timeout=2):  # noqa: S310 - loopback
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


def launch_chromium(playwright: Any, **options: Any) -> Any:
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True, **options)
