"""The client inside a real ipykernel: updates keep arriving while a cell is busy."""

from __future__ import annotations

import json
import os
import queue
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from jupyter_client.manager import KernelManager

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def kernel(tmp_path: Path) -> Iterator[Any]:
    """Yields a function that starts a kernel with extra environment and returns its client."""
    started: list[tuple[KernelManager, Any]] = []

    def start(env: dict[str, str]) -> Any:
        manager = KernelManager(kernel_name="python3")
        manager.start_kernel(env={**os.environ, **env, "JUPYTER_RUNTIME_DIR": str(tmp_path)})
        client = manager.client()
        client.start_channels()
        client.wait_for_ready(timeout=60)
        started.append((manager, client))
        return client

    yield start
    for manager, client in started:
        client.stop_channels()
        manager.shutdown_kernel(now=True)


def run_cell(client: Any, code: str, timeout: float = 60) -> str:
    """Execute code; returns its stdout, or fails with the kernel's traceback."""
    output: list[str] = []
    errors: list[str] = []

    def hook(message: dict[str, Any]) -> None:
        kind, content = message["msg_type"], message["content"]
        if kind == "stream":
            output.append(content["text"])
        elif kind == "error":
            errors.append("\n".join(content["traceback"]))

    try:
        reply = client.execute_interactive(code, timeout=timeout, output_hook=hook)
    except queue.Empty:
        pytest.fail(f"cell did not finish within {timeout}s:\n{code}")
    assert reply["content"]["status"] == "ok", "\n".join(errors)
    return "".join(output)


def test_updates_arrive_while_a_cell_is_busy(start_server, tmp_path: Path, kernel) -> None:
    users_file = tmp_path / "users.json"
    server = start_server(
        "--source", "sim", "--sim-tick-rate", "80", "--batch-window-ms", "50", users_file=users_file
    )
    token = (tmp_path / "demo.token").read_text().strip()
    client = kernel({"ALPHAFLOW_URL": f"{server.ws_base}/ws/portfolio", "ALPHAFLOW_TOKEN": token})

    run_cell(
        client,
        "import alphaflow_live as afl\nlive = afl.connect()\nlive.wait_for(lambda l: l.status == 'live')",
    )
    # A cell that keeps the CPU busy for three seconds, sampling what the stream has applied.
    out = run_cell(
        client,
        "import json, time\n"
        "samples, end = [], time.monotonic() + 3\n"
        "while time.monotonic() < end:\n"
        "    sum(i * i for i in range(20000))\n"
        "    samples.append(live.seq)\n"
        "print(json.dumps({'first': samples[0], 'last': samples[-1], 'distinct': len(set(samples)),\n"
        "                  'status': live.status, 'freshness': live.freshness}))\n",
    )
    result = json.loads(out.strip().splitlines()[-1])

    assert result["last"] > result["first"], f"no update arrived while the cell ran: {result}"
    assert result["distinct"] >= 10, f"updates stalled during the cell: {result}"
    assert (result["status"], result["freshness"]) == ("live", "live")
    run_cell(client, "live.close()\nassert live.status == 'closed'")
