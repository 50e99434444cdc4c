"""CONTRACT §2: every way a token can be wrong is a 401 problem with the right code."""

from __future__ import annotations

import json

import pytest

from app.security.dpop import normalized_url
from tests.conftest import SECRET, bearer, encode, me
from tests.support.attacks import b64
from tests.support.clock import now

HS256_HEADER = b'{"alg":"HS256"}'


def unsigned(header: dict, payload: dict, signature: str = "") -> str:
    return f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}.{signature}"


def assert_rejected(response, code: str) -> None:
    assert response.status_code == 401, response.get_json()
    assert response.mimetype == "application/problem+json"
    body = response.get_json()
    assert body["code"] == code
    assert body["status"] == 401
    assert "Bearer" in response.headers["WWW-Authenticate"]


def test_a_valid_token_is_accepted(client, make_token):
    response = client.get("/api/v1/auth/me", headers=bearer(make_token("alice")))
    assert response.status_code == 200
    assert response.get_json()["user_id"] == "alice"


def test_no_token(client):
    assert_rejected(client.get("/api/v1/tasks"), "missing_token")


def test_a_non_bearer_scheme_is_a_missing_token(client, make_token):
    response = client.get("/api/v1/tasks", headers={"Authorization": f"Basic {make_token()}"})
    assert_rejected(response, "missing_token")


@pytest.mark.parametrize("scheme", ["bearer", "BEARER", "bEaReR"])
def test_the_bearer_scheme_is_case_insensitive(client, make_token, scheme):
    response = client.get("/api/v1/auth/me", headers={"Authorization": f"{scheme} {make_token('alice')}"})
    assert response.status_code == 200 and response.get_json()["user_id"] == "alice"


@pytest.mark.parametrize("token", ["garbage", "a.b.c", "a.b", "", "....", "eyJ.eyJ.x"])
def test_garbage_token(client, token):
    response = client.get("/api/v1/tasks", headers={"Authorization": f"Bearer {token}".strip()})
    assert response.status_code == 401
    assert response.get_json()["code"] in ("invalid_token", "missing_token")


def test_wrong_signature(client, make_token):
    assert_rejected(client.get("/api/v1/tasks", headers=bearer(make_token(key="another-secret-" * 4))),
                    "invalid_token")


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE"])
def test_alg_none(client, alg):
    token = unsigned({"alg": alg, "typ": "JWT"}, {"sub": "alice", "iat": now(), "exp": now() + 900})
    assert_rejected(client.get("/api/v1/tasks", headers=bearer(token)), "invalid_token")


def test_hs384_when_only_hs256_is_configured(client, make_token):
    assert_rejected(client.get("/api/v1/tasks", headers=bearer(make_token(algorithm="HS384"))),
                    "invalid_token")


def test_rs256_header_when_only_hs256_is_configured(client):
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    token = encode({"sub": "alice", "iat": now(), "exp": now() + 900}, key, "RS256")
    assert_rejected(client.get("/api/v1/tasks", headers=bearer(token)), "invalid_token")


def test_expired(client, make_token):
    token = make_token(iat=now() - 3600, exp=now() - 120)
    assert_rejected(client.get("/api/v1/tasks", headers=bearer(token)), "token_expired")


def test_expired_within_leeway_is_accepted(client, make_token):
    token = make_token(iat=now() - 3600, exp=now() - 5)
    assert client.get("/api/v1/tasks", headers=bearer(token)).status_code == 200


def test_nbf_in_the_future(client, make_token):
    assert_rejected(client.get("/api/v1/tasks", headers=bearer(make_token(nbf=now() + 3600))), "invalid_token")


def test_iat_in_the_future_beyond_leeway(client, make_token):
    token = make_token(iat=now() + 3600, exp=now() + 7200)
    assert_rejected(client.get("/api/v1/tasks", headers=bearer(token)), "invalid_token")


def test_iat_older_than_seven_days_with_a_far_exp(client, make_token):
    token = make_token(iat=now() - 7 * 86400 - 60, exp=now() + 86400)
    assert_rejected(client.get("/api/v1/tasks", headers=bearer(token)), "token_expired")


