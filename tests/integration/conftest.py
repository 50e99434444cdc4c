"""Fixtures for tests against real services: PostgreSQL, Redis, gunicorn."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests import servers
from tests.conftest import SECRET
from tests.servers import METRICS_TOKEN  # noqa: F401 - the tests read it from here
from tests.services import redis_key_prefix, require_redis


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    with redis_key_prefix("taskgate-test") as prefix:
        yield prefix


@pytest.fixture
def production_env(postgres_url: str, redis_prefix: str) -> dict[str, str]:
    """What an operator sets: production mode, PostgreSQL, the shared Redis."""
    return servers.production_env(postgres_url, require_redis(), redis_prefix, SECRET)
