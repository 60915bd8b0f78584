"""The ``--redis`` client factory and the cluster's users in Redis, on real redis-servers.

One URL opens a client of a single Redis, a Redis Cluster or a unix socket,
which keeps working across a Redis restart; a Redis that is away is
``Unavailable`` at once, with the URL's password hidden. Users added,
rotated or removed through one store reach every node's watcher within a
second, concurrent admins lose nothing, a node keeps its users while Redis
is away (and says so once), and ``alphaflow-live users ... --redis`` prints
what the file version prints, naming the cluster.
"""

from __future__ import annotations

import asyncio
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, cast

import msgspec
import pytest
import redis
import redis.asyncio

from alphaflow_server.auth import TokenStore, UserRecord, hash_token
from alphaflow_server.cluster.connect import SyncClient, open_client, open_sync_client, redacted
from alphaflow_server.cluster.redis_log import Client, Unavailable
from alphaflow_server.cluster.users import (
    READ_USERS,
    USERS_RECORDS_KEY,
    USERS_VERSION_KEY,
    InvalidUsers,
    RedisUserStore,
    RedisUsersWatcher,
)
from tests.support.cli import run_cli
from tests.support.redis import Deployment, RedisServer
from tests.support.wait import async_wait_until

pytestmark = pytest.mark.timeout(60)

TOKEN_LINE = "token (shown once; only its hash is stored): "
PROPAGATION_S = 1.0  # the promise: a change reaches every node within a second


@pytest.fixture
def sync_store(deployment: Deployment) -> Iterator[RedisUserStore]:
    client = open_sync_client(deployment.url)
    yield RedisUserStore(client)
    client.close()


@pytest.fixture
async def node_client(deployment: Deployment) -> AsyncIterator[Client]:
    client = await open_client(deployment.url)
    yield client
    await client.aclose()


class CountingWatcher(RedisUsersWatcher):
    """Counts refreshes, so a test can wait for some to pass instead of sleeping."""

    refreshes = 0

    async def refresh(self) -> bool:
        self.refreshes += 1
        return await super().refresh()


@asynccontextmanager
async def running(
    watcher: RedisUsersWatcher, on_error: Callable[[Exception | None], None] | None = None
) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(watcher.run(on_error))
    try:
        yield task
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def authenticates_within(watcher: RedisUsersWatcher, token: str, name: str | None) -> None:
    """Wait until ``token`` is ``name``'s on the watcher (None: until it is nobody's)."""

    async def settled() -> bool:
        principal = watcher.current(time.monotonic()).authenticate(token)
        return (principal.name if principal else None) == name

    await async_wait_until(
        settled, timeout=PROPAGATION_S, what=f"the watcher to resolve the token to {name!r}"
    )


# --- the client factory ---


def test_redacted_hides_the_password_in_user_info_and_query() -> None:
    assert redacted("redis://app:s3cret@db:6379/0") == "redis://app:***@db:6379/0"
    assert redacted("rediss://:s3cret@db:6380") == "rediss://:***@db:6380"
    assert (
        redacted("unix:///run/redis.sock?password=s3cret&db=1") == "unix:///run/redis.sock?password=***&db=1"
    )
    assert redacted("redis://127.0.0.1:6379") == "redis://127.0.0.1:6379"


async def test_a_url_that_is_not_redis_is_refused_before_connecting() -> None:
    with pytest.raises(ValueError, match="not a Redis URL") as refused:
        await open_client("http://user:s3cret@127.0.0.1:1")
    assert "s3cret" not in str(refused.value)
    with pytest.raises(ValueError, match="not a Redis URL"):
        open_sync_client("127.0.0.1:6379")


async def test_open_client_on_one_server_keeps_working_across_a_restart(redis_server: RedisServer) -> None:
    client = await open_client(redis_server.url)
    try:
        assert type(client) is redis.asyncio.Redis
        assert client.get_encoder().decode_responses is False  # type: ignore[no-untyped-call]
        await client.set("afl:{t}:k", b"kept")
        redis_server.kill()
        redis_server.restart()
        # The pooled connection died with the old process: the next command reconnects on its own.
        assert await client.get("afl:{t}:k") == b"kept"
    finally:
        await client.aclose()


