"""Shared machinery of the server benchmarks: server processes, users, load processes, figures.

Everything runs on 127.0.0.1 with ephemeral ports. A server is the real ``alphaflow-live serve``
process; load runs in separate processes (``bench/load.py``) that print JSON lines. Every wait
here is bounded; nothing asserts an absolute time.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import queue
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alphaflow_server.auth import TokenStore, save_users_file

BENCH_DIR = Path(__file__).resolve().parent
LOAD_SCRIPT = BENCH_DIR / "load.py"
LISTENING = re.compile(r"listening on ws://(?P<host>[^:\s]+):(?P<port>\d+)")
# A directory: scenarios that support it record the server with py-spy there (collapsed stacks).
PROFILE_ENV = "ALPHAFLOW_BENCH_PROFILE"
MiB = 1024 * 1024
# Loopback only, whatever HTTP_PROXY says.
_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class BenchError(RuntimeError):
    """A benchmark could not run (a process died, a wait ran out)."""


# ------------------------------------------------------------------ limits and memory


def raise_nofile(limit: int | None = None) -> int:
    """Raise this process's open-file limit (to the hard limit, or ``limit``); the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if limit is None else min(limit, hard)
    if wanted > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def rss_bytes(pid: int) -> int:
    """Resident set size of a process, from /proc (0 when it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return 0
    return 0


class RssSampler:
    """Samples a pid's RSS in a thread every ``interval`` seconds (bounded by ``max_samples``)."""

    def __init__(self, pid: int, interval: float = 0.2, max_samples: int = 20_000) -> None:
        self.pid, self.interval, self.max_samples = pid, interval, max_samples
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set() and len(self.samples) < self.max_samples:
            self.samples.append((time.monotonic(), rss_bytes(self.pid)))
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    @property
    def peak(self) -> int:
        return max((rss for _, rss in self.samples), default=0)


# ------------------------------------------------------------------ users


@dataclass
class Users:
    path: Path
    tokens: dict[str, str]
    users: list[str]
    services: list[str]
    admin: str

    def token(self, name: str) -> str:
        return self.tokens[name]

    def service_tokens(self, n: int | None = None) -> list[str]:
        names = self.services if n is None else self.services[:n]
        return [self.tokens[s] for s in names]


def write_users(path: Path, users: Iterable[str], *, services: int = 4) -> Users:
    """A users file with the given user-role names, ``services`` publishers and one admin."""
    store = TokenStore()
    tokens: dict[str, str] = {}
    names = list(users)
    for name in names:
        tokens[name] = store.add(name, "user")
    service_names = [f"svc{i}" for i in range(services)]
    for name in service_names:
        tokens[name] = store.add(name, "service")
    tokens["bench-admin"] = store.add("bench-admin", "admin")
    save_users_file(path, store)
    return Users(path=path, tokens=tokens, users=names, services=service_names, admin="bench-admin")


# ------------------------------------------------------------------ the server


def server_command() -> list[str]:
    # The module rather than the console script: a script installed from an older checkout
    # may still point at where the command used to live.
    return [sys.executable, "-m", "alphaflow_server"]


def _nofile_preexec(limit: int | None) -> Any:
    if limit is None:
        return None

    def preexec() -> None:
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        wanted = min(limit, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))

    return preexec


