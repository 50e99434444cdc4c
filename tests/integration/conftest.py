"""Fixtures for tests against real services: PostgreSQL, Redis, gunicorn."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import SECRET
from tests.services import redis_key_prefix, require_redis

METRICS_TOKEN = "metrics-token-for-the-tests-0123456789"


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    with redis_key_prefix("taskgate-test") as prefix:
        yield prefix


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
        "METRICS_TOKEN": METRICS_TOKEN,
        # The limiter stays on (its real Redis path runs), far above what a test sends.
        "RATE_LIMIT_USER": "1000000/minute",
        "RATE_LIMIT_AUTH_FAILURES": "1000000/minute",
    }
