"""Shared fixtures: an app per test on SQLite (fast) or PostgreSQL (real), and tokens."""

from __future__ import annotations

import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import jwt as pyjwt
import pytest
import requests
import sqlalchemy as sa
from alembic import command

from app.cli import alembic_config
from app.factory import create_app
from app.services import services
from tests.support.jwks_server import JwksServer
from tests.support.redis_topologies import PersistentRedis
from tests.support.servers import RedisServer
from tests.support.services import create_postgres_database, require_redis

SECRET = "test-secret-that-is-long-enough-for-hs256-0123456789"
# A production configuration whose every setting passes (the settings and factory tests start from it).
PRODUCTION = {"APP_ENV": "production", "DATABASE_URL": "postgresql+psycopg://u@127.0.0.1:1/x",
              "REDIS_URL": "redis://127.0.0.1:1/0", "BETTER_AUTH_SECRET": SECRET, "BETTER_AUTH_URL": "",
              "JWKS_URL": "", "JWT_ISSUER": "https://auth.example.com", "JWT_AUDIENCE": "https://api.example.com",
              "METRICS_TOKEN": "k3Yz9QpL2mW7xR4tV8nB1cF6", "RATE_LIMITS_ENABLED": "true"}

TokenFactory = Callable[..., str]


def upgrade(url: str) -> None:
    command.upgrade(alembic_config(url), "head")


@pytest.fixture(scope="session")
def node_ready() -> None:
    """Node.js and the pinned better-auth package, for the interop and browser tests."""
    from tests.interop.issuer import ensure_installed, node_available
    from tests.support.services import unavailable

    ok, reason = node_available()
    if not ok:
        unavailable(f"Node.js is needed to run the real Better Auth issuer: {reason}")
    ensure_installed()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One migrated SQLite file per run; each test gets a copy (schema only via Alembic)."""
    path = tmp_path_factory.mktemp("template") / "template.db"
    upgrade(f"sqlite:///{path}")
    return str(path)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    url, drop = create_postgres_database()
    upgrade(url)
    yield url
    drop()


def emptied(url: str) -> str:
    """The session's PostgreSQL database with every table emptied: each test starts from none."""
    engine = sa.create_engine(url)
    with engine.begin() as connection:
        tables = [t for t in sa.inspect(connection).get_table_names() if t != "alembic_version"]
        connection.execute(sa.text(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY"))
    engine.dispose()
    return url


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> str:
    """Overridden with `@pytest.mark.parametrize("backend", [...], indirect=True)`."""
    return getattr(request, "param", "sqlite")


@pytest.fixture
def database_url(backend: str, request: pytest.FixtureRequest, tmp_path) -> str:
    if backend == "postgresql":
        return emptied(request.getfixturevalue("postgres_url"))
    path = tmp_path / "taskgate.db"
    shutil.copyfile(request.getfixturevalue("sqlite_template"), path)
    return f"sqlite:///{path}"


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    """Override in a test module to change the app's configuration."""
    return {}


@pytest.fixture
def make_app(database_url: str, settings_overrides: dict[str, Any]):
    """make_app() -> one more instance of the app, on the same database and Redis."""
    made = []

    def factory():
        made.append(create_app({
            "APP_ENV": "testing",
            "DATABASE_URL": database_url,
            "BETTER_AUTH_SECRET": SECRET,
            "REDIS_URL": "",
            "BETTER_AUTH_URL": "",
            "JWKS_URL": "",
            "JWT_ALGORITHMS": "",
            "ADMIN_USER_IDS": "",
            **settings_overrides,
        }))
        return made[-1]

    yield factory
    for app in made:
        services(app).store.close()  # its retries write nothing into the next test's tables
        services(app).database.dispose()


@pytest.fixture
def app(make_app):
    return make_app()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def store(app):
    """The app's revocation store."""
    return services(app).store


def encode(claims: dict[str, Any], key: Any = SECRET, algorithm: str = "HS256",
           headers: dict[str, Any] | None = None) -> str:
    return pyjwt.encode(claims, key, algorithm=algorithm, headers=headers)


@pytest.fixture
def make_token() -> TokenFactory:
    """make_token("alice", role="admin", exp=..., drop=("iat",)) -> a signed HS256 token."""

    def factory(user_id: str = "alice", *, drop: tuple[str, ...] = (), key: Any = SECRET,
                algorithm: str = "HS256", headers: dict[str, Any] | None = None, **claims: Any) -> str:
        now = int(time.time())
        payload: dict[str, Any] = {
            "sub": user_id, "email": f"{user_id}@example.com", "name": user_id.title(),
            "role": "user", "iat": now, "exp": now + 900, "jti": uuid.uuid4().hex,
        }
        payload.update(claims)
        for name in drop:
            payload.pop(name, None)
        return encode(payload, key, algorithm, headers)

    return factory


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def answer(response: Any) -> int | str:
    """200, or the stable error code the service answered (a Flask test response or a
    `requests` one); the status where the body carries no code."""
    if response.status_code == 200:
        return 200
    body = response.get_json(silent=True) if hasattr(response, "get_json") else response.json()
    return (body or {}).get("code", response.status_code)


def me(client: Any, token: str, **kwargs: Any) -> int | str:
    """What GET /api/v1/auth/me answers this token, through the Flask test client."""
    return answer(client.get("/api/v1/auth/me", headers=bearer(token), **kwargs))


def me_at(server: Any, token: str, timeout: float = 10) -> int | str:
    """What GET /api/v1/auth/me answers this token, over HTTP from a running instance."""
    return answer(requests.get(f"{server.url}/api/v1/auth/me", headers=bearer(token), timeout=timeout))


@pytest.fixture
def as_user(make_token: TokenFactory) -> Callable[[str], dict[str, str]]:
    """as_user("alice") -> headers carrying a fresh token for alice."""
    return lambda user_id, **claims: bearer(make_token(user_id, **claims))


@pytest.fixture
def jwks() -> Iterator[JwksServer]:
    """A JWKS endpoint on loopback, empty until a test publishes a key."""
    with JwksServer() as server:
        yield server


@pytest.fixture
def private_redis() -> Iterator[RedisServer]:
    """A private redis-server (no persistence) of the test's own, which it may stop, restart empty or flush."""
    require_redis()
    with RedisServer() as server:
        yield server


@pytest.fixture
def redis_node() -> Iterator[PersistentRedis]:
    """A private redis-server of the test's own, which it can snapshot and restart from a snapshot."""
    require_redis()
    with PersistentRedis() as node:
        yield node