@dataclass
class Server:
    """``alphaflow-live serve`` on 127.0.0.1, an ephemeral port, no state, the given flags."""

    users: Users
    workdir: Path
    flags: Sequence[str] = ()
    source: str = "none"
    nofile: int | None = None
    name: str = "server"
    proc: subprocess.Popen[bytes] | None = None
    port: int = 0
    log_path: Path = field(default_factory=Path)

    def start(self, timeout: float = 30.0) -> Server:
        self.log_path = self.workdir / f"{self.name}-{time.monotonic_ns()}.log"
        command = [
            *server_command(), "serve", "--host", "127.0.0.1", "--port", "0",
            "--source", self.source, "--no-state", "--users-file", str(self.users.path), *self.flags,
        ]  # fmt: skip
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=_nofile_preexec(self.nofile),
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = LISTENING.search(self.log_path.read_text(errors="replace"))
            if match:
                self.port = int(match.group("port"))
                return self
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        self.stop()
        raise BenchError(f"server did not start: {self.log_tail()}")

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def base(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def http_get(self, path: str, token: str, timeout: float = 10.0) -> tuple[bytes, int]:
        """Body and the approximate size of the response head (status line and headers)."""
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}", headers={"Authorization": f"Bearer {token}"}
        )
        with _HTTP.open(request, timeout=timeout) as response:
            body: bytes = response.read()
            head = len("HTTP/1.1 200 OK\r\n") + sum(len(k) + len(v) + 4 for k, v in response.headers.items())
        return body, head + 2

    def stats(self) -> dict[str, Any]:
        body, _ = self.http_get("/api/admin/websocket-stats", self.users.token(self.users.admin))
        result: dict[str, Any] = json.loads(body)
        return result

    def rss(self) -> int:
        return rss_bytes(self.pid)

    def profile(self, seconds: float) -> subprocess.Popen[bytes] | None:
        """When ``ALPHAFLOW_BENCH_PROFILE`` names a directory, start ``py-spy record`` of this
        server for ``seconds`` (collapsed stacks, one file per run; py-spy is not a dependency:
        install it into the venv to use this). Wait on the returned process, if any."""
        directory = os.environ.get(PROFILE_ENV)
        if not directory:
            return None
        spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
        if spy is None:
            raise BenchError(f"{PROFILE_ENV} is set but py-spy is not installed (pip install py-spy)")
        out = Path(directory) / f"{self.name}-{time.strftime('%H%M%S')}.txt"
        out.parent.mkdir(parents=True, exist_ok=True)
        # --nonblocking: sample without pausing the server, so the figures measured stay its own.
        command = [spy, "record", "--pid", str(self.pid), "--duration", str(max(1, round(seconds)))]
        command += ["--rate", "100", "--nonblocking", "--format", "raw", "--output", str(out)]
        return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop(self, timeout: float = 20.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ------------------------------------------------------------------ load processes


class Load:
    """One ``bench/load.py ROLE`` process (or another ``script``'s role); its JSON lines arrive on a queue."""

    def __init__(
        self, role: str, spec: dict[str, Any], workdir: Path | None = None, *, script: Path = LOAD_SCRIPT
    ) -> None:
        self.role = role
        directory = workdir or Path(tempfile.gettempdir())
        self._stderr_path = directory / f"load-{role}-{time.monotonic_ns()}.err"
        with self._stderr_path.open("wb") as stderr:
            self.proc = subprocess.Popen(
                [sys.executable, str(script), role],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        self._lines: queue.Queue[dict[str, Any] | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self._send(json.dumps(spec))

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                message = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(message, dict):
                self._lines.put(message)
        self._lines.put(None)

    def _send(self, line: str) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(line + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            pass

    def _next(self, kind: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.kill()
                raise BenchError(
                    f"load {self.role}: no {kind!r} line within {timeout:.0f} s; {self.stderr()}"
                )
            try:
                message = self._lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if message is None:
                raise BenchError(f"load {self.role} exited before {kind!r}: {self.stderr()}")
            if message.get("kind") == kind:
                return message

    def stderr(self) -> str:
        try:
            return self._stderr_path.read_text(errors="replace")[-1500:]
        except OSError:
            return ""

    def ready(self, timeout: float = 120.0) -> dict[str, Any]:
        return self._next("ready", timeout)

    def mark(self) -> None:
        self._send("mark")

    def result(self, timeout: float = 120.0, *, stop: bool = True) -> dict[str, Any]:
        if stop:
            self._send("stop")
        try:
            return self._next("result", timeout)
        finally:
            self.kill(grace=5)

    def kill(self, grace: float = 0.0) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()


def run_loads(
    jobs: Sequence[tuple[str, dict[str, Any]]],
    timeout: float = 120.0,
    workdir: Path | None = None,
    *,
    script: Path = LOAD_SCRIPT,
) -> list[dict[str, Any]]:
    """Start run-to-completion load processes together; their result lines, in order."""
    loads = [Load(role, spec, workdir, script=script) for role, spec in jobs]
    try:
        return [load.result(timeout, stop=False) for load in loads]
    finally:
        for load in loads:
            load.kill()


def start_clients(
    count: int, spec: dict[str, Any], *, per_process: int = 500, workdir: Path | None = None
) -> list[Load]:
    """``count`` client connections split over ``ceil(count / per_process)`` load processes."""
    loads: list[Load] = []
    processes = max(1, math.ceil(count / per_process))
    for i in range(processes):
        share = count // processes + (1 if i < count % processes else 0)
        if share:
            tokens = spec.get("tokens") or [None]
            # Rotate the token list so that every process starts on a different user.
            offset = (i * (count // processes)) % len(tokens)
            loads.append(
                Load(
                    "clients", {**spec, "count": share, "tokens": tokens[offset:] + tokens[:offset]}, workdir
                )
            )
    return loads


def wait_ready(loads: Sequence[Load], timeout: float = 300.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    return [load.ready(max(1.0, deadline - time.monotonic())) for load in loads]


def collect(loads: Sequence[Load], timeout: float = 60.0) -> list[dict[str, Any]]:
    for load in loads:
        load._send("stop")
    deadline = time.monotonic() + timeout
    return [load.result(max(1.0, deadline - time.monotonic()), stop=False) for load in loads]


@dataclass
class EchoServer:
    """A bare websockets echo server in its own process (the baseline)."""

    workdir: Path | None = None
    load: Load | None = None
    port: int = 0
    pid: int = 0

    def __enter__(self) -> EchoServer:
        self.load = Load("echo_server", {"hold_s": 1800}, self.workdir)
        ready = self.load.ready(30)
        self.port, self.pid = ready["port"], ready["pid"]
        return self

    def __exit__(self, *exc: object) -> None:
        if self.load is not None:
            try:
                self.load.result(10)
            except BenchError:
                self.load.kill()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/"


# ------------------------------------------------------------------ figures


def percentile(samples: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100), linear between closest ranks; NaN without samples."""
    if not samples:
        return math.nan
    ordered = sorted(samples)
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def percentiles(samples: Sequence[float], qs: Iterable[float] = (50, 95, 99)) -> dict[str, float]:
    ordered = sorted(samples)
    return {f"p{q:g}": percentile(ordered, q) for q in qs}


def ratio(value: float | None, baseline: float | None) -> float | None:
    """value ÷ baseline, or None when either is missing or the baseline is zero."""
    if value is None or baseline is None or baseline == 0 or math.isnan(value) or math.isnan(baseline):
        return None
    return value / baseline


def format_ratio(value: float | None) -> str:
    if value is None:
        return ""
    if value >= 100:
        return f"{value:.3g}x"
    if value < 0.1 and value > 0:
        return f"{value:.2g}x (1/{1 / value:.3g})"
    return f"{value:.2f}x"


def format_value(value: float | None, unit: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, int) or (float(value).is_integer() and abs(value) >= 100):
        text = f"{int(value):,}"
    elif abs(value) >= 100:
        text = f"{value:,.0f}"
    elif abs(value) >= 1:
        text = f"{value:.2f}"
    else:
        text = f"{value:.3g}"
    return f"{text} {unit}".strip()


def row(
    scenario: str,
    metric: str,
    value: float | None,
    unit: str,
    baseline_name: str | None = None,
    baseline_value: float | None = None,
) -> dict[str, Any]:
    """One figure; ``ratio`` is value ÷ baseline (below 1: smaller than the baseline)."""

    def clean(v: float | None) -> float | None:
        return None if v is None or (isinstance(v, float) and math.isnan(v)) else round(float(v), 6)

    r = ratio(value, baseline_value)
    return {
        "scenario": scenario,
        "metric": metric,
        "value": clean(value),
        "unit": unit,
        "baseline_name": baseline_name,
        "baseline_value": clean(baseline_value),
        "ratio": None if r is None else round(r, 6),
    }


def table(rows: Sequence[dict[str, Any]]) -> str:
    """scenario | metric | value | baseline | ratio, as aligned text."""
    header = ("scenario", "metric", "value", "baseline", "ratio")
    lines = [header]
    for r in rows:
        baseline = ""
        if r.get("baseline_name"):
            baseline = f"{format_value(r.get('baseline_value'), r['unit'])} ({r['baseline_name']})"
        lines.append(
            (
                r["scenario"],
                r["metric"],
                format_value(r.get("value"), r["unit"]),
                baseline,
                format_ratio(r.get("ratio")),
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = []
    for n, line in enumerate(lines):
        out.append(" | ".join(cell.ljust(widths[i]) for i, cell in enumerate(line)).rstrip())
        if n == 0:
            out.append("-+-".join("-" * w for w in widths))
    return "\n".join(out)


Scenario = Callable[[Any, Path], list[dict[str, Any]]]


def run_scenarios(
    names: Iterable[str], registry: Mapping[str, Scenario], params: Any, *, prefix: str
) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Run each named scenario in one work dir; their rows and, per failed scenario, why it failed.

    A failed scenario does not stop the others; the work dir (its logs) is kept when any failed.
    """
    rows: list[dict[str, Any]] = []
    failures: dict[str, str] = {}
    work = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        for name in names:
            started = time.monotonic()
            print(f"{name}: running ({'quick' if params.quick else 'full'})", flush=True)
            try:
                scenario_rows = registry[name](params, work)
            except Exception as exc:
                failures[name] = f"{type(exc).__name__}: {exc}"
                print(f"{name}: FAILED {failures[name]}", file=sys.stderr, flush=True)
                continue
            print_rows(scenario_rows)
            print(f"{name}: {time.monotonic() - started:.1f} s", flush=True)
            rows += scenario_rows
    finally:
        if not failures:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"logs kept in {work}", file=sys.stderr)
    return rows, failures


def print_rows(rows: Sequence[dict[str, Any]]) -> None:
    for r in rows:
        baseline = ""
        if r.get("baseline_name"):
            baseline = f"  vs {format_value(r.get('baseline_value'), r['unit'])} ({r['baseline_name']})"
        ratio_text = format_ratio(r.get("ratio"))
        print(
            f"  [{r['scenario']}] {r['metric']}: {format_value(r.get('value'), r['unit'])}{baseline}"
            f"{'  ratio ' + ratio_text if ratio_text else ''}",
            flush=True,
        )
