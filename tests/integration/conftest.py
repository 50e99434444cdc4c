"""Fixtures for tests against real services: PostgreSQL, Redis, the app under each server."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator

import pytest

from app.config import SERVERS
from tests.conftest import SECRET, emptied
from tests.support import servers
from tests.support.servers import METRICS_TOKEN  # noqa: F401 - the tests read it from here
from tests.support.services import redis_key_prefix, require_redis


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    with redis_key_prefix("taskgate-test") as prefix:
        yield prefix


@pytest.fixture
def production_env(postgres_url: str, redis_prefix: str) -> dict[str, str]:
    """What an operator sets: production mode, PostgreSQL, the shared Redis."""
    return servers.production_env(emptied(postgres_url), require_redis(), redis_prefix, SECRET)


@pytest.fixture(params=SERVERS)  # every server serve.py can start
def app_server(request: pytest.FixtureRequest) -> Callable[..., servers.AppServer]:
    """AppServer(env, workers) under each supported server in turn: a test using it runs once per server."""
    return functools.partial(servers.AppServer, server=request.param)
