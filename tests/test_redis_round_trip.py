"""The per-request Redis round trip on real Redis: revocation check and per-user rate-limit
count in one write, on a connection its thread keeps, which survives a server-side close and
never carries a stale reply into the next request."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from app.revocation import revocations
from tests.conftest import bearer
from tests.services import redis_key_prefix, require_redis


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    with redis_key_prefix("round-trip") as prefix:
        yield prefix


@pytest.fixture
def settings_overrides(redis_prefix):
    return {"REDIS_URL": require_redis(), "REDIS_KEY_PREFIX": redis_prefix, "RATE_LIMITS_ENABLED": "true",
            "RATE_LIMIT_USER": "1000/minute"}


@pytest.fixture
def store(app):
    with app.app_context():
        yield revocations()


@pytest.fixture
def server() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(require_redis(), decode_responses=True)
    yield client
    client.close()


def me(client, token: str) -> int | str:
    response = client.get("/api/v1/auth/me", headers=bearer(token))
    return 200 if response.status_code == 200 else response.get_json()["code"]


def user_window_key(app, user_id: str) -> str:
    return app.extensions["taskgate.ratelimits"].user_window(user_id).key


def test_the_rate_limit_count_rides_with_the_revocation_check(app, client, store, make_token, server,
                                                               monkeypatch):
    token = make_token("alice")
    assert me(client, token) == 200
    round_trips = []
    original = store._round_trip
    monkeypatch.setattr(store, "_round_trip", lambda commands: round_trips.append(
        [command[0] for command in commands]) or original(commands))
    assert me(client, token) == 200
    assert round_trips == [["MGET", "INCR", "EXPIRE"]]
    key = user_window_key(app, "alice")
    assert server.get(key) == "2"
    assert 0 < server.ttl(key) <= 61


def test_a_connection_the_server_closed_is_replaced_without_an_error(client, store, make_token, server):
    token = make_token("alice")
    assert me(client, token) == 200
    host, port = store._local.connection._sock.getsockname()[:2]
    assert server.client_kill(f"{host}:{port}") is True
    assert me(client, token) == 200
    assert store._local.connection._sock.getsockname()[1] != port


def test_an_error_reply_is_a_503_and_leaves_no_reply_behind(app, client, store, make_token, server):
    token = make_token("alice")
    assert me(client, token) == 200
    key = user_window_key(app, "alice")
    server.set(key, "not a number")  # INCR fails after MGET succeeded, in the same round trip
    response = client.get("/api/v1/auth/me", headers=bearer(token))
    assert response.status_code == 503 and response.get_json()["code"] == "service_unavailable"
    server.delete(key)
    # Stale replies on the connection would shift every later answer by one: a revoked token
    # would read the previous request's "not revoked".
    assert me(client, token) == 200
    assert server.get(key) == "1"
    client.post("/api/v1/auth/logout", headers=bearer(token))
    assert me(client, token) == "token_revoked"
    assert me(client, make_token("bob")) == 200
