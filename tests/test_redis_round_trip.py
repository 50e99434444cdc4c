"""The per-request Redis round trip on real Redis: revocation check and per-user rate-limit
count in one write, on a connection its thread keeps, which survives a server-side close and
never carries a stale reply into the next request."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import redis

from app.revocation import revocations
from tests.conftest import bearer
from tests.servers import RedisServer
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
    host, port = store._local.link.connection._sock.getsockname()[:2]
    assert server.client_kill(f"{host}:{port}") is True
    assert me(client, token) == 200
    assert store._local.link.connection._sock.getsockname()[1] != port


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


def test_a_connection_idle_past_the_health_check_interval_is_pinged_first(client, store, make_token, server,
                                                                         monkeypatch):
    token = make_token("alice")
    assert me(client, token) == 200
    connection = store._local.link.connection
    pings = []
    original = connection._send_ping  # redis-py's health check: PING, and expect PONG
    monkeypatch.setattr(connection, "_send_ping", lambda: pings.append(1) or original())
    connection.next_health_check = 0  # as if idle for longer than health_check_interval
    assert me(client, token) == 200
    assert me(client, token) == 200
    assert pings == [1]  # once: the exchange moved the next check a whole interval on
    client.post("/api/v1/auth/logout", headers=bearer(token))
    assert me(client, token) == "token_revoked"  # the PING's reply never stood in for ours


class TestARedisThatStopsAnswering:
    """A private redis-server, paused with CLIENT PAUSE: connections stay open, no reply comes."""

    @pytest.fixture
    def private_redis(self) -> Iterator[RedisServer]:
        require_redis()
        with RedisServer() as server:
            yield server

    @pytest.fixture
    def settings_overrides(self, private_redis):
        return {"REDIS_URL": private_redis.url, "REDIS_SOCKET_TIMEOUT": "0.3", "RATE_LIMITS_ENABLED": "true",
                "RATE_LIMIT_USER": "1000/minute"}

    def test_is_a_bounded_503_and_no_late_reply_answers_a_later_request(self, client, make_token, private_redis):
        token, revoked = make_token("alice"), make_token("bob")
        assert me(client, token) == 200
        assert client.post("/api/v1/auth/logout", headers=bearer(revoked)).status_code == 204
        admin = redis.Redis.from_url(private_redis.url)
        admin.execute_command("CLIENT", "PAUSE", "1500", "ALL")
        paused_until = time.monotonic() + 1.5
        started = time.monotonic()
        response = client.get("/api/v1/auth/me", headers=bearer(revoked))
        assert response.status_code == 503 and response.get_json()["code"] == "service_unavailable"
        assert time.monotonic() - started < 1.4  # the socket timeout (and one retry), not the pause
        time.sleep(max(0.0, paused_until - time.monotonic()) + 0.2)
        # The paused server answers the abandoned request late; that reply must never be read
        # as the answer to the next one.
        assert me(client, revoked) == "token_revoked"
        assert me(client, token) == 200
        admin.close()
