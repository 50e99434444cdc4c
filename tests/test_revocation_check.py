"""The per-request revocation check on real Redis: one command, which answers "revoked?" and
counts only tokens that are not against their user's rate limit; a connection the server
closed, an error reply or a server that stops answering never lets a stale reply through."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
import redis

from app.services import services
from tests.conftest import bearer, me
from tests.support.servers import RedisMonitor


@pytest.fixture
def settings_overrides(private_redis):
    return {"REDIS_URL": private_redis.url, "REDIS_SOCKET_TIMEOUT": "0.3", "RATE_LIMITS_ENABLED": "true",
            "RATE_LIMIT_USER": "1000/minute"}


@pytest.fixture
def server(private_redis) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(private_redis.url, decode_responses=True)
    yield client
    client.close()


def user_window_key(app, user_id: str) -> str:
    return services(app).rate_limits.user_window(user_id).key


def test_an_authenticated_request_is_one_redis_command(client, make_token, private_redis):
    token = make_token("alice", sid="s-1")
    assert me(client, token) == 200  # loads the denylist and the scripts
    with RedisMonitor(private_redis.url) as monitor:
        monitor.clear()
        assert me(client, token) == 200
        assert client.get("/api/v1/tasks", headers=bearer(token)).status_code == 200
        assert [command[0] for command in monitor.commands()] == ["EVALSHA", "EVALSHA"]


def test_the_rate_limit_counts_only_tokens_that_are_not_revoked(app, client, make_token, server):
    good, revoked = make_token("alice"), make_token("alice")
    assert client.post("/api/v1/auth/logout", headers=bearer(revoked)).status_code == 204
    assert me(client, good) == 200
    key = user_window_key(app, "alice")
    assert server.get(key) == "1"
    for _ in range(5):
        assert me(client, revoked) == "token_revoked"
    assert server.get(key) == "1"  # the revoked token spent nothing of alice's quota
    assert me(client, good) == 200
    assert server.get(key) == "2"
    assert 0 < server.ttl(key) <= 61


def test_a_connection_the_server_closed_is_replaced_without_an_error(client, make_token, server):
    token = make_token("alice")
    assert me(client, token) == 200
    assert server.client_kill_filter(_type="normal", skipme=True) >= 1
    assert me(client, token) == 200


def test_checks_from_many_short_lived_threads_reuse_a_few_connections(client, make_token, server):
    """The development server runs each request in a thread of its own: the connections the
    check keeps between commands are bounded by how many run at once, not by how many threads ran."""
    token = make_token("alice")
    assert me(client, token) == 200  # the scripts, the floor channel and the first connection
    before = len(server.client_list(_type="normal"))
    answers: list[int | str] = []
    for _ in range(40):
        thread = threading.Thread(target=lambda: answers.append(me(client, token)))
        thread.start()
        thread.join()
    after = len(server.client_list(_type="normal"))
    assert answers == [200] * 40
    assert after <= before, f"connections to Redis went from {before} to {after} over 40 one-request threads"


def test_an_error_reply_is_a_503_and_leaves_no_reply_behind(app, client, make_token, server):
    token = make_token("alice")
    assert me(client, token) == 200
    key = user_window_key(app, "alice")
    server.set(key, "not a number")  # the script's INCR fails after its reads succeeded
    response = client.get("/api/v1/auth/me", headers=bearer(token))
    assert response.status_code == 503 and response.get_json()["code"] == "service_unavailable"
    server.delete(key)
    # A stale reply left on the connection would answer a later request: a revoked token
    # would read the previous request's "not revoked".
    assert me(client, token) == 200
    assert server.get(key) == "1"
    client.post("/api/v1/auth/logout", headers=bearer(token))
    assert me(client, token) == "token_revoked"
    assert me(client, make_token("bob")) == 200


def test_a_redis_that_stops_answering_is_a_bounded_503_and_no_late_reply_answers_a_later_request(
        client, make_token, private_redis):
    token, revoked = make_token("alice"), make_token("bob")
    assert me(client, token) == 200
    assert client.post("/api/v1/auth/logout", headers=bearer(revoked)).status_code == 204
    admin = redis.Redis.from_url(private_redis.url)
    admin.execute_command("CLIENT", "PAUSE", "1500", "ALL")  # connections stay open, no reply comes
    paused_until = time.monotonic() + 1.5
    started = time.monotonic()
    response = client.get("/api/v1/auth/me", headers=bearer(revoked))
    assert response.status_code == 503 and response.get_json()["code"] == "service_unavailable"
    assert time.monotonic() - started < 1.4  # the socket timeout (and one retry), not the pause
    time.sleep(max(0.0, paused_until - time.monotonic()) + 0.2)
    # The paused server answers the abandoned request late; that reply must never be read as
    # the answer to the next one.
    assert me(client, revoked) == "token_revoked"
    assert me(client, token) == 200
    admin.close()


def test_a_user_over_the_limit_can_still_log_out(app, client, make_token, server):
    token = make_token("alice")
    assert me(client, token) == 200
    server.set(user_window_key(app, "alice"), "1000")  # the limit is reached
    assert client.get("/api/v1/auth/me", headers=bearer(token)).status_code == 429
    assert client.post("/api/v1/auth/logout", headers=bearer(token)).status_code == 204
    everywhere = make_token("alice")
    assert client.post("/api/v1/auth/logout", json={"everywhere": True}, headers=bearer(everywhere)).status_code == 204
    server.delete(user_window_key(app, "alice"))
    assert me(client, token) == "token_revoked" and me(client, everywhere) == "token_revoked"
