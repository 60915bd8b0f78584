"""The cluster acceptance suite (issue 15): several nodes over one Redis behave as one server.

Every test runs real processes: a redis-server of its own with AOF and
``appendfsync always`` (or the 3-master Redis Cluster of ``redis_cluster``),
users added with ``alphaflow-live users add ... --redis``, and three
``alphaflow-live serve --redis`` nodes ``a``, ``b``, ``c`` with short leases
(tests/support/cluster.py). What the suite shows, as PROTOCOL.md's
"Scale-out" and ARCHITECTURE.md's "Scale" promise it:

* a publish on any node reaches a client on any other, with one epoch and one
  contiguous seq, and the REST snapshot of a third node agrees;
* kill -9 of the node a client streams from: the client (given every URL)
  moves, resumes, and holds every fill exactly once;
* kill -9 of the owner of a user's partition, or SIGSTOP of it past its
  lease: acks resume within the lease (plus 2 s), the paused owner is fenced
  and gives its partitions up, and no acked fill is lost or doubled, with the
  books equal to a model computed from the acks alone;
* kill -9 of Redis and a restart on its AOF loses nothing acked; meanwhile
  every node says it is degraded and publishes are ``unavailable``;
* the per-user connection limit, the streaming flag and the admin stats hold
  cluster-wide, and a dead node's share is gone within its lease;
* with ``--source sim`` on every node exactly one simulator runs, and another
  node's takes over when its node dies;
* the first three again on a Redis Cluster.

No test sleeps for a condition: each polls with a deadline derived from the
lease, and each has a pytest-timeout mark. Every node, Redis and kernel client
a test starts is gone after it, also after a failure (whose node logs are
printed with the report).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Generator, Iterator
from pathlib import Path
from typing import Protocol

import pytest

from tests.support.client import close_all
from tests.support.cluster import Cluster
from tests.support.redis import RedisCluster

from .observing import LiveClient


class StartCluster(Protocol):
    """The ``start_cluster`` fixture: a started cluster whose nodes get ``node_args`` besides the defaults."""

    def __call__(self, *node_args: str, redis: RedisCluster | None = None) -> Cluster: ...


OpenLive = Callable[[list[str], str], LiveClient]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Keep each phase's report on the test item, so a fixture's teardown knows whether the test failed."""
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


def _failed(request: pytest.FixtureRequest) -> bool:
    return any(
        getattr(getattr(request.node, f"report_{when}", None), "failed", False) for when in ("setup", "call")
    )


@pytest.fixture
async def start_cluster(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[StartCluster]:
    """Start clusters under this test's ``tmp_path``; each is stopped after the test, come what may."""
    started: list[Cluster] = []

    def start(*node_args: str, redis: RedisCluster | None = None) -> Cluster:
        cluster = Cluster(tmp_path / f"cluster-{len(started)}", redis=redis, node_args=node_args)
        started.append(cluster)
        return cluster.start()

    try:
        yield start
    finally:
        await close_all()  # before the nodes go, or each would wait out its close timeout
        for cluster in started:
            if _failed(request):
                print(f"node logs of the failed test:\n{cluster.logs()}")
            cluster.stop()


@pytest.fixture
async def cluster(start_cluster: StartCluster) -> Cluster:
    """Three nodes on one redis-server of the test's own, every partition owned and balanced."""
    started = start_cluster()
    await started.wait_balanced()
    return started


@pytest.fixture
async def cluster_on_redis_cluster(redis_cluster: RedisCluster, start_cluster: StartCluster) -> Cluster:
    """Three nodes on the 3-master Redis Cluster of ``redis_cluster``, balanced.

    ``redis_cluster`` comes first so that it is torn down last: the nodes stop while Redis is still up.
    """
    started = start_cluster(redis=redis_cluster)
    await started.wait_balanced()
    return started


@pytest.fixture(params=["cluster", "cluster_on_redis_cluster"], ids=["redis-server", "redis-cluster"])
def any_cluster(request: pytest.FixtureRequest) -> Cluster:
    """Each test that takes it runs twice: on one redis-server and on a 3-master Redis Cluster."""
    started: Cluster = request.getfixturevalue(request.param)
    return started


@pytest.fixture
def open_live(start_cluster: StartCluster) -> Iterator[OpenLive]:
    """Kernel clients (``alphaflow_live``), closed after the test before any cluster stops."""
    opened: list[LiveClient] = []

    def open_one(urls: list[str], token: str) -> LiveClient:
        opened.append(LiveClient.connect(urls, token))
        return opened[-1]

    yield open_one
    for client in opened:
        client.close()
