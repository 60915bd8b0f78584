"""A plain `pip install alphaflow-live`, without the [server] extra, in a fresh venv."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
INSTALL_TIMEOUT_S = 420

# About 15 s with a warm pip cache: a fresh venv, the wheel built from this checkout, the base dependencies.
pytestmark = pytest.mark.timeout(INSTALL_TIMEOUT_S + 120)


def _clean_env() -> dict[str, str]:
    # Nothing of the test's own environment may leak the checkout or the dev venv into the new one.
    hidden = {"PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME"}
    return {k: v for k, v in os.environ.items() if k not in hidden and not k.startswith("ALPHAFLOW_")}


def _run(command: list[str], cwd: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env=_clean_env(),
        stdin=subprocess.DEVNULL,
        check=False,
    )


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("install")
    path = root / "venv"
    started = time.monotonic()
    created = _run([sys.executable, "-m", "venv", str(path)], root, timeout=120)
    assert created.returncode == 0, created.stderr
    installed = _run(
        [
            str(path / "bin" / "python"),
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "--quiet",
            str(REPO),
        ],
        root,
        timeout=INSTALL_TIMEOUT_S,
    )
    assert installed.returncode == 0, f"pip install {REPO} failed:\n{installed.stdout}\n{installed.stderr}"
    print(f"venv and pip install took {time.monotonic() - started:.1f} s")
    return path


def test_the_install_without_the_server_extra_lacks_prometheus_client(venv: Path) -> None:
    probe = _run([str(venv / "bin" / "python"), "-c", "import prometheus_client"], venv, timeout=30)

    assert probe.returncode != 0, "prometheus_client is installed: this venv cannot show the missing extra"


def test_serve_without_the_server_extra_prints_one_line_naming_the_install_and_exits_2(
    venv: Path, tmp_path: Path
) -> None:
    served = _run(
        [
            str(venv / "bin" / "alphaflow-live"),
            "serve",
            "--port",
            "0",
            "--state-dir",
            str(tmp_path / "state"),
            "--users-file",
            str(tmp_path / "users.json"),
        ],
        tmp_path,
        timeout=60,
    )

    assert served.returncode == 2, (
        f"exit {served.returncode}; stdout {served.stdout!r}; stderr {served.stderr!r}"
    )
    assert served.stdout == ""
    lines = served.stderr.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got: {served.stderr!r}"
    assert lines[0].startswith("alphaflow-live serve: ")
    assert "missing: prometheus_client" in lines[0]
    assert "pip install 'alphaflow-live[server]'" in lines[0]
    assert not (tmp_path / "users.json").exists(), "serve touched the users file before refusing"
    assert not (tmp_path / "state").exists(), "serve touched the state dir before refusing"


def test_users_and_schema_work_without_the_server_extra(venv: Path, tmp_path: Path) -> None:
    users_file = str(tmp_path / "users.json")
    command = str(venv / "bin" / "alphaflow-live")

    added = _run([command, "users", "add", "dana", "--users-file", users_file], tmp_path, timeout=60)
    listed = _run([command, "users", "list", "--users-file", users_file], tmp_path, timeout=60)
    schema = _run([command, "schema"], tmp_path, timeout=60)

    assert added.returncode == 0, added.stderr
    assert added.stdout.strip().splitlines()[-1].split()[-1].startswith("afl_")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.startswith("dana\tuser\t")
    assert schema.returncode == 0, schema.stderr
    assert schema.stdout.lstrip().startswith("{")
