"""Fixtures of the integration tests that run on both Redis deployments."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.support.redis import Connect, Deployment, clients_of


@pytest.fixture(params=["server", "cluster"])
def deployment(request: pytest.FixtureRequest) -> Deployment:
    """The test runs twice: on one redis-server, then on the 3-master Redis Cluster."""
    deployment: Deployment = request.getfixturevalue(f"redis_{request.param}")
    return deployment


@pytest.fixture
async def open_client(deployment: Deployment) -> AsyncIterator[Connect]:
    """Open clients of the deployment (each its own connections); all closed after the test."""
    async for opener in clients_of(deployment):
        yield opener
