"""A cluster of real ``alphaflow-live serve`` nodes over one real Redis, for the cluster tests (issue 15).

Why a harness of its own: the cluster's promises are about processes that
die, stall and come back (kill -9, SIGSTOP past a lease, Redis restarted on
its AOF), so the tests need every piece as a real process they can signal,
and a view of who owns what that comes from the nodes themselves
(``/healthz``), never from a guess. What it does:

* Redis: a ``RedisServer`` of its own (AOF, ``appendfsync always``, its own
  dir and free port) unless it is handed a running ``RedisCluster``.
* Users are added as an operator would, with ``alphaflow-live users add
  NAME --role ROLE --redis URL``, so the tests also show that a token made
  by the command works on every node.
* Nodes ``a``, ``b``, ``c``: each its own state dir and log under the
  cluster's dir, a free port chosen by the node (``--port 0``) and kept
  across restarts, so the URLs a client was given stay right.
* Every child is forked by one long-lived thread and dies with it
  (``PR_SET_PDEATHSIG``, as tests/support/redis.py does for redis-server):
  the signal is tied to the thread that forked, so forking from a thread
  pool that ends with each test's loop would kill nodes mid-test, and forking
  from no thread in particular would leave nodes behind a pytest killed hard.
* Every wait polls a condition against a deadline; ``stop()`` ends
  everything, SIGCONTing a paused node first, even after a failure.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import sys
import urllib.error
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from alphaflow_live.codes import HEALTH_PATH, PORTFOLIO_PATH
from alphaflow_server.cluster.leases import partition_of

from .cli import run_cli
from .client import http_get
from .redis import RedisCluster, RedisServer, _die_with_parent
from .server import ServerProcess
from .wait import async_wait_until, wait_until

NODE_IDS = ("a", "b", "c")
# Few partitions, so that balance and takeover are quick to reach and easy to read in a failure.
PARTITIONS = 8
# Short leases keep takeovers (and so the tests) quick; every bound in the tests is derived from it.
LEASE_S = 2.0
# Small batches, so that a client sees a publish about at once.
BATCH_WINDOW_MS = 20
TOKEN_LINE = re.compile(r"token \(shown once; only its hash is stored\): (?P<token>\S+)")
# How long one /healthz may take before the node counts as not answering.
HEALTH_TIMEOUT_S = 2.0

T = TypeVar("T")


async def until(
    condition: Callable[[], Awaitable[T | None]],
    *,
    timeout: float,
    what: str,
    seen: Callable[[], object],
    interval: float = 0.05,
) -> T:
    """``async_wait_until``, whose timeout also says what was ``seen()`` last (read when it times out)."""
    try:
        return await async_wait_until(condition, timeout=timeout, what=what, interval=interval)
    except TimeoutError as exc:
        raise TimeoutError(f"{exc}; last seen: {seen()}") from None


@dataclass(frozen=True)
class ClusterTokens:
    """One token per role, as tests/support/server.py's ``Tokens``, plus the simulator's ``demo`` user."""

    alice: str
    bob: str
    service: str
    admin: str
    demo: str


# (name, role, the ClusterTokens field)
USERS = (
    ("alice", "user", "alice"),
    ("bob", "user", "bob"),
    ("svc", "service", "service"),
    ("ops", "admin", "admin"),
    ("demo", "user", "demo"),
)


@dataclass
class Node(ServerProcess):
    """One cluster node: a ``ServerProcess`` forked by the cluster's spawner thread, that can be paused."""

    node_id: str = ""
    spawner: ThreadPoolExecutor | None = None
    # SIGSTOPped and not yet SIGCONTed: it holds its sockets but answers nothing.
    paused: bool = False

    def start(self, timeout: float = 20.0) -> Node:
        self.spawn()
        self.wait_listening(timeout)
        return self

    def spawn(self) -> None:
        """Fork the node (on the spawner thread) without waiting for it to listen."""
        command = [
            sys.executable, "-m", "alphaflow_server", "serve",
            "--host", "127.0.0.1", "--port", str(self.port), "--source", "none",
            "--users-file", str(self.users_file), "--state-dir", str(self.state_dir), *self.args,
        ]  # fmt: skip
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        assert self.spawner is not None, "a Node is started by its Cluster"
        self.proc = self.spawner.submit(self._popen, command).result()
        self.paused = False

    def _popen(self, command: list[str]) -> subprocess.Popen[bytes]:
        with self.log_path.open("ab") as log:
            return subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=_die_with_parent,
            )

    def wait_listening(self, timeout: float = 20.0) -> None:
        match = wait_until(
            self._listening, timeout=timeout, what=f"node {self.node_id} to listen (log: {self.log_path})"
        )
        self.port = int(match.group("port"))

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def serving(self) -> bool:
        """Alive and not paused: it answers requests."""
        return self.alive and not self.paused

    def kill9(self) -> None:
        if self.proc is not None and self.alive:
            self.proc.kill()  # SIGKILL ends a stopped process too
            self.proc.wait(timeout=10)
        self.paused = False

    def sigstop(self) -> None:
        assert self.proc is not None and self.alive, f"node {self.node_id} is not running"
        self.proc.send_signal(signal.SIGSTOP)
        self.paused = True

    def sigcont(self) -> None:
        if self.proc is not None and self.alive:
            self.proc.send_signal(signal.SIGCONT)
        self.paused = False

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        """As ``ServerProcess.stop``; a paused node is SIGCONTed first, or only SIGKILL would land."""
        if self.paused:
            self.sigcont()
        return super().stop(sig, timeout)

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log().splitlines()[-lines:]) or f"(no log at {self.log_path})"


