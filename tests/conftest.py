"""Fixtures: real servers on loopback with ephemeral ports, tokens for each role, and real redis-servers."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.client import close_all
from tests.support.jupyter import launch_chromium
from tests.support.redis import RedisCluster, RedisServer
from tests.support.server import ServerProcess, Tokens, write_users


@pytest.fixture(autouse=True)
async def _close_client_connections() -> AsyncIterator[None]:
    yield
    await close_all()


@pytest.fixture(scope="session")
def users(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Tokens]:
    path = tmp_path_factory.mktemp("users") / "users.json"
    return path, write_users(path)


@pytest.fixture(scope="session")
def tokens(users: tuple[Path, Tokens]) -> Tokens:
    return users[1]


@pytest.fixture(scope="session")
def shared_server(
    users: tuple[Path, Tokens], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """One server for tests that only need default settings and isolate themselves by user."""
    log = tmp_path_factory.mktemp("shared-server") / "server.log"
    server = ServerProcess(users[0], log).start()
    yield server
    server.stop()


@pytest.fixture
async def start_server(
    users: tuple[Path, Tokens], tmp_path: Path
) -> AsyncIterator[Callable[..., ServerProcess]]:
    """Start a server with extra flags; every one started is stopped after the test."""
    started: list[ServerProcess] = []

    def start(*args: str, users_file: Path | None = None, env: dict[str, str] | None = None) -> ServerProcess:
        log = tmp_path / f"server-{len(started)}.log"
        server = ServerProcess(users_file or users[0], log, list(args), env or {})
        started.append(server)
        return server.start()

    yield start
    await close_all()  # before the servers go, or each would wait out its close timeout
    for server in started:
        if server.proc is not None and server.proc.poll() is None:
            server.stop()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own (AOF, ``appendfsync always``, a free port), gone after the test."""
    server = RedisServer(tmp_path / "redis")
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture
def redis_cluster(tmp_path: Path) -> Iterator[RedisCluster]:
    """A Redis Cluster of this test's own: three masters, no replicas, every node gone after the test."""
    cluster = RedisCluster(tmp_path / "redis-cluster")
    try:
        yield cluster.start()
    finally:
        cluster.stop()


@pytest.fixture
def page() -> Iterator[Any]:
    """A page of Debian's Chromium (headless, driven by Playwright), closed after the test."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        yield browser.new_page(viewport={"width": 1400, "height": 1000})
        browser.close()
