"""The OpenID Connect Back-Channel Logout receiver: every validation rule of the spec's §2.4
and §2.6 (each refusal with a control: nothing was revoked), and what a valid logout token
revokes, in HS256 and JWKS mode."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa

from app.services import services
from tests.conftest import SECRET, encode, me
from tests.support.jwks_server import SigningKey

# Every route on both databases: PostgreSQL runs reads on psycopg's cursor (app/db.py).
pytestmark = pytest.mark.parametrize("backend", ["sqlite", "postgresql"], indirect=True)

ISSUER = "https://auth.example.com"
EVENT = "http://schemas.openid.net/event/backchannel-logout"
URL = "/api/v1/auth/backchannel-logout"


@pytest.fixture
def settings_overrides():
    return {"JWT_ISSUER": ISSUER, "JWT_AUDIENCE": ISSUER}


def logout_claims(**extra):
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": ISSUER, "iat": now, "exp": now + 120, "jti": uuid.uuid4().hex,
              "events": {EVENT: {}}, "sub": "alice", "sid": "session-a"}
    claims.update(extra)
    return {name: value for name, value in claims.items() if value is not DROP}


DROP = object()


def logout_token(key=SECRET, algorithm="HS256", headers=None, **claims):
    return encode(logout_claims(**claims), key, algorithm, {"typ": "logout+jwt", **(headers or {})})


def access_token(user="alice", **claims):
    now = int(time.time())
    return encode({"sub": user, "iat": now, "exp": now + 900, "iss": ISSUER, "aud": ISSUER, **claims})


def send(client, token, **kwargs):
    return client.post(URL, data={"logout_token": token}, **kwargs)




def audit(app):
    return [dict(r._mapping) for r in services(app).database.rows(sa.text("SELECT * FROM revocations ORDER BY id"))]


def test_a_logout_naming_a_session_revokes_it_and_the_users_sid_less_tokens_issued_before(client, app):
    now = int(time.time())
    in_session, other_session = access_token(sid="session-a"), access_token(sid="session-b")
    sid_less_before, sid_less_after = access_token(iat=now - 5), access_token(iat=now + 5)
    someone_else = access_token("bob", sid="session-a-of-bob")
    for token in (in_session, other_session, sid_less_before, sid_less_after, someone_else):
        assert me(client, token) == 200
    response = send(client, logout_token(iat=now))
    assert response.status_code == 200 and response.headers["Cache-Control"] == "no-store"
    assert me(client, in_session) == "token_revoked"
    assert me(client, sid_less_before) == "token_revoked"  # may have been the session's
    assert me(client, other_session) == 200  # another session of the user
    assert me(client, sid_less_after) == 200  # issued after the logout token
    assert me(client, someone_else) == 200
    assert {(r["kind"], r["actor"]) for r in audit(app)} == {("session", f"backchannel:{ISSUER}"),
                                                            ("sidless", f"backchannel:{ISSUER}")}


def test_a_logout_naming_only_the_user_cuts_off_at_the_logout_tokens_own_iat(client, app):
    now = int(time.time())
    before, with_sid, after = access_token(iat=now - 5), access_token(sid="s-9", iat=now - 5), access_token(iat=now + 5)
    # Sent late (say, retried): the cutoff is still the token's iat, not the time it arrived.
    assert send(client, logout_token(sid=DROP, iat=now - 1)).status_code == 200
    assert me(client, before) == "token_revoked" and me(client, with_sid) == "token_revoked"
    assert me(client, after) == 200
    assert [(r["kind"], r["target"]) for r in audit(app)] == [("user", "alice")]
    cutoff = audit(app)[0]["cutoff"]  # SQLite hands back the text it keeps
    cutoff = datetime.fromisoformat(cutoff).replace(tzinfo=UTC) if isinstance(cutoff, str) else cutoff
    assert cutoff.timestamp() == pytest.approx(now - 1)


def test_a_logout_naming_only_a_session_revokes_that_session(client):
    in_session, sid_less = access_token(sid="session-a"), access_token()
    assert send(client, logout_token(sub=DROP)).status_code == 200
    assert me(client, in_session) == "token_revoked" and me(client, sid_less) == 200


def test_a_replayed_logout_token_is_a_200_with_no_further_effect(client, app):
    token = logout_token()
    assert send(client, token).status_code == 200
    rows = audit(app)
    assert send(client, token).status_code == 200
    assert audit(app) == rows


REFUSED = {
    "wrong secret": lambda: logout_token(key="another-secret-another-secret-xx"),
    "alg none": lambda: logout_token().rsplit(".", 1)[0].replace(logout_token().split(".")[0], "eyJhbGciOiJub25lIn0")
    + ".",
    "wrong iss": lambda: logout_token(iss="https://evil.example.com"),
    "no iss": lambda: logout_token(iss=DROP),
    "aud not ours": lambda: logout_token(aud="https://other.example.com"),
    "no aud": lambda: logout_token(aud=DROP),
    "iat a string": lambda: logout_token(iat=str(int(time.time()))),
    "no iat": lambda: logout_token(iat=DROP),
    "nbf a string": lambda: logout_token(nbf="1"),
    "nbf true": lambda: logout_token(nbf=True),
    "exp past": lambda: logout_token(iat=int(time.time()) - 200, exp=int(time.time()) - 100),
    "no exp": lambda: logout_token(exp=DROP),
    "iat older than 5 minutes": lambda: logout_token(iat=int(time.time()) - 400, exp=int(time.time()) + 60),
    "iat in the future": lambda: logout_token(iat=int(time.time()) + 600, exp=int(time.time()) + 900),
    "no jti": lambda: logout_token(jti=DROP),
    "no events": lambda: logout_token(events=DROP),
    "events without the member": lambda: logout_token(events={"http://schemas.openid.net/event/other": {}}),
    "the member not an object": lambda: logout_token(events={EVENT: "yes"}),
    "events an array": lambda: logout_token(events=[EVENT]),
    "neither sub nor sid": lambda: logout_token(sub=DROP, sid=DROP),
    "sub not a string": lambda: logout_token(sub=123),
    "a nonce": lambda: logout_token(nonce="n-1"),
    "typ JWT": lambda: logout_token(headers={"typ": "JWT"}),
    "typ at+jwt": lambda: logout_token(headers={"typ": "at+jwt"}),
    "an access token": lambda: access_token(sid="session-a"),
    "not a JWT": lambda: "not-a-jwt",
    "crit header": lambda: logout_token(headers={"crit": ["exp"]}),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_an_invalid_logout_token_is_a_400_and_revokes_nothing(client, app, case):
    victim = access_token(sid="session-a")
    assert me(client, victim) == 200
    response = send(client, REFUSED[case]())
    assert response.status_code == 400, response.get_data()[:200]
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert body["error"] == "invalid_request" and body["error_description"]
    assert me(client, victim) == 200 and audit(app) == []


@pytest.mark.parametrize("request_kwargs", [
    {"json": {"logout_token": "x"}}, {"data": {"token": "x"}}, {"data": "logout_token=", "content_type":
                                                                  "application/x-www-form-urlencoded"},
], ids=["json", "no field", "empty"])
def test_a_body_that_is_not_a_form_with_a_logout_token_is_a_400(client, request_kwargs):
    response = client.post(URL, **request_kwargs)
    assert response.status_code == 400 and response.get_json()["error"] == "invalid_request"


def test_a_logout_token_never_authenticates_an_api_call(client):
    assert me(client, logout_token()) == "invalid_token"


def test_the_store_down_is_a_503_so_the_sender_retries(client, app, monkeypatch):
    from redis.exceptions import ConnectionError as RedisConnectionError

    store = services(app).store

    def down(*_args, **_kwargs):
        raise RedisConnectionError("Redis went away")

    monkeypatch.setattr(store.client.client, "exists", down)
    response = send(client, logout_token())
    assert response.status_code == 503 and response.get_json()["code"] == "service_unavailable"
    assert audit(app) == []


def test_it_is_in_the_openapi_document(client):
    operation = client.get("/openapi.json").get_json()["paths"][URL]["post"]
    assert "application/x-www-form-urlencoded" in operation["requestBody"]["content"]
    assert operation["responses"]["400"]["content"]["application/json"]["schema"]["$ref"].endswith("OAuthError")
    assert operation["security"] == []


def test_a_banned_users_token_is_refused(client):
    assert me(client, access_token(banned=True)) == "invalid_token"
    assert me(client, access_token(banned=False)) == 200


class TestFailuresAreRateLimited:
    @pytest.fixture
    def settings_overrides(self):
        return {"JWT_ISSUER": ISSUER, "JWT_AUDIENCE": ISSUER, "RATE_LIMITS_ENABLED": "true",
                "RATE_LIMIT_AUTH_FAILURES": "3/minute"}

    def test_past_the_limit_failures_are_a_429(self, client):
        for _ in range(3):
            assert send(client, "not-a-jwt").status_code == 400
        assert send(client, "not-a-jwt").status_code == 429


class TestJwksMode:
    @pytest.fixture
    def settings_overrides(self, jwks):
        return {"JWKS_URL": jwks.url, "BETTER_AUTH_SECRET": "", "JWT_ISSUER": ISSUER, "JWT_AUDIENCE": ISSUER}

    def test_a_logout_token_signed_with_a_published_key_is_honoured_and_hs256_is_not(self, client, jwks):
        key = jwks.publish(SigningKey("EdDSA", "k1"))
        victim = key.sign({**{k: v for k, v in logout_claims().items() if k not in ("events", "jti")}})
        assert me(client, victim) == 200
        assert send(client, logout_token(key=SECRET)).status_code == 400
        assert me(client, victim) == 200
        signed = key.sign(logout_claims(), {"typ": "logout+jwt"})
        assert send(client, signed).status_code == 200
        assert me(client, victim) == "token_revoked"


class TestWhateverClaimNamesTheUser:
    """JWT_USER_CLAIM=id: Better Auth's `id`, which a generic provider's `sub` need not equal. A
    logout naming `sub` still revokes that subject's tokens (never a 200 with no effect)."""

    @pytest.fixture
    def settings_overrides(self):
        return {"JWT_ISSUER": ISSUER, "JWT_AUDIENCE": ISSUER, "JWT_USER_CLAIM": "id"}

    def test_a_logout_by_sub_revokes_the_subjects_tokens(self, client):
        now = int(time.time())
        token, other = access_token("subject-1", id="user-1", iat=now - 5), access_token("subject-2", id="user-2")
        assert me(client, token) == 200 and me(client, other) == 200
        assert send(client, logout_token(sub="subject-1", sid=DROP, iat=now)).status_code == 200
        assert me(client, token) == "token_revoked"
        assert me(client, other) == 200


def test_a_sender_retrying_an_old_sign_out_keeps_its_cutoff(client):
    """A fresh logout token (recent iat) for a sign-out that happened earlier: `revoked_before`
    is the cutoff, so tokens issued since the sign-out keep working."""
    now = int(time.time())
    before, since = access_token(iat=now - 60), access_token(iat=now - 10)
    assert send(client, logout_token(sid=DROP, iat=now, revoked_before=now - 30)).status_code == 200
    assert me(client, before) == "token_revoked"
    assert me(client, since) == 200


@pytest.mark.parametrize("revoked_before", [lambda now: now + 60, lambda now: "yesterday", lambda now: -1])
def test_a_cutoff_after_the_logout_token_or_not_a_date_is_refused(client, app, revoked_before):
    now = int(time.time())
    response = send(client, logout_token(sid=DROP, iat=now, revoked_before=revoked_before(now)))
    assert response.status_code == 400 and response.get_json()["error"] == "invalid_request"
    assert audit(app) == []
