"""Revocation against real Redis and PostgreSQL: several gunicorn instances, Redis losing
its data, Redis down."""

from __future__ import annotations

import time

import pytest
import requests

from tests.conftest import bearer, me_at
from tests.support.servers import RedisServer

pytestmark = pytest.mark.integration






def test_a_token_revoked_through_one_instance_is_rejected_by_another(production_env, make_token, app_server):
    with app_server(production_env) as a, app_server(production_env) as b:
        token = make_token("alice")
        admin = make_token("root", role="admin")
        earlier = make_token("bob", iat=int(time.time()) - 5)
        assert me_at(a, token) == 200 and me_at(b, token) == 200
        assert requests.post(f"{a.url}/api/v1/auth/logout", headers=bearer(token), timeout=5).status_code == 204
        assert me_at(b, token) == "token_revoked"
        assert me_at(a, token) == "token_revoked"

        response = requests.post(f"{b.url}/api/v1/admin/users/bob/revoke", headers=bearer(admin), timeout=5)
        assert response.status_code == 200
        assert me_at(a, earlier) == "token_revoked"
        assert me_at(a, make_token("bob", iat=int(time.time()) + 2)) == 200
        assert requests.get(f"{a.url}/readyz", timeout=5).json()["checks"] == {"database": "ok", "redis": "ok"}


def test_revoked_tokens_stay_rejected_after_flushall_and_after_a_restart_empty(production_env, make_token, app_server):
    with RedisServer() as private_redis:
        env = {**production_env, "REDIS_URL": private_redis.url}
        with app_server(env) as server:
            token, session_token = make_token("alice"), make_token("carol", sid="s-flush")
            admin = make_token("root", role="admin")
            requests.post(f"{server.url}/api/v1/auth/logout", headers=bearer(token), timeout=5)
            requests.post(f"{server.url}/api/v1/admin/sessions/s-flush/revoke", headers=bearer(admin), timeout=5)

            import redis

            redis.Redis.from_url(private_redis.url).flushall()
            assert me_at(server, token) == "token_revoked"
            assert me_at(server, session_token) == "token_revoked"

            private_redis.stop()
            private_redis.start()  # same port, no data: a restart without persistence
            assert me_at(server, token) == "token_revoked"
            assert me_at(server, session_token) == "token_revoked"
            assert me_at(server, make_token("alice")) == 200


def test_redis_down_is_a_quick_503_never_a_pass(production_env, make_token, app_server):
    with RedisServer() as private_redis:
        env = {**production_env, "REDIS_URL": private_redis.url, "REDIS_SOCKET_TIMEOUT": "0.5"}
        with app_server(env) as server:
            token = make_token("alice")
            assert me_at(server, token) == 200
            private_redis.stop()
            for path in ("/api/v1/auth/me", "/api/v1/tasks"):
                started = time.monotonic()
                response = requests.get(f"{server.url}{path}", headers=bearer(token), timeout=10)
                elapsed = time.monotonic() - started
                assert response.status_code == 503, response.text
                assert response.json()["code"] == "service_unavailable"
                assert elapsed < 3, elapsed
            logout = requests.post(f"{server.url}/api/v1/auth/logout", headers=bearer(token), timeout=10)
            assert logout.status_code == 503
            assert requests.get(f"{server.url}/readyz", timeout=10).status_code == 503
            assert requests.get(f"{server.url}/healthz", timeout=10).status_code == 200
            private_redis.start()
            assert me_at(server, token) == 200  # recovers by itself


def test_redis_on_a_closed_port_is_a_503(production_env, make_token, app_server):
    from tests.support.servers import free_port

    env = {**production_env, "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}
    with app_server(env) as server:
        started = time.monotonic()
        response = requests.get(f"{server.url}/api/v1/tasks", headers=bearer(make_token("alice")), timeout=10)
        assert response.status_code == 503 and time.monotonic() - started < 3
