"""Real `redis-server` processes for tests: one server, or a 3-master Redis Cluster.

Never the system's Redis: each process has its own directory under the test's
``tmp_path``, a free loopback port, and the durability the architecture
promises (AOF on, ``appendfsync always``, no RDB snapshots), so ``kill()``
followed by ``restart()`` shows what an acknowledged write survives. Readiness
is polled (PING, ``CLUSTER INFO``) against a deadline, never slept for. A
server dies with the test process (``PR_SET_PDEATHSIG``), so a pytest killed
hard leaves no redis-server behind.
"""

from __future__ import annotations

import ctypes
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import redis
import redis.asyncio

from alphaflow_server.cluster import LiveCommit, decode_live

from .wait import wait_until

REDIS_SERVER = "redis-server"
REDIS_CLI = "redis-cli"
INSTALL_HINT = "redis-server is missing: run `make system-deps` (installs Debian's redis-server)"
_PR_SET_PDEATHSIG = 1
# Bound now: between fork and exec the child should run as little Python as it can.
_prctl = ctypes.CDLL(None, use_errno=True).prctl


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: the kernel SIGKILLs it when the test process goes.
    _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


@dataclass
class RedisServer:
    """One redis-server on 127.0.0.1; its files (AOF, log, cluster config) stay in ``dir``."""

    dir: Path
    cluster_enabled: bool = False
    port: int = 0
    # The cluster bus; by default Redis takes ``port + 10000``, which a free port above 55535 cannot have.
    cluster_port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    extra_args: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.dir / "redis.log"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def start(self, timeout: float = 10.0) -> RedisServer:
        """Start on ``port`` (a free one the first time) and wait until it answers PING."""
        self.dir.mkdir(parents=True, exist_ok=True)
        first_start = self.port == 0
        for _attempt in range(5 if first_start else 1):
            if first_start:
                self.port = free_port()
                self.cluster_port = free_port() if self.cluster_enabled else 0
            try:
                self._spawn()
                wait_until(
                    self._ready, timeout=timeout, what=f"redis-server on port {self.port} to answer PING"
                )
                return self
            except _Exited:
                # Another process took the free port between the probe and the bind: try another.
                if not first_start or "Address already in use" not in self.log():
                    raise
        raise RuntimeError(f"redis-server found no free port after 5 attempts:\n{self._log_tail()}")

    def _spawn(self) -> None:
        command = [
            REDIS_SERVER,
            "--port", str(self.port), "--bind", "127.0.0.1",
            # Loopback only, no password: protected mode would refuse nothing we do here.
            "--protected-mode", "no",
            "--dir", str(self.dir), "--logfile", str(self.log_path),
            "--appendonly", "yes", "--appendfsync", "always", "--save", "",
            "--daemonize", "no",
        ]  # fmt: skip
        if self.cluster_enabled:
            command += ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
            command += ["--cluster-port", str(self.cluster_port)]
        command += self.extra_args
        try:
            self.proc = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                preexec_fn=_die_with_parent,
            )
        except FileNotFoundError:
            raise RuntimeError(INSTALL_HINT) from None

    def _ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise _Exited(f"redis-server exited with {self.proc.returncode}:\n{self._log_tail()}")
        try:
            return bool(self.sync_client().ping())
        except (redis.ConnectionError, redis.TimeoutError):
            # BusyLoadingError is a ConnectionError: still replaying its AOF.
            return False

    def sync_client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2, socket_connect_timeout=2)

    def client(self) -> redis.asyncio.Redis:
        """An asyncio client of this server, as the stream server makes one (close it after use)."""
        return redis.asyncio.Redis.from_url(self.url)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM and wait (a clean shutdown); SIGKILL if it will not go. Safe when not running."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """SIGKILL, as a crash: nothing is flushed that ``appendfsync always`` did not flush already."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.kill()
        self.proc.wait(timeout=10)

    def restart(self, timeout: float = 10.0) -> RedisServer:
        """Start again on the same port and files (the AOF is replayed); stops it first if running."""
        self.stop()
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self.start(timeout=max(0.5, deadline - time.monotonic()))
            except _Exited:
                # The port can linger for a moment after a kill.
                if time.monotonic() > deadline or "Address already in use" not in self.log():
                    raise
                time.sleep(0.05)

    def _log_tail(self, lines: int = 20) -> str:
        return "\n".join(self.log().splitlines()[-lines:]) or f"(no log at {self.log_path})"


