"""Rate limits: per user, per IP for failed authentications and anonymous calls; 429 with Retry-After."""

from __future__ import annotations

import re

import pytest

from app.revocation.layout import bucket_of, session_field
from app.services import services
from tests.conftest import bearer, me


@pytest.fixture
def settings_overrides():
    return {"RATE_LIMITS_ENABLED": "true", "RATE_LIMIT_USER": "5/minute", "RATE_LIMIT_IP": "3/minute",
            "RATE_LIMIT_AUTH_FAILURES": "3/minute"}


def assert_limited(response) -> None:
    assert response.status_code == 429
    assert response.get_json()["code"] == "rate_limited"
    assert 1 <= int(response.headers["Retry-After"]) <= 60


def test_per_user_limit(client, as_user):
    for _ in range(5):
        assert client.get("/api/v1/tasks", headers=as_user("alice")).status_code == 200
    assert_limited(client.get("/api/v1/tasks", headers=as_user("alice")))
    assert client.get("/api/v1/tasks", headers=as_user("bob")).status_code == 200


def test_failed_authentications_are_limited_per_ip(client, as_user):
    for _ in range(3):
        assert client.get("/api/v1/tasks", headers=bearer("garbage")).status_code == 401
    assert_limited(client.get("/api/v1/tasks", headers=bearer("garbage")))
    assert_limited(client.get("/api/v1/tasks", headers=bearer("another-guess")))
    # Valid tokens are not failures: a user behind the same IP (a NAT) keeps working.
    assert client.get("/api/v1/tasks", headers=as_user("alice")).status_code == 200
    other_ip = {"REMOTE_ADDR": "10.9.8.7"}
    assert client.get("/api/v1/tasks", headers=bearer("garbage"), environ_base=other_ip).status_code == 401


def test_missing_tokens_are_limited_per_ip(client):
    for _ in range(3):
        assert client.get("/api/v1/tasks").get_json()["code"] == "missing_token"
    assert_limited(client.get("/api/v1/auth/me"))


@pytest.mark.parametrize("path", ["/readyz", "/openapi.json", "/metrics"])
def test_anonymous_endpoints_are_limited_per_ip_but_liveness_is_not(client, path):
    for _ in range(3):
        assert client.get(path).status_code == 200
    assert_limited(client.get(path))
    assert client.get(path, environ_base={"REMOTE_ADDR": "10.9.8.7"}).status_code == 200  # another IP
    for _ in range(10):
        assert client.get("/healthz").status_code == 200


class TestAnonymousEndpoints:
    @pytest.fixture
    def settings_overrides(self):
        return {"RATE_LIMITS_ENABLED": "true", "RATE_LIMIT_IP": "5/minute",
                "METRICS_TOKEN": "metrics-token-for-the-tests-0123456789"}

    @pytest.mark.parametrize("path", ["/readyz", "/openapi.json"])
    def test_a_per_ip_limit_applies_to_anonymous_endpoints(self, client, path):
        for _ in range(5):
            assert client.get(path).status_code == 200
        assert client.get(path).status_code == 429
        for _ in range(20):
            assert client.get("/healthz").status_code == 200


class TestRateLimitsAndRevocation:
    """A revoked token never spends its owner's quota; logout always works."""

    @pytest.fixture
    def settings_overrides(self):
        return {"RATE_LIMITS_ENABLED": "true", "RATE_LIMIT_USER": "5/minute", "RATE_LIMIT_AUTH_FAILURES": "1000/minute"}

    def test_requests_with_a_revoked_token_do_not_count_against_its_owner(self, client, make_token):
        stolen = make_token("alice")
        assert client.post("/api/v1/auth/logout", headers=bearer(stolen)).status_code == 204
        for _ in range(10):
            assert me(client, stolen) == "token_revoked"
        assert me(client, make_token("alice")) == 200

    def test_a_user_over_the_limit_can_log_out_and_log_out_everywhere(self, client, make_token):
        token = make_token("alice")
        for _ in range(5):
            assert me(client, token) == 200
        assert me(client, token) == "rate_limited"
        assert client.post("/api/v1/auth/logout", headers=bearer(token)).status_code == 204
        assert client.post("/api/v1/auth/logout", json={"everywhere": True},
                           headers=bearer(make_token("alice"))).status_code == 204


