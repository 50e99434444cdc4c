"""The eleven findings of the outside review of the request gate, one regression test (or a
few) each, through the HTTP API only. Each failed on the code before the gate was rebuilt."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import SECRET, bearer, encode

ROOT = Path(__file__).resolve().parents[2]


def now() -> int:
    return int(time.time())


def me(client, token: str, **kwargs) -> int | str:
    response = client.get("/api/v1/auth/me", headers=bearer(token), **kwargs)
    return 200 if response.status_code == 200 else response.get_json()["code"]


def after_this_second() -> None:
    """Sleep into the next whole second: a token minted now has an `iat` past a cutoff made now."""
    time.sleep(1.05 - time.time() % 1)


# 1. Clock skew must not defeat a user cutoff -----------------------------------------


def test_1_a_token_issued_ahead_of_the_clock_does_not_survive_logout_everywhere(client, make_token):
    ahead = make_token("alice", iat=now() + 20, exp=now() + 900)  # an issuer clock 20 s fast
    assert me(client, ahead) == 200
    assert client.post("/api/v1/auth/logout", json={"everywhere": True},
                       headers=bearer(make_token("alice"))).status_code == 204
    assert me(client, ahead) == "token_revoked"
    after_this_second()
    assert me(client, make_token("alice")) == 200  # a token minted after it, by a right clock


def test_1_a_token_issued_ahead_of_the_clock_does_not_survive_an_admin_revoking_the_user(client, make_token,
                                                                                         as_user):
    ahead = make_token("bob", iat=now() + 20, exp=now() + 900, drop=("jti",))
    assert me(client, ahead) == 200
    assert client.post("/api/v1/admin/users/bob/revoke", headers=as_user("root", role="admin")).status_code == 200
    assert me(client, ahead) == "token_revoked"
    after_this_second()
    assert me(client, make_token("bob")) == 200


# 2. A revoked token never spends its owner's quota; logout always works ----------------


class TestRateLimitsAndRevocation:
    @pytest.fixture
    def settings_overrides(self):
        return {"RATE_LIMITS_ENABLED": "true", "RATE_LIMIT_USER": "5/minute", "RATE_LIMIT_AUTH_FAILURES": "1000/minute"}

    def test_2_requests_with_a_revoked_token_do_not_count_against_its_owner(self, client, make_token):
        stolen = make_token("alice")
        assert client.post("/api/v1/auth/logout", headers=bearer(stolen)).status_code == 204
        for _ in range(10):
            assert me(client, stolen) == "token_revoked"
        assert me(client, make_token("alice")) == 200

    def test_2_a_user_over_the_limit_can_log_out_and_log_out_everywhere(self, client, make_token):
        token = make_token("alice")
        for _ in range(5):
            assert me(client, token) == 200
        assert me(client, token) == "rate_limited"
        assert client.post("/api/v1/auth/logout", headers=bearer(token)).status_code == 204
        assert client.post("/api/v1/auth/logout", json={"everywhere": True},
                           headers=bearer(make_token("alice"))).status_code == 204


# 3. A trickling JWKS endpoint ---------------------------------------------------------


class TricklingJwks:
    """A JWKS endpoint on loopback that serves its document at once, or (trickle=True) one
    byte every 0.4 s for a few seconds, then hangs up."""

    def __init__(self, document: bytes) -> None:
        self.document, self.trickle = document, False
        self.server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.server.getsockname()[1]}/api/auth/jwks"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._answer, args=(connection,), daemon=True).start()

    def _answer(self, connection: socket.socket) -> None:
        with connection:
            try:
                connection.recv(65536)
                connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                                   + str(len(self.document)).encode() + b"\r\nConnection: close\r\n\r\n")
                if not self.trickle:
                    connection.sendall(self.document)
                    return
                for byte in self.document[:10]:
                    connection.sendall(bytes([byte]))
                    time.sleep(0.4)
            except OSError:
                return

    def close(self) -> None:
        self.server.close()


class TestATricklingJwksEndpoint:
    @pytest.fixture
    def signing_key(self):
        import json

        import jwt as pyjwt
        from cryptography.hazmat.primitives.asymmetric import ed25519

        private = ed25519.Ed25519PrivateKey.generate()
        jwk = {**json.loads(pyjwt.get_algorithm_by_name("EdDSA").to_jwk(private.public_key())), "kid": "k1",
               "alg": "EdDSA"}
        return private, json.dumps({"keys": [jwk]}).encode()

    @pytest.fixture
    def jwks(self, signing_key) -> Iterator[TricklingJwks]:
        server = TricklingJwks(signing_key[1])
        yield server
        server.close()

    @pytest.fixture
    def settings_overrides(self, jwks):
        return {"JWKS_URL": jwks.url, "JWT_ALGORITHMS": "EdDSA", "BETTER_AUTH_SECRET": "", "JWT_ISSUER": "",
                "JWT_AUDIENCE": "", "JWKS_TIMEOUT_SECONDS": "1", "JWKS_CACHE_SECONDS": "1",
                "JWKS_MIN_REFETCH_SECONDS": "1"}

    def token(self, signing_key) -> str:
        return encode({"sub": "alice", "iat": now(), "exp": now() + 900}, signing_key[0], "EdDSA", {"kid": "k1"})

    def test_3_the_whole_fetch_is_bounded_by_the_timeout(self, client, jwks, signing_key):
        jwks.trickle = True
        started = time.monotonic()
        assert me(client, self.token(signing_key)) == "service_unavailable"  # no key could be fetched
        assert time.monotonic() - started < 1.8

    def test_3_requests_with_known_keys_never_wait_on_a_refresh(self, client, jwks, signing_key):
        token = self.token(signing_key)
        assert me(client, token) == 200
        jwks.trickle = True
        time.sleep(1.1)  # the key set is stale: it is refreshed, and the refresh trickles
        for _ in range(3):
            started = time.monotonic()
            assert me(client, token) == 200
            assert time.monotonic() - started < 0.5


# 4. Admin ids -------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/api/v1/admin/users/{id}/revoke", "/api/v1/admin/sessions/{id}/revoke"])
@pytest.mark.parametrize("bad_id", ["x" * 256, "a\x00b", "a\x07b", "tab\there"])
def test_4_an_id_no_token_could_carry_is_a_422(client, as_user, path, bad_id):
    from urllib.parse import quote

    response = client.post(path.format(id=quote(bad_id, safe="")), headers=as_user("root", role="admin"))
    assert response.status_code == 422, response.get_data()[:300]
    assert response.get_json()["code"] == "validation_error"


@pytest.mark.parametrize("odd_id", ["team/alice", "//leading", "a%2Fb", "x" * 255, "ünï cödé"])
def test_4_every_id_a_token_can_carry_can_be_revoked(client, make_token, as_user, odd_id):
    from urllib.parse import quote

    admin = as_user("root", role="admin")
    user_token, session_token = make_token(odd_id), make_token("carol", sid=odd_id)
    assert me(client, user_token) == 200 and me(client, session_token) == 200
    assert client.post(f"/api/v1/admin/users/{quote(odd_id, safe='')}/revoke", headers=admin).status_code == 200
    assert client.post(f"/api/v1/admin/sessions/{quote(odd_id, safe='')}/revoke", headers=admin).status_code == 200
    assert me(client, user_token) == "token_revoked" and me(client, session_token) == "token_revoked"


# 5. The digest of a jti-less token covers every claim ----------------------------------


def test_5_logging_out_one_jti_less_token_never_revokes_another(client):
    base = {"sub": "alice", "iat": now(), "exp": now() + 600}
    named, plain = encode({**base, "nickname": "nickname"}), encode(base)
    assert me(client, named) == 200 and me(client, plain) == 200
    assert client.post("/api/v1/auth/logout", headers=bearer(named)).status_code == 204
    assert me(client, named) == "token_revoked"
    assert me(client, plain) == 200
    for claim in ("type", "fresh"):  # names a JWT library might add defaults for
        token = encode({**base, "n": claim, claim: claim if claim == "type" else False})
        if me(client, token) == 200:
            assert client.post("/api/v1/auth/logout", headers=bearer(token)).status_code == 204
            assert me(client, plain) == 200


# 6. CORS origins match exactly, IPv6 included -------------------------------------------


class TestCorsOrigins:
    @pytest.fixture
    def settings_overrides(self):
        return {"CORS_ORIGINS": "http://[2001:db8::1]:3000,http://localhost:3000"}

    @pytest.mark.parametrize("origin,allowed", [
        ("http://[2001:db8::1]:3000", True), ("http://localhost:3000", True), ("http://d:3000", False),
        ("http://b:30001", False), ("http://localhost:30001", False), ("http://[2001:db8::1]:30001", False),
        ("http://2:3000", False),
    ])
    def test_6_only_the_configured_origins_are_allowed(self, client, origin, allowed):
        response = client.get("/healthz", headers={"Origin": origin})
        assert (response.headers.get("Access-Control-Allow-Origin") == origin) is allowed
        if not allowed:
            assert "Access-Control-Allow-Origin" not in response.headers


# 7. Anonymous endpoints are limited; /metrics needs a token -----------------------------


class TestAnonymousEndpoints:
    @pytest.fixture
    def settings_overrides(self):
        return {"RATE_LIMITS_ENABLED": "true", "RATE_LIMIT_IP": "5/minute",
                "METRICS_TOKEN": "metrics-token-for-the-tests-0123456789"}

    @pytest.mark.parametrize("path", ["/readyz", "/openapi.json"])
    def test_7_a_per_ip_limit_applies_to_anonymous_endpoints(self, client, path):
        for _ in range(5):
            assert client.get(path).status_code == 200
        assert client.get(path).status_code == 429
        for _ in range(20):
            assert client.get("/healthz").status_code == 200

    def test_7_metrics_need_the_configured_token(self, client):
        assert client.get("/metrics").status_code == 401
        assert client.get("/metrics", headers=bearer("m" * 31 + "x")).status_code == 401
        response = client.get("/metrics", headers=bearer("metrics-token-for-the-tests-0123456789"))
        assert response.status_code == 200 and b"taskgate_http_requests_total" in response.data


def test_7_metrics_are_off_in_production_without_a_token(tmp_path):
    from app.factory import create_app

    app = create_app({"APP_ENV": "production", "DATABASE_URL": "postgresql+psycopg://u@127.0.0.1:1/x",
                      "REDIS_URL": "redis://127.0.0.1:1/0", "BETTER_AUTH_SECRET": SECRET, "RATE_LIMITS_ENABLED": "0",
                      "METRICS_TOKEN": ""})
    assert app.test_client().get("/metrics").status_code == 404


# 8. A bad REDIS_URL is a one-line configuration error at start -------------------------


@pytest.mark.parametrize("url", ["memcached://127.0.0.1:11211", "redis://127.0.0.1:notaport/0", "redis:///0",
                                 "redis://127.0.0.1:6379/zero"])
def test_8_a_bad_redis_url_is_a_one_line_error(url):
    env = {**os.environ, "APP_ENV": "production", "DATABASE_URL": "postgresql+psycopg://u@127.0.0.1:1/x",
           "REDIS_URL": url, "BETTER_AUTH_SECRET": SECRET}
    result = subprocess.run([sys.executable, "-c", "import wsgi"], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 78, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("taskgate: configuration error: REDIS_URL"), result.stderr
    assert "Traceback" not in result.stderr


# 9. Role names compare exactly ----------------------------------------------------------


@pytest.mark.parametrize("role,is_admin", [("admin\u00a0", False), ("\u00a0admin", False), ("admin\u200b", False),
                                           ("user,admin", True), ("user, admin", True), ("user admin", True),
                                           ("Admin", False), (["user", "admin "], True)])
def test_9_role_names_compare_exactly_after_splitting_on_commas_and_ascii_whitespace(client, make_token, role,
                                                                                    is_admin):
    response = client.get("/api/v1/auth/me", headers=bearer(make_token("someone", role=role)))
    assert response.get_json()["is_admin"] is is_admin


# 10. The Bearer scheme is case-insensitive ---------------------------------------------


@pytest.mark.parametrize("scheme", ["bearer", "BEARER", "bEaReR"])
def test_10_the_bearer_scheme_is_case_insensitive(client, make_token, scheme):
    response = client.get("/api/v1/auth/me", headers={"Authorization": f"{scheme} {make_token('alice')}"})
    assert response.status_code == 200 and response.get_json()["user_id"] == "alice"


# 11. A token made for another job never authenticates an API call -----------------------


@pytest.mark.parametrize("header,extra,accepted", [
    ({"typ": "logout+jwt"}, {}, False),
    ({"typ": "application/logout+jwt"}, {}, False),
    ({"typ": "secevent+jwt"}, {}, False),
    ({}, {"events": {"http://schemas.openid.net/event/backchannel-logout": {}}}, False),
    ({"typ": "JWT"}, {"events": {}}, False),
    ({"typ": "JWT"}, {}, True),
    ({"typ": "at+jwt"}, {}, False),  # an OAuth access token: never a first-party one (tests/test_oauth_tokens.py)
    ({"typ": "application/at+JWT"}, {}, False),
    ({}, {}, True),
])
def test_11_only_access_tokens_authenticate(client, header, extra, accepted):
    token = encode({"sub": "alice", "iat": now(), "exp": now() + 600, **extra}, SECRET, "HS256", header)
    assert (me(client, token) == 200) is accepted
    if not accepted:
        assert me(client, token) == "invalid_token"
