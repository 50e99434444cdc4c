"""Real backing services for integration tests: PostgreSQL and Redis on 127.0.0.1.

Without them a test skips with the reason, except under CI=true, where a missing
service fails the run instead of hiding behind a skip.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache

import pytest

PG_ADMIN_URLS = (
    os.environ.get("TEST_POSTGRES_URL", ""),
    "postgresql+psycopg://postgres@127.0.0.1:5432/postgres",
    "postgresql+psycopg://root@127.0.0.1:5432/postgres",
)
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


def unavailable(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true and a required service is missing: {reason}", pytrace=False)
    pytest.skip(reason)


@cache
def postgres_admin_url() -> str | None:
    import sqlalchemy as sa

    for url in filter(None, PG_ADMIN_URLS):
        engine = sa.create_engine(url, connect_args={"connect_timeout": 3})
        try:
            with engine.connect():
                return url
        except Exception:
            continue
        finally:
            engine.dispose()
    return None


def create_postgres_database() -> tuple[str, callable]:
    """A fresh database; returns its URL and a function that drops it."""
    import sqlalchemy as sa

    admin_url = postgres_admin_url()
    if admin_url is None:
        unavailable("PostgreSQL is not reachable on 127.0.0.1:5432")
    name = f"taskgate_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = admin_url.rsplit("/", 1)[0] + f"/{name}"

    def drop() -> None:
        with admin.connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    return url, drop


@cache
def redis_reachable() -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(REDIS_URL, socket_timeout=2).ping())
    except Exception:
        return False


def require_redis() -> str:
    if not redis_reachable():
        unavailable("Redis is not reachable on 127.0.0.1:6379")
    return REDIS_URL


@contextmanager
def redis_key_prefix(label: str) -> Iterator[str]:
    """A key prefix of our own on the shared Redis (database 15), cleaned up afterwards."""
    import redis

    url = require_redis()
    prefix = f"{label}:{uuid.uuid4().hex[:10]}:"
    yield prefix
    client = redis.Redis.from_url(url)
    keys = list(client.scan_iter(f"{prefix}*"))
    if keys:
        client.delete(*keys)
    client.close()