async def test_open_client_on_a_cluster_routes_and_keeps_working_across_a_restart(
    redis_cluster: Deployment,
) -> None:
    client = await open_client(redis_cluster.url)
    try:
        assert type(client) is redis.asyncio.RedisCluster
        # Keys of all three masters' slots, through one startup node's URL.
        keys = [f"afl:{{user-{i}}}:k" for i in range(30)]
        for key in keys:
            await client.set(key, key.encode())
        redis_cluster.kill()
        redis_cluster.restart()
        assert [await client.get(key) for key in keys] == [key.encode() for key in keys]
    finally:
        await client.aclose()


async def test_open_client_over_a_unix_socket(tmp_path: Path) -> None:
    # A socket path must fit in 107 bytes, which a pytest tmp_path may not.
    with tempfile.TemporaryDirectory(prefix="afl-") as short:
        socket_path = Path(short) / "redis.sock"
        server = RedisServer(tmp_path / "redis", extra_args=["--unixsocket", str(socket_path)]).start()
        try:
            client = await open_client(f"unix://{socket_path}")
            try:
                assert type(client) is redis.asyncio.Redis
                await client.set("afl:{t}:k", b"over the socket")
                assert server.sync_client().get("afl:{t}:k") == b"over the socket"
            finally:
                await client.aclose()
            sync_client = open_sync_client(f"unix://{socket_path}")
            assert sync_client.get("afl:{t}:k") == b"over the socket"
            sync_client.close()
        finally:
            server.stop()


def test_open_sync_client_takes_either_deployment(deployment: Deployment) -> None:
    client = open_sync_client(deployment.url)
    try:
        expected = redis.Redis if isinstance(deployment, RedisServer) else redis.RedisCluster
        assert type(client) is expected
        client.set("afl:{t}:k", b"v")
        assert client.get("afl:{t}:k") == b"v"
    finally:
        client.close()


async def test_open_client_on_a_stopped_redis_is_unavailable_at_once_without_the_password(
    redis_server: RedisServer,
) -> None:
    redis_server.stop()
    url = f"redis://admin:s3cret@127.0.0.1:{redis_server.port}/0"
    started = time.monotonic()
    with pytest.raises(Unavailable) as unreachable:
        await open_client(url)
    with pytest.raises(Unavailable) as sync_unreachable:
        open_sync_client(url)
    elapsed = time.monotonic() - started
    for error in (unreachable.value, sync_unreachable.value):
        message = str(error)
        assert f"redis://admin:***@127.0.0.1:{redis_server.port}/0" in message, message
        assert "s3cret" not in message, message
    assert elapsed < 5, f"a refused connection should fail in about a second, took {elapsed:.1f}s"


async def test_open_client_on_a_stopped_cluster_is_unavailable(redis_cluster: Deployment) -> None:
    redis_cluster.stop()
    with pytest.raises(Unavailable, match="cannot reach Redis"):
        await open_client(redis_cluster.url)


# --- users in Redis ---


async def test_add_rotate_remove_reach_a_watcher_within_a_second(
    sync_store: RedisUserStore, node_client: Client
) -> None:
    watcher = RedisUsersWatcher(node_client, refresh_s=0.2)
    await watcher.load()
    assert len(watcher.store) == 0
    async with running(watcher):
        token = sync_store.add("alice", "user")
        await authenticates_within(watcher, token, "alice")
        new_token = sync_store.rotate("alice")
        await authenticates_within(watcher, token, None)
        await authenticates_within(watcher, new_token, "alice")
        sync_store.remove("alice")
        await authenticates_within(watcher, new_token, None)
    assert len(watcher.store) == 0


async def test_the_default_refresh_reaches_two_nodes_within_a_second(
    deployment: Deployment, sync_store: RedisUserStore
) -> None:
    clients = [await open_client(deployment.url) for _ in range(2)]
    try:
        watchers = [RedisUsersWatcher(client) for client in clients]
        for watcher in watchers:
            await watcher.load()
        async with running(watchers[0]), running(watchers[1]):
            token = sync_store.add("bob", "service")
            await asyncio.gather(*(authenticates_within(w, token, "bob") for w in watchers))
    finally:
        for client in clients:
            await client.aclose()


