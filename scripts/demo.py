"""`make demo`: the stream server with the simulated market, and JupyterLab on the live notebook.

State and the demo user's token stay in .demo/ (git-ignored), so a second run
resumes the same portfolio. JupyterLab gets ALPHAFLOW_URL and ALPHAFLOW_TOKEN
in its environment, so the notebooks never hold a token. Ctrl-C stops both.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from alphaflow_live.codes import PORTFOLIO_PATH

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / ".demo"
LISTENING = re.compile(r"listening on ws://(?P<host>[^:\s]+):(?P<port>\d+)")


def wait_for_line(
    log: Path, pattern: re.Pattern[str], proc: subprocess.Popen[bytes], what: str
) -> re.Match[str]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"demo: the {what} exited with {proc.returncode}; see {log}")
        match = pattern.search(log.read_text(errors="replace"))
        if match:
            return match
        time.sleep(0.1)
    sys.exit(f"demo: the {what} did not start within 60 s; see {log}")


def main() -> int:
    DEMO.mkdir(mode=0o700, exist_ok=True)
    server_log, lab_log = DEMO / "server.log", DEMO / "jupyterlab.log"
    port = os.environ.get("ALPHAFLOW_PORT", "8765")
    server = subprocess.Popen(
        [
            # The module, like jupyterlab below: the venv's console script may predate this checkout.
            sys.executable,
            "-m",
            "alphaflow_server",
            "serve",
            "--source",
            "sim",
            "--port",
            port,
            "--users-file",
            str(DEMO / "users.json"),
            "--state-dir",
            str(DEMO / "state"),
        ],
        stdout=server_log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    processes = [server]
    try:
        match = wait_for_line(server_log, LISTENING, server, "stream server")
        url = f"ws://{match['host']}:{match['port']}{PORTFOLIO_PATH}"
        token = (DEMO / "demo.token").read_text().strip()
        env = {**os.environ, "ALPHAFLOW_URL": url, "ALPHAFLOW_TOKEN": token}
        lab = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "jupyterlab",
                "--no-browser",
                "--ip=127.0.0.1",
                f"--ServerApp.root_dir={REPO / 'notebooks'}",
                *(["--allow-root"] if os.geteuid() == 0 else []),
            ],
            stdout=lab_log.open("wb"),
            stderr=subprocess.STDOUT,
            env=env,
        )
        processes.append(lab)
        lab_url = wait_for_line(
            lab_log, re.compile(r"(http://127\.0\.0\.1:\d+/lab\?token=\w+)"), lab, "JupyterLab"
        )
        notebook = lab_url[1].replace("/lab?", "/lab/tree/live_portfolio.ipynb?")
        print(f"stream server: {url} (simulated market; log {server_log})")
        print(f"JupyterLab:    {notebook}")
        print("Ctrl-C stops both.", flush=True)
        while all(p.poll() is None for p in processes):
            time.sleep(0.5)
        return 1
    except KeyboardInterrupt:
        print("\nstopping")
        return 0
    finally:
        for proc in reversed(processes):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in processes:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()


if __name__ == "__main__":
    sys.exit(main())