def test_rate_limits_are_off_in_tests_by_default(tmp_path):
    from app.factory import create_app

    app = create_app({"APP_ENV": "testing", "DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}", "REDIS_URL": "",
                      "RATE_LIMITS_ENABLED": None})
    assert "taskgate.ratelimits" not in app.extensions


def test_a_bad_limit_is_a_config_error(tmp_path):
    from app.factory import ConfigError, create_app

    with pytest.raises(ConfigError, match="RATE_LIMIT_USER"):
        create_app({"APP_ENV": "testing", "DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}",
                    "RATE_LIMIT_USER": "lots"})


def test_rate_limit_headers_say_the_quota_and_what_is_left(client, as_user):
    headers = as_user("carol")
    first = client.get("/api/v1/tasks", headers=headers)
    assert first.headers["RateLimit-Policy"] == '"user";q=5;w=60'
    remaining, reset = re.fullmatch(r'"user";r=(\d+);t=(\d+)', first.headers["RateLimit"]).groups()
    assert int(remaining) == 4 and 1 <= int(reset) <= 60
    for _ in range(4):
        client.get("/api/v1/tasks", headers=headers)
    limited = client.get("/api/v1/tasks", headers=headers)
    assert_limited(limited)
    assert limited.headers["RateLimit"].startswith('"user";r=0;t=')
    assert limited.headers["RateLimit-Policy"] == '"user";q=5;w=60'


def test_anonymous_endpoints_carry_their_ip_policy(client):
    response = client.get("/readyz")
    assert response.headers["RateLimit-Policy"] == '"ip";q=3;w=60'
    assert response.headers["RateLimit"].startswith('"ip";r=2;t=')
    assert "RateLimit" not in client.get("/healthz").headers


class TestACheckAskedAgain:
    @pytest.fixture
    def settings_overrides(self):  # no periodic sync: Redis behind is found by the check itself
        return {"RATE_LIMITS_ENABLED": "true", "RATE_LIMIT_USER": "5/minute", "REVOCATION_SYNC_SECONDS": "60"}

    @pytest.fixture
    def lost_session(self, app, client, make_token, monkeypatch) -> tuple[str, list[int]]:
        """A session of dave's bucket revoked, then lost by Redis (one revocation behind this
        instance); returns the session id and the count each check round's answer carries."""
        store = services(app).store
        bucket = bucket_of("dave")
        sid = next(s for s in (f"session-{i}" for i in range(1000)) if bucket_of(s) == bucket)
        admin = bearer(make_token("root", role="admin"))
        assert client.post(f"/api/v1/admin/sessions/{sid}/revoke", headers=admin).status_code == 200
        redis, key = store.client.client, store.layout.bucket(bucket)
        redis.hset(key, "state", int(redis.hget(key, "state")) - 1)
        redis.hdel(key, session_field(sid))
        asked: list[int] = []
        ask = store.checks.ask
        monkeypatch.setattr(store.checks, "ask", lambda *args: asked.append((answer := ask(*args)).count) or answer)
        return sid, asked

    def counted(self, app) -> str | None:
        return services(app).store.client.client.get(services(app).rate_limits.user_window("dave").key)

    def test_after_repairing_redis_counts_the_request_once(self, app, client, make_token, lost_session):
        _, asked = lost_session
        response = client.get("/api/v1/tasks", headers=bearer(make_token("dave")))
        assert response.status_code == 200 and len(asked) == 2, f"counts of the check's rounds: {asked}"
        counted = self.counted(app)
        assert counted == "1" and response.headers["RateLimit"].startswith('"user";r=4;'), (counted, response.headers)

    def test_a_token_found_revoked_after_the_repair_spends_nothing(self, app, client, make_token, lost_session):
        sid, asked = lost_session
        assert me(client, make_token("dave", sid=sid)) == "token_revoked"
        assert asked == [1, 0], f"counts of the check's rounds: {asked}"
        assert self.counted(app) == "0"