def test_redis_holds_exactly_the_users_file_record_and_bumps_the_version(
    deployment: Deployment, sync_store: RedisUserStore
) -> None:
    client = open_sync_client(deployment.url)
    try:
        token = sync_store.add("carol", "admin", token="afl_given-token")
        assert token == "afl_given-token"
        stored = client.hget(USERS_RECORDS_KEY, "carol")
        assert isinstance(stored, bytes)
        assert token.encode() not in stored
        record = msgspec.json.decode(stored, type=UserRecord)
        assert (record.name, record.role, record.token_sha256) == ("carol", "admin", hash_token(token))
        assert stored == msgspec.json.encode(record), "the record is stored as the users file encodes it"
        first = int(client.get(USERS_VERSION_KEY) or 0)
        sync_store.rotate("carol")
        sync_store.add("dave", "user")
        sync_store.remove("dave")
        assert int(client.get(USERS_VERSION_KEY) or 0) == first + 3, "every change bumps the version once"
        assert [r.name for r in sync_store.load().records()] == ["carol"]
    finally:
        client.close()


def test_an_existing_user_or_an_unknown_one_is_refused_and_nothing_changes(
    sync_store: RedisUserStore,
) -> None:
    token = sync_store.add("erin", "user")
    with pytest.raises(ValueError, match="user 'erin' exists"):
        sync_store.add("erin", "admin")
    with pytest.raises(KeyError, match="no user 'nobody'"):
        sync_store.rotate("nobody")
    with pytest.raises(KeyError, match="no user 'nobody'"):
        sync_store.remove("nobody")
    with pytest.raises(ValueError, match="invalid user name"):
        sync_store.add("has space", "user")
    store = sync_store.load()
    assert [(r.name, r.role) for r in store.records()] == [("erin", "user")]
    principal = store.authenticate(token)
    assert principal is not None and principal.name == "erin"


