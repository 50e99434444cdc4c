"""Fixtures for tests against real services: PostgreSQL, Redis, gunicorn."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import redis

from tests.conftest import SECRET
from tests.services import require_redis


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    """A key prefix of our own on the shared Redis (database 15), cleaned up afterwards."""
    url = require_redis()
    prefix = f"taskgate-test:{uuid.uuid4().hex[:10]}:"
    yield prefix
    client = redis.Redis.from_url(url)
    keys = list(client.scan_iter(f"{prefix}*"))
    if keys:
        client.delete(*keys)


@pytest.fixture
def production_env(postgres_url: str, redis_prefix: str) -> dict[str, str]:
    """What an operator sets: production mode, PostgreSQL, the shared Redis."""
    return {
        "APP_ENV": "production",
        "DATABASE_URL": postgres_url,
        "REDIS_URL": require_redis(),
        "REDIS_KEY_PREFIX": redis_prefix,
        "BETTER_AUTH_SECRET": SECRET,
        "BETTER_AUTH_URL": "",
        "LOG_LEVEL": "WARNING",
    }
