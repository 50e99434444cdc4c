"""taskgate against the real better-auth package: sign up through Better Auth, take its
JWT, call taskgate with it. Every algorithm of the jwt() plugin, key rotation, an admin
made by the admin() plugin, definePayload's jti and sid, and the HS256 shared-secret route."""

from __future__ import annotations

import pytest

from tests.conftest import bearer
from tests.interop.conftest import new_email
from tests.interop.issuer import ALGORITHMS, decode_unverified

pytestmark = pytest.mark.integration


def signed_up(issuer):
    session = issuer.sign_up(new_email())
    return session, issuer.token(session)


@pytest.mark.parametrize("alg", ALGORITHMS)
def test_a_better_auth_token_works_end_to_end(issuers, taskgate, alg):
    issuer = issuers(alg)
    client = taskgate(issuer)
    session, token = signed_up(issuer)
    header, claims = decode_unverified(token)
    assert header["alg"] == alg and "jti" not in claims and claims["iss"] == claims["aud"] == issuer.url

    me = client.get("/api/v1/auth/me", headers=bearer(token))
    assert me.status_code == 200, me.get_json()
    assert me.get_json()["user_id"] == session.user["id"] == claims["sub"]
    assert me.get_json()["email"] == session.user["email"] and me.get_json()["is_admin"] is False

    created = client.post(f"/api/{claims['sub']}/tasks", json={"title": f"via {alg}"}, headers=bearer(token))
    assert created.status_code == 201
    assert [t["title"] for t in client.get("/api/v1/tasks", headers=bearer(token)).get_json()] == [f"via {alg}"]


def test_a_token_from_another_issuer_is_rejected(issuers, taskgate):
    client = taskgate(issuers("EdDSA"))
    _, foreign = signed_up(issuers("ES256"))  # its own keys, iss and aud
    assert client.get("/api/v1/auth/me", headers=bearer(foreign)).get_json()["code"] == "invalid_token"


def test_key_rotation(issuers, taskgate):
    issuer = issuers("ES256")
    client = taskgate(issuer)
    session, before = signed_up(issuer)
    assert client.get("/api/v1/auth/me", headers=bearer(before)).status_code == 200
    issuer.rotate_keys()
    after = issuer.token(session)
    assert decode_unverified(after)[0]["kid"] != decode_unverified(before)[0]["kid"]
    assert client.get("/api/v1/auth/me", headers=bearer(after)).status_code == 200
    assert client.get("/api/v1/auth/me", headers=bearer(before)).status_code == 200


def test_an_admin_made_by_the_admin_plugin_uses_the_admin_routes(issuers, taskgate):
    issuer = issuers("EdDSA")
    client = taskgate(issuer)
    session, user_token = signed_up(issuer)
    assert client.get("/api/v1/admin/revocations", headers=bearer(user_token)).status_code == 403
    issuer.make_admin(session.user["id"])
    admin_token = issuer.token(session)
    assert decode_unverified(admin_token)[1]["role"] == "admin"
    assert client.get("/api/v1/auth/me", headers=bearer(admin_token)).get_json()["is_admin"] is True

    victim_session, victim_token = signed_up(issuer)
    response = client.post(f"/api/v1/admin/users/{victim_session.user['id']}/revoke", headers=bearer(admin_token))
    assert response.status_code == 200
    assert client.get("/api/v1/auth/me", headers=bearer(victim_token)).get_json()["code"] == "token_revoked"


def test_logout_of_a_token_without_jti(issuers, taskgate):
    issuer = issuers("EdDSA")
    client = taskgate(issuer)
    _, token = signed_up(issuer)
    assert client.post("/api/v1/auth/logout", headers=bearer(token)).status_code == 204
    assert client.get("/api/v1/auth/me", headers=bearer(token)).get_json()["code"] == "token_revoked"


def test_define_payload_jti_and_sid_make_logout_and_session_revocation_work(issuers, taskgate):
    issuer = issuers("EdDSA", define_payload=True)
    client = taskgate(issuer, ADMIN_USER_IDS="ops-admin")
    session, token = signed_up(issuer)
    _, claims = decode_unverified(token)
    assert claims["jti"] and claims["sid"]
    me = client.get("/api/v1/auth/me", headers=bearer(token)).get_json()
    assert me["token"]["jti"] == claims["jti"] and me["token"]["sid"] == claims["sid"]

    second = issuer.token(session)  # same session, new jti
    assert client.post("/api/v1/auth/logout", headers=bearer(token)).status_code == 204
    assert client.get("/api/v1/auth/me", headers=bearer(token)).get_json()["code"] == "token_revoked"
    assert client.get("/api/v1/auth/me", headers=bearer(second)).status_code == 200

    other_session = issuer.sign_in(session.user["email"])
    other = issuer.token(other_session)
    admin_session, _ = signed_up(issuer)
    issuer.make_admin(admin_session.user["id"])
    admin = issuer.token(admin_session)
    assert client.post(f"/api/v1/admin/sessions/{claims['sid']}/revoke", headers=bearer(admin)).status_code == 200
    assert client.get("/api/v1/auth/me", headers=bearer(second)).get_json()["code"] == "token_revoked"
    assert client.get("/api/v1/auth/me", headers=bearer(other)).status_code == 200  # another session


def test_hs256_tokens_minted_by_the_frontend_with_the_shared_secret(issuers, taskgate):
    issuer = issuers("EdDSA")
    client = taskgate(issuer, secret=issuer.secret, JWT_ISSUER="", JWT_AUDIENCE="", JWT_ALGORITHMS="HS256,EdDSA")
    session, jwks_token = signed_up(issuer)
    hs256 = issuer.request("GET", "/test/hs256-token", session=session).json()["token"]
    assert decode_unverified(hs256)[0]["alg"] == "HS256"
    me = client.get("/api/v1/auth/me", headers=bearer(hs256))
    assert me.status_code == 200 and me.get_json()["user_id"] == session.user["id"]
    assert me.get_json()["token"]["sid"]
    # JWT_ISSUER/JWT_AUDIENCE are off here (the HS256 route sets neither), and the
    # JWKS token still verifies alongside: each algorithm has exactly one key source.
    assert client.get("/api/v1/auth/me", headers=bearer(jwks_token)).status_code == 200