def test_iat_six_days_old_is_accepted(client, make_token):
    token = make_token(iat=now() - 6 * 86400, exp=now() + 86400)
    assert client.get("/api/v1/tasks", headers=bearer(token)).status_code == 200


@pytest.mark.parametrize("claim", ["exp", "iat", "sub"])
def test_missing_required_claim(client, make_token, claim):
    assert_rejected(client.get("/api/v1/tasks", headers=bearer(make_token(drop=(claim,)))), "invalid_token")


@pytest.mark.parametrize("sub", [12345, 1.5, True, None, "", ["alice"], {"id": "alice"}, "x" * 300, "a\x00b"])
def test_sub_must_be_a_non_empty_string(client, make_token, sub):
    assert_rejected(client.get("/api/v1/tasks", headers=bearer(make_token(sub=sub))), "invalid_token")


@pytest.mark.parametrize("claim", ["exp", "iat", "nbf"])
@pytest.mark.parametrize("value", ["9999999999", True, None, [1], {"a": 1}])
def test_time_claims_must_be_numbers(client, make_token, claim, value):
    assert_rejected(client.get("/api/v1/tasks", headers=bearer(make_token(**{claim: value}))), "invalid_token")


def test_refresh_typed_token_is_rejected(client, make_token):
    assert_rejected(client.get("/api/v1/tasks", headers=bearer(make_token(type="refresh"))), "invalid_token")


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
def test_only_access_tokens_authenticate(client, header, extra, accepted):
    token = encode({"sub": "alice", "iat": now(), "exp": now() + 600, **extra}, SECRET, "HS256", header)
    assert (me(client, token) == 200) is accepted
    if not accepted:
        assert me(client, token) == "invalid_token"


def test_token_in_the_query_string_or_a_cookie_is_ignored(client, make_token):
    token = make_token()
    assert_rejected(client.get(f"/api/v1/tasks?jwt={token}&access_token={token}"), "missing_token")
    client.set_cookie("access_token_cookie", token)
    assert_rejected(client.get("/api/v1/tasks"), "missing_token")


@pytest.mark.parametrize("header", [{"crit": ["exp"]}, {"b64": False, "crit": ["b64"]}, {"zip": "DEF"},
                                    {"enc": "A256GCM"}])
def test_forbidden_header_parameters(client, make_token, header):
    assert_rejected(client.get("/api/v1/tasks", headers=bearer(make_token(headers=header))), "invalid_token")


def test_deeply_nested_claims_are_a_401_not_a_500(client):
    payload = b'{"sub":"alice","iat":%d,"exp":%d,"x":' % (now(), now() + 900) + b"[" * 100000 + b"]" * 100000 + b"}"
    token = f"{b64(HS256_HEADER)}.{b64(payload)}.{b64(b'x' * 32)}"
    assert_rejected(client.get("/api/v1/tasks", headers=bearer(token)), "invalid_token")


def test_non_utf8_payload_is_a_401(client):
    import hashlib
    import hmac

    signing_input = f"{b64(HS256_HEADER)}.{b64(bytes([0xFF, 0xFE]) + b'{bad')}"
    signature = b64(hmac.new(SECRET.encode(), signing_input.encode(), hashlib.sha256).digest())
    assert_rejected(client.get("/api/v1/tasks", headers=bearer(f"{signing_input}.{signature}")), "invalid_token")