def test_concurrent_adds_from_two_stores_lose_nothing(deployment: Deployment) -> None:
    per_admin = 25
    tokens: dict[str, str] = {}
    failures: list[BaseException] = []
    start = threading.Barrier(2)

    def admin(tag: str) -> None:
        client = open_sync_client(deployment.url)
        try:
            store = RedisUserStore(client)
            start.wait(timeout=10)
            for i in range(per_admin):
                name = f"{tag}-{i}"
                tokens[name] = store.add(name, "user")
        except BaseException as error:
            failures.append(error)
        finally:
            client.close()

    threads = [threading.Thread(target=admin, args=(tag,)) for tag in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not failures, failures
    assert not any(thread.is_alive() for thread in threads)
    client = open_sync_client(deployment.url)
    try:
        store = RedisUserStore(client).load()
    finally:
        client.close()
    assert sorted(r.name for r in store.records()) == sorted(tokens), "every add survived"
    for name, token in tokens.items():
        principal = store.authenticate(token)
        assert principal is not None and principal.name == name


class Interleaved:
    """A client on which another admin's change lands between a store's read and its write, once."""

    def __init__(self, client: SyncClient, between: Callable[[], object]) -> None:
        self._client = client
        self._between: Callable[[], object] | None = between

    def register_script(self, script: str) -> Callable[..., Any]:
        registered = self._client.register_script(script)
        if script != READ_USERS:
            return registered

        def read(**kwargs: Any) -> Any:
            reply = registered(**kwargs)
            between, self._between = self._between, None
            if between is not None:
                between()
            return reply

        return read


Interleave = Callable[[Callable[[], object]], RedisUserStore]


@pytest.fixture
def interleaved_store(deployment: Deployment) -> Iterator[Interleave]:
    """Stores on each of which ``between`` runs once, right after the store's first read."""
    clients: list[SyncClient] = []

    def make(between: Callable[[], object]) -> RedisUserStore:
        clients.append(open_sync_client(deployment.url))
        return RedisUserStore(cast(SyncClient, Interleaved(clients[-1], between)))

    yield make
    for client in clients:
        client.close()


def test_a_change_that_lands_between_read_and_write_is_kept(
    interleaved_store: Interleave, sync_store: RedisUserStore
) -> None:
    theirs: dict[str, str] = {}

    def other_admin_adds_zed() -> None:
        theirs["zed"] = sync_store.add("zed", "user")

    # Both add 'zed': the later write sees the version moved, reloads, and is refused as a duplicate.
    with pytest.raises(ValueError, match="user 'zed' exists"):
        interleaved_store(other_admin_adds_zed).add("zed", "admin")
    principal = sync_store.load().authenticate(theirs["zed"])
    assert principal is not None and principal.role == "user", "the first add of 'zed' was overwritten"

    # Different names: the write is retried on top of the other change, and both are kept.
    mine = interleaved_store(lambda: sync_store.add("yan", "user")).add("xia", "service")
    store = sync_store.load()
    assert sorted(r.name for r in store.records()) == ["xia", "yan", "zed"]
    assert store.authenticate(mine) is not None

    # A rotate raced by a remove finds the user gone rather than bringing it back.
    with pytest.raises(KeyError, match="no user 'xia'"):
        interleaved_store(lambda: sync_store.remove("xia")).rotate("xia")
    assert sync_store.load().get("xia") is None


async def test_while_redis_is_down_the_watcher_keeps_its_users_and_reports_once(
    redis_server: RedisServer,
) -> None:
    admin = open_sync_client(redis_server.url)
    client = await open_client(redis_server.url)
    try:
        token = RedisUserStore(admin).add("frank", "user")
        watcher = CountingWatcher(client, refresh_s=0.05)
        await watcher.load()
        reports: list[Exception | None] = []
        async with running(watcher, reports.append) as task:
            redis_server.kill()
            await async_wait_until(
                _ready(lambda: len(reports) == 1), timeout=10, what="the outage to be reported"
            )
            assert isinstance(reports[0], Unavailable), reports
            assert watcher.error is not None
            seen = watcher.refreshes
            await async_wait_until(
                _ready(lambda: watcher.refreshes >= seen + 5), timeout=10, what="five more failed refreshes"
            )
            assert len(reports) == 1, f"one report per outage, got {reports}"
            assert not task.done()
            principal = watcher.current(time.monotonic()).authenticate(token)
            assert principal is not None and principal.name == "frank", "the last users keep serving"

            redis_server.restart()
            await async_wait_until(
                _ready(lambda: len(reports) == 2), timeout=10, what="the recovery to be reported"
            )
            assert reports[1] is None, reports
            assert not watcher.error, watcher.error
            later = RedisUserStore(admin).add("grace", "user")
            await authenticates_within(watcher, later, "grace")
    finally:
        admin.close()
        await client.aclose()


async def test_first_load_on_a_stopped_redis_is_unavailable(redis_server: RedisServer) -> None:
    client = await open_client(redis_server.url)
    try:
        redis_server.stop()
        watcher = RedisUsersWatcher(client)
        with pytest.raises(Unavailable, match="Redis cannot serve the users"):
            await watcher.load()
    finally:
        await client.aclose()


async def test_a_redis_that_lost_its_users_is_never_mistaken_for_the_old_version(
    redis_server: RedisServer,
) -> None:
    admin = open_sync_client(redis_server.url)
    client = await open_client(redis_server.url)
    try:
        users = RedisUserStore(admin)
        users.add("old", "user")
        watcher = RedisUsersWatcher(client)
        await watcher.load()
        admin.flushall()
        token = users.add("new", "user")
        # Counting from 1 again would repeat the cached version, and the watcher would keep 'old'.
        assert await watcher.refresh() is True
        assert [r.name for r in watcher.store.records()] == ["new"]
        principal = watcher.store.authenticate(token)
        assert principal is not None and principal.name == "new"
    finally:
        admin.close()
        await client.aclose()


async def test_a_record_written_by_hand_that_does_not_decode_keeps_the_last_users(
    redis_server: RedisServer,
) -> None:
    admin = open_sync_client(redis_server.url)
    client = await open_client(redis_server.url)
    try:
        token = RedisUserStore(admin).add("heidi", "user")
        watcher = RedisUsersWatcher(client, refresh_s=0.05)
        await watcher.load()
        reports: list[Exception | None] = []
        async with running(watcher, reports.append):
            admin.hset(USERS_RECORDS_KEY, "mallory", b"{not json")
            admin.incr(USERS_VERSION_KEY)
            await async_wait_until(_ready(lambda: bool(reports)), timeout=5, what="the bad record reported")
        assert isinstance(reports[0], InvalidUsers) and "mallory" in str(reports[0]), reports
        assert watcher.store.authenticate(token) is not None
    finally:
        admin.close()
        await client.aclose()


def _ready(condition: Callable[[], bool]) -> Callable[[], Awaitable[bool]]:
    """A plain condition for ``async_wait_until``."""

    async def check() -> bool:
        return condition()

    return check


# --- alphaflow-live users ... --redis ---


def _token_of(stdout: str) -> str:
    (line,) = [line for line in stdout.splitlines() if line.startswith(TOKEN_LINE)]
    return line.removeprefix(TOKEN_LINE)


def _redis_users(deployment: Deployment) -> TokenStore:
    client = open_sync_client(deployment.url)
    try:
        return RedisUserStore(client).load()
    finally:
        client.close()


def test_cli_users_with_redis_prints_the_file_lines_naming_the_cluster(
    deployment: Deployment, tmp_path: Path
) -> None:
    url, where = deployment.url, f"the cluster at {deployment.url}"
    users_file = tmp_path / "users.json"
    common = ["--redis", url, "--users-file", str(users_file)]

    added = run_cli("users", "add", "ivan", "--role", "service", *common)
    assert added.returncode == 0, added.stderr
    assert added.stdout.splitlines()[0] == f"created service 'ivan' in {where}"
    token = _token_of(added.stdout)
    principal = _redis_users(deployment).authenticate(token)
    assert principal is not None and (principal.name, principal.role) == ("ivan", "service")
    assert not users_file.exists(), "with --redis the users file is not touched"

    listed = run_cli("users", "list", *common)
    assert listed.returncode == 0, listed.stderr
    (line,) = listed.stdout.splitlines()
    assert line.startswith("ivan\tservice\tcreated "), line

    duplicate = run_cli("users", "add", "ivan", *common)
    assert duplicate.returncode == 1
    assert duplicate.stderr.strip().splitlines() == [
        "alphaflow-live users: user 'ivan' exists; use 'users rotate ivan' for a new token"
    ]

    rotated = run_cli("users", "rotate", "ivan", *common)
    assert rotated.returncode == 0, rotated.stderr
    assert rotated.stdout.splitlines()[0] == f"new token for 'ivan' in {where}"
    new_token = _token_of(rotated.stdout)
    store = _redis_users(deployment)
    assert store.authenticate(token) is None and store.authenticate(new_token) is not None

    removed = run_cli("users", "remove", "ivan", *common)
    assert (removed.returncode, removed.stdout) == (0, f"removed 'ivan' from {where}\n"), removed.stderr
    unknown = run_cli("users", "remove", "ivan", *common)
    assert (unknown.returncode, unknown.stderr) == (1, "alphaflow-live users: no user 'ivan'\n")

    empty = run_cli("users", "list", *common)
    assert (empty.returncode, empty.stdout) == (0, f"no users in {where}\n")


def test_cli_users_takes_the_redis_url_from_the_environment(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    env = {"ALPHAFLOW_REDIS": redis_server.url}
    added = run_cli("users", "add", "judy", "--users-file", str(tmp_path / "users.json"), env=env)
    assert added.returncode == 0, added.stderr
    assert added.stdout.splitlines()[0] == f"created user 'judy' in the cluster at {redis_server.url}"
    assert _redis_users(redis_server).authenticate(_token_of(added.stdout)) is not None


def test_cli_users_without_redis_uses_the_users_file_as_before(tmp_path: Path) -> None:
    users_file = tmp_path / "users.json"
    added = run_cli("users", "add", "kim", "--users-file", str(users_file), env={"ALPHAFLOW_REDIS": ""})
    assert added.returncode == 0, added.stderr
    assert added.stdout.splitlines()[0] == f"created user 'kim' in {users_file}"
    assert _token_of(added.stdout)
    assert users_file.exists()


def test_cli_users_with_an_unreachable_redis_fails_with_one_line(redis_server: RedisServer) -> None:
    redis_server.stop()
    url = f"redis://admin:s3cret@127.0.0.1:{redis_server.port}"
    for action in (["list"], ["add", "lee"], ["rotate", "lee"], ["remove", "lee"]):
        result = run_cli("users", *action, "--redis", url)
        assert result.returncode == 2, (action, result.stdout, result.stderr)
        (line,) = result.stderr.splitlines()
        assert line.startswith("alphaflow-live users: cannot reach Redis at redis://admin:***@127.0.0.1:"), (
            line
        )
        assert "s3cret" not in result.stderr and result.stdout == ""


def test_cli_users_refuses_a_url_that_is_not_redis() -> None:
    result = run_cli("users", "list", "--redis", "http://127.0.0.1:1")
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert "is not a Redis URL" in line, line