class Cluster:
    """Redis, the users and the nodes of one test; ``start()`` it, and ``stop()`` it whatever happened."""

    def __init__(
        self,
        dir: Path,
        *,
        redis: RedisCluster | None = None,
        node_ids: Sequence[str] = NODE_IDS,
        partitions: int = PARTITIONS,
        lease_s: float = LEASE_S,
        node_args: Sequence[str] = (),
    ) -> None:
        self.dir = dir
        self.redis: RedisServer | RedisCluster = redis if redis is not None else RedisServer(dir / "redis")
        self._owns_redis = redis is None
        self.node_ids = tuple(node_ids)
        self.partitions = partitions
        self.lease_s = lease_s
        self.node_args = list(node_args)
        self.nodes: dict[str, Node] = {}
        self._tokens: ClusterTokens | None = None
        self._spawner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cluster-spawner")
        # The last /healthz answers seen, for the messages of waits that time out.
        self.last_health: dict[str, dict[str, Any] | None] = {}

    # ------------------------------------------------------------ lifecycle

    def start(self, timeout: float = 30.0) -> Cluster:
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            if self._owns_redis:
                self._spawner.submit(self.redis.start).result()
            self._tokens = self._add_users()
            for node_id in self.node_ids:
                node_dir = self.dir / f"node-{node_id}"
                node_dir.mkdir(parents=True, exist_ok=True)
                self.nodes[node_id] = Node(
                    # Never written in cluster mode (users come from Redis); a file of the node's own, so
                    # that nothing ever falls back to the user's real users file.
                    users_file=node_dir / "users.json",
                    log_path=node_dir / "server.log",
                    state_dir=node_dir / "state",
                    args=self._args(node_id),
                    node_id=node_id,
                    spawner=self._spawner,
                )
            # Forked together and then waited for: their start-ups overlap.
            for node in self.nodes.values():
                node.spawn()
            for node in self.nodes.values():
                node.wait_listening(timeout)
        except BaseException:
            self.stop()
            raise
        for node in self.nodes.values():
            print(f"cluster node {node.node_id}: {node.ws_base} log {node.log_path}")
        return self

    def _args(self, node_id: str) -> list[str]:
        return [
            "--redis", self.redis.url, "--node-id", node_id, "--partitions", str(self.partitions),
            "--lease-s", str(self.lease_s), "--batch-window-ms", str(BATCH_WINDOW_MS), *self.node_args,
        ]  # fmt: skip

    def _add_users(self) -> ClusterTokens:
        tokens: dict[str, str] = {}
        for name, role, attribute in USERS:
            added = run_cli("users", "add", name, "--role", role, "--redis", self.redis.url)
            match = TOKEN_LINE.search(added.stdout)
            if added.returncode != 0 or match is None:
                raise RuntimeError(
                    f"`alphaflow-live users add {name} --role {role} --redis {self.redis.url}` "
                    f"exited {added.returncode} without a token line:\n{added.stdout}\n{added.stderr}"
                )
            tokens[attribute] = match.group("token")
        return ClusterTokens(**tokens)

    def stop(self) -> None:
        """Every node (SIGTERM at once, SIGKILL for one that will not go), then the Redis it started."""
        try:
            for node in self.nodes.values():
                if node.paused:
                    node.sigcont()
                if node.proc is not None and node.alive:
                    node.proc.terminate()
            for node in self.nodes.values():
                if node.proc is None:
                    continue
                try:
                    node.proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    node.kill9()
        finally:
            try:
                if self._owns_redis:
                    self.redis.stop()
            finally:
                self._spawner.shutdown(wait=True)

    # --------------------------------------------------------------- access

    @property
    def tokens(self) -> ClusterTokens:
        assert self._tokens is not None, "the cluster is not started"
        return self._tokens

    def node(self, node_id: str) -> Node:
        return self.nodes[node_id]

    def ws_base(self, node_id: str) -> str:
        return self.nodes[node_id].ws_base

    def http_base(self, node_id: str) -> str:
        return self.nodes[node_id].http_base

    def portfolio_url(self, node_id: str) -> str:
        return self.ws_base(node_id) + PORTFOLIO_PATH

    def portfolio_urls(self) -> list[str]:
        return [self.portfolio_url(node_id) for node_id in self.node_ids]

    def node_of_url(self, url: str) -> str:
        """The node a client's URL points at."""
        for node_id in self.node_ids:
            if url.startswith(self.ws_base(node_id) + "/"):
                return node_id
        raise AssertionError(f"{url} is no node's URL ({self.portfolio_urls()})")

    def others(self, *node_ids: str) -> list[str]:
        """The nodes besides ``node_ids``, in order."""
        return [node_id for node_id in self.node_ids if node_id not in node_ids]

    def serving(self) -> list[str]:
        """The nodes alive and not paused."""
        return [node_id for node_id, node in self.nodes.items() if node.serving]

    def partition_of(self, user: str) -> int:
        return partition_of(user, self.partitions)

    def logs(self, lines: int = 40) -> str:
        return "\n".join(
            f"--- node {node_id} ({node.log_path}):\n{node.log_tail(lines)}"
            for node_id, node in self.nodes.items()
        )

    # ------------------------------------------------------------- signals

    def kill9(self, node_id: str) -> None:
        self.nodes[node_id].kill9()

    def sigstop(self, node_id: str) -> None:
        self.nodes[node_id].sigstop()

    def sigcont(self, node_id: str) -> None:
        self.nodes[node_id].sigcont()

    def restart(self, node_id: str) -> Node:
        """The node again on its port, state dir and log (stopped with SIGTERM first if it runs)."""
        node = self.nodes[node_id]
        if node.alive:
            node.stop()
        node.restart()
        return node

    def kill_redis(self) -> None:
        """SIGKILL the Redis this cluster started (a crash: only what AOF fsynced survives)."""
        assert isinstance(self.redis, RedisServer), "kill_redis is for the cluster's own redis-server"
        self.redis.kill()

    def restart_redis(self) -> None:
        """The cluster's redis-server again on its port and AOF (forked by the spawner, so it stays up)."""
        assert isinstance(self.redis, RedisServer), "restart_redis is for the cluster's own redis-server"
        self._spawner.submit(self.redis.restart).result()

    # ----------------------------------------------------- what nodes say

    async def health(self, node_id: str) -> dict[str, Any] | None:
        """``/healthz`` of the node, or None when it does not answer (killed, paused, not up yet)."""
        url = self.http_base(node_id) + HEALTH_PATH
        try:
            status, body, _ = await asyncio.to_thread(http_get, url, None, HEALTH_TIMEOUT_S)
        except (OSError, urllib.error.URLError):
            answer = None
        else:
            assert status in (200, 503), f"{url}: HTTP {status} {body!r}"
            answer = json.loads(body)
            assert isinstance(answer, dict), f"{url}: not a JSON object: {body!r}"
        self.last_health[node_id] = answer
        return answer

    async def claims(self) -> dict[str, list[int]] | None:
        """The partitions each serving node reports owning; None unless every serving node answered."""
        serving = self.serving()
        answers = await asyncio.gather(*(self.health(node_id) for node_id in serving))
        claims: dict[str, list[int]] = {}
        for node_id, answer in zip(serving, answers, strict=True):
            if answer is None or not isinstance(answer.get("partitions"), list):
                return None
            claims[node_id] = [int(p) for p in answer["partitions"]]
        return claims

    async def owner_of(self, user: str, timeout: float | None = None) -> str:
        """The one serving node that owns ``user``'s partition, once exactly one claims it."""
        partition = self.partition_of(user)

        async def sole_owner() -> str | None:
            claims = await self.claims()
            if claims is None:
                return None
            owners = [node_id for node_id, owned in claims.items() if partition in owned]
            return owners[0] if len(owners) == 1 else None

        return await until(
            sole_owner,
            timeout=timeout if timeout is not None else self.lease_s + 10,
            what=f"exactly one serving node to own partition {partition} (user {user!r})",
            seen=lambda: f"/healthz {self.last_health}",
        )

    async def wait_owned(
        self, *, balanced: bool = False, timeout: float | None = None
    ) -> dict[str, list[int]]:
        """Every partition owned by exactly one serving node (and, if ``balanced``, their shares within
        one of each other); the claims, by node."""

        async def settled() -> dict[str, list[int]] | None:
            claims = await self.claims()
            if not claims:
                return None
            owned = sorted(p for partitions in claims.values() for p in partitions)
            counts = [len(partitions) for partitions in claims.values()]
            if owned != list(range(self.partitions)):
                return None
            return claims if not balanced or max(counts) - min(counts) <= 1 else None

        return await until(
            settled,
            timeout=timeout if timeout is not None else self.lease_s * 3 + 10,
            what=f"the {self.partitions} partitions to be owned once each"
            f"{' and balanced' if balanced else ''} over {self.serving()}",
            seen=lambda: f"/healthz {self.last_health}",
        )

    async def wait_balanced(self, timeout: float | None = None) -> dict[str, list[int]]:
        """Every partition owned by exactly one serving node, and their shares within one of each other."""
        return await self.wait_owned(balanced=True, timeout=timeout)