class TestIssuerAndAudience:
    @pytest.fixture
    def settings_overrides(self):
        return {"JWT_ISSUER": "https://auth.example.com", "JWT_AUDIENCE": "https://auth.example.com"}

    def test_matching_iss_and_aud_are_accepted(self, client, make_token):
        token = make_token(iss="https://auth.example.com", aud="https://auth.example.com")
        assert client.get("/api/v1/tasks", headers=bearer(token)).status_code == 200

    def test_wrong_iss(self, client, make_token):
        token = make_token(iss="https://evil.example.com", aud="https://auth.example.com")
        assert_rejected(client.get("/api/v1/tasks", headers=bearer(token)), "invalid_token")

    def test_wrong_aud(self, client, make_token):
        token = make_token(iss="https://auth.example.com", aud="https://other.example.com")
        assert_rejected(client.get("/api/v1/tasks", headers=bearer(token)), "invalid_token")

    def test_missing_iss_and_aud(self, client, make_token):
        assert_rejected(client.get("/api/v1/tasks", headers=bearer(make_token())), "invalid_token")


class TestConfigurableUserClaim:
    @pytest.fixture
    def settings_overrides(self):
        return {"JWT_USER_CLAIM": "id"}

    def test_the_user_comes_from_the_configured_claim(self, client, make_token):
        token = make_token("subject-value", id="user-from-id-claim")
        assert client.get("/api/v1/auth/me", headers=bearer(token)).get_json()["user_id"] == "user-from-id-claim"

    def test_a_token_without_that_claim_is_rejected(self, client, make_token):
        assert_rejected(client.get("/api/v1/auth/me", headers=bearer(make_token())), "invalid_token")


class TestAdmins:
    @pytest.fixture
    def settings_overrides(self):
        return {"ADMIN_USER_IDS": "root-user, ops"}

    @pytest.mark.parametrize("role,expected", [("admin", True), ("user,admin", True), ("user", False),
                                               ("administrator", False), (["admin"], True), (None, False)])
    def test_admin_from_role(self, client, make_token, role, expected):
        me = client.get("/api/v1/auth/me", headers=bearer(make_token("someone", role=role))).get_json()
        assert me["is_admin"] is expected

    def test_admin_from_allow_list(self, client, make_token):
        me = client.get("/api/v1/auth/me", headers=bearer(make_token("ops", role="user"))).get_json()
        assert me["is_admin"] is True


@pytest.mark.parametrize("role,is_admin", [("admin\u00a0", False), ("\u00a0admin", False), ("admin\u200b", False),
                                           ("user,admin", True), ("user, admin", True), ("user admin", True),
                                           ("Admin", False), (["user", "admin "], True)])
def test_role_names_compare_exactly_after_splitting_on_commas_and_ascii_whitespace(client, make_token, role,
                                                                                  is_admin):
    response = client.get("/api/v1/auth/me", headers=bearer(make_token("someone", role=role)))
    assert response.get_json()["is_admin"] is is_admin


def test_me_reports_the_token(client, make_token):
    token = make_token("alice", jti="j-1", sid="s-1", iat=1_800_000_000 - 60, exp=1_800_000_000)
    me = client.get("/api/v1/auth/me", headers=bearer(token))
    # a token from the future is rejected; use now-relative times for the real check
    assert me.status_code == 401
    token = make_token("alice", jti="j-1", sid="s-1", iat=now(), exp=now() + 60)
    body = client.get("/api/v1/auth/me", headers=bearer(token)).get_json()
    assert body["token"]["jti"] == "j-1" and body["token"]["sid"] == "s-1"
    assert body["email"] == "alice@example.com" and body["role"] == "user" and body["is_admin"] is False
    assert body["token"]["exp"].endswith("Z")


# --- DPoP: the URL a proof names (RFC 9449 §4.3) ----------------------------------------------


@pytest.mark.parametrize(("url", "normal"), [
    ("https://API.example.com:443/a/b", "https://api.example.com/a/b"),
    ("http://api.example.com", "http://api.example.com/"),
    ("http://api.example.com:8443/x?q=1#f", "http://api.example.com:8443/x"),
    ("http://[::1]:80/%7euser/%2f%2F", "http://[::1]/~user/%2F%2F"),
    ("ftp://api.example.com/", None),
    ("http://a@api.example.com/", None),
    ("http://api.example.com:99999/", None),
    ("http:///path", None),
    (None, None),
])
def test_urls_are_compared_as_rfc_3986_normalizes_them(url, normal):
    assert normalized_url(url) == normal