class _Exited(RuntimeError):
    """The redis-server process ended while we waited for it."""


@dataclass
class RedisCluster:
    """Three redis-servers with ``--cluster-enabled yes``, one master each, no replicas."""

    dir: Path
    masters: int = 3
    nodes: list[RedisServer] = field(default_factory=list)

    @property
    def url(self) -> str:
        """One startup node; a cluster client discovers the others."""
        return self.nodes[0].url

    def start(self, timeout: float = 20.0) -> RedisCluster:
        self.nodes = [RedisServer(self.dir / f"node-{i}", cluster_enabled=True) for i in range(self.masters)]
        try:
            for node in self.nodes:
                node.start()
            addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
            created = subprocess.run(
                [REDIS_CLI, "--cluster", "create", *addresses, "--cluster-replicas", "0", "--cluster-yes"],
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
            if created.returncode != 0:
                raise RuntimeError(f"redis-cli --cluster create failed:\n{created.stdout}\n{created.stderr}")
            self.wait_ok(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _ok(self) -> bool:
        for node in self.nodes:
            if not node.running:
                raise RuntimeError(f"cluster node on port {node.port} exited:\n{node._log_tail()}")
            try:
                info = node.sync_client().execute_command("CLUSTER INFO")
            except (redis.ConnectionError, redis.TimeoutError):
                return False
            # redis-py parses the reply into a dict of str.
            if not isinstance(info, dict) or info.get("cluster_state") != "ok":
                return False
        return True

    def wait_ok(self, timeout: float = 20.0) -> None:
        wait_until(self._ok, timeout=timeout, what="every cluster node to report cluster_state:ok")

    def client(self) -> redis.asyncio.RedisCluster:
        """An asyncio cluster client started from one node (close it after use)."""
        return redis.asyncio.RedisCluster.from_url(self.url)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def kill(self) -> None:
        """SIGKILL every node at once."""
        for node in self.nodes:
            node.kill()

    def restart(self, timeout: float = 20.0) -> RedisCluster:
        """Every node again on its port, AOF and nodes.conf; wait until the cluster is whole."""
        for node in self.nodes:
            node.restart()
        self.wait_ok(timeout)
        return self


Deployment = RedisServer | RedisCluster
Client = redis.asyncio.Redis | redis.asyncio.RedisCluster


Connect = Callable[[], Awaitable[Client]]


async def clients_of(deployment: Deployment) -> AsyncIterator[Connect]:
    """An opener of clients of the deployment, for a fixture to yield; each closed afterwards."""
    clients: list[Client] = []

    async def open_one() -> Client:
        clients.append(await connect(deployment))
        return clients[-1]

    yield open_one
    for client in clients:
        await client.aclose()


async def connect(deployment: Deployment) -> Client:
    """An asyncio client of either deployment, ready to route (close it after use)."""
    client = deployment.client()
    if isinstance(client, redis.asyncio.RedisCluster):
        # A cluster client learns the slots on its first command; a subscription needs them before.
        await client.initialize()
    return client


class LiveSubscriber:
    """A sharded subscription (SSUBSCRIBE) to one channel, confirmed before ``async with`` returns."""

    def __init__(self, client: Client, channel: str) -> None:
        self._cluster = isinstance(client, redis.asyncio.RedisCluster)
        self._pubsub: Any = client.pubsub()
        self.channel = channel

    async def __aenter__(self) -> LiveSubscriber:
        await self._pubsub.ssubscribe(self.channel)
        # Until Redis confirms, a commit on another connection could be published before we listen.
        message = await self._message(timeout=5.0, data_only=False)
        if message["type"] != "ssubscribe":
            raise AssertionError(f"expected the ssubscribe confirmation, got {message}")
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._pubsub.aclose()

    async def next(self, timeout: float = 5.0) -> LiveCommit:
        """The next commit published on the channel."""
        return decode_live((await self._message(timeout=timeout, data_only=True))["data"])

    async def _message(self, *, timeout: float, data_only: bool) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            if self._cluster:
                message = await self._pubsub.get_sharded_message(timeout=left)
            else:
                message = await self._pubsub.get_message(timeout=left)
            if message is not None and (message["type"] == "smessage" or not data_only):
                return dict(message)
        raise TimeoutError(f"nothing arrived on {self.channel} within {timeout}s")
