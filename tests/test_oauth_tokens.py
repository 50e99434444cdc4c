"""Third-party apps and agents: OAuth access tokens (RFC 9068) from Better Auth's OAuth provider,
beside first-party tokens and never one for the other; scopes; the protected-resource metadata
(RFC 9728); DPoP-bound tokens (RFC 9449); and the revocations no provider offers: by grant, by
client, by session, by token."""

from __future__ import annotations

import time
import uuid

import pytest

from app.services import services
from tests.conftest import SECRET, answer, bearer, encode
from tests.support.dpop import DpopKey
from tests.support.jwks_server import SigningKey

# Every route on both databases: PostgreSQL runs reads on psycopg's cursor (app/db.py).
pytestmark = pytest.mark.parametrize("backend", ["sqlite", "postgresql"], indirect=True)

BETTER_AUTH = "https://auth.example.com"
OAUTH_ISSUER = f"{BETTER_AUTH}/api/auth"
RESOURCE = "https://api.example.com"
METADATA = f'resource_metadata="{RESOURCE}/.well-known/oauth-protected-resource"'


@pytest.fixture
def key(jwks) -> SigningKey:
    return jwks.publish(SigningKey("EdDSA", "k1"))


@pytest.fixture
def settings_overrides(jwks):
    # JWT_ISSUER/AUDIENCE off for first-party tokens: the admin's is conftest's plain HS256 token.
    return {"BETTER_AUTH_URL": BETTER_AUTH, "JWKS_URL": jwks.url, "BETTER_AUTH_SECRET": SECRET,
            "JWT_ALGORITHMS": "HS256,EdDSA", "OAUTH_RESOURCE_URL": RESOURCE, "JWT_ISSUER": "", "JWT_AUDIENCE": ""}


def oauth_claims(user: str = "alice", client_id: str = "calendar-app", scope: str = "tasks:read", **extra) -> dict:
    now = int(time.time())
    return {"sub": user, "iss": OAUTH_ISSUER, "aud": [RESOURCE, f"{OAUTH_ISSUER}/oauth2/userinfo"],
            "client_id": client_id, "azp": client_id, "scope": f"openid {scope} offline_access",
            "sid": f"s-{user}", "jti": uuid.uuid4().hex, "iat": now, "exp": now + 600, **extra}


def oauth_token(key: SigningKey, **claims) -> str:
    return key.sign(oauth_claims(**claims), {"typ": "at+jwt"})


def first_party(key: SigningKey, user: str = "alice", **extra) -> str:
    now = int(time.time())
    return key.sign({"sub": user, "iss": BETTER_AUTH, "aud": BETTER_AUTH, "iat": now, "exp": now + 600, **extra})


def call(client, method: str, path: str, token: str, **kwargs) -> int | str:
    """What the route answers this token: its success status, or the error's stable code."""
    return answer(client.open(path, method=method, headers=bearer(token), **kwargs))


# --- which tokens pass -----------------------------------------------------------------------


def test_an_oauth_token_for_this_api_is_accepted_and_says_who_acts(client, key):
    me = client.get("/api/v1/auth/me", headers=bearer(oauth_token(key))).get_json()
    assert me["user_id"] == "alice" and me["is_admin"] is False
    assert me["token"]["client_id"] == "calendar-app" and "tasks:read" in me["token"]["scope"].split()


@pytest.mark.parametrize("change,why", [
    ({"aud": "https://another-api.example.com"}, "another API"),
    ({"aud": [f"{OAUTH_ISSUER}/oauth2/userinfo"]}, "userinfo only"),
    ({"iss": BETTER_AUTH}, "the first-party issuer"),
    ({"client_id": None}, "no client"),
    ({"scope": 5}, "scope not a string"),
    ({"cnf": {"x5t#S256": "abc"}}, "bound by mTLS, which this API cannot check"),
    ({"role": "admin", "exp": int(time.time()) - 100}, "expired"),
])
def test_an_oauth_token_made_for_something_else_is_refused(client, key, change, why):
    claims = {**oauth_claims(), **change}
    token = key.sign({k: v for k, v in claims.items() if v is not None}, {"typ": "at+jwt"})
    assert call(client, "GET", "/api/v1/auth/me", token) in ("invalid_token", "token_expired"), why


def test_a_first_party_token_is_never_an_oauth_token_nor_the_other_way_round(client, key):
    assert call(client, "GET", "/api/v1/tasks", first_party(key)) == 200  # as today
    passing_as_first_party = key.sign(oauth_claims(), {"typ": "JWT"})  # the OAuth claims, typ changed
    assert call(client, "GET", "/api/v1/auth/me", passing_as_first_party) == "invalid_token"
    first_party_claims_as_oauth = key.sign({**oauth_claims(), "iss": BETTER_AUTH, "aud": BETTER_AUTH},
                                           {"typ": "at+jwt"})
    assert call(client, "GET", "/api/v1/auth/me", first_party_claims_as_oauth) == "invalid_token"
    hs256_oauth = encode(oauth_claims(), SECRET, "HS256", {"typ": "at+jwt"})  # never the shared secret
    assert call(client, "GET", "/api/v1/auth/me", hs256_oauth) == "invalid_token"


def test_an_opaque_token_is_a_401_that_says_so(client):
    response = client.get("/api/v1/tasks", headers={"Authorization": "Bearer 7f3a9c0de1b24c6f8a5e"})
    assert response.status_code == 401 and "opaque" in response.get_json()["detail"]


class TestWithoutAResourceUrl:
    @pytest.fixture
    def settings_overrides(self, jwks):
        return {"BETTER_AUTH_URL": BETTER_AUTH, "JWKS_URL": jwks.url, "BETTER_AUTH_SECRET": ""}

    def test_oauth_tokens_are_not_accepted_and_nothing_is_published(self, client, key):
        assert call(client, "GET", "/api/v1/auth/me", oauth_token(key)) == "invalid_token"
        assert client.get("/.well-known/oauth-protected-resource").status_code == 404
        assert "resource_metadata" not in client.get("/api/v1/tasks").headers["WWW-Authenticate"]


# --- scopes ------------------------------------------------------------------------------------


def test_read_scope_lists_but_cannot_write(client, key):
    token = oauth_token(key, scope="tasks:read")
    assert call(client, "GET", "/api/v1/tasks", token) == 200
    refused = client.post("/api/v1/tasks", json={"title": "x"}, headers=bearer(token))
    assert refused.status_code == 403 and refused.get_json()["code"] == "insufficient_scope"
    assert refused.headers["WWW-Authenticate"].startswith('Bearer error="insufficient_scope", scope="tasks:write"')
    assert METADATA in refused.headers["WWW-Authenticate"]
    assert refused.mimetype == "application/problem+json"


def test_write_scope_changes_tasks_and_every_route_asks_for_its_own(client, key):
    writer, reader = oauth_token(key, scope="tasks:write"), oauth_token(key, scope="tasks:read")
    created = client.post("/api/v1/tasks", json={"title": "from an agent"}, headers=bearer(writer))
    assert created.status_code == 201
    task = f"/api/v1/tasks/{created.get_json()['id']}"
    assert call(client, "PATCH", f"{task}/complete", writer) == 200
    assert call(client, "PATCH", task, writer, json={"title": "renamed"}) == 200
    assert call(client, "GET", task, writer) == "insufficient_scope"  # reading needs tasks:read
    assert call(client, "GET", task, reader) == 200
    for method, path in (("PUT", task), ("PATCH", task), ("DELETE", task), ("PATCH", f"{task}/complete")):
        assert call(client, method, path, reader, json={"title": "t"}) == "insufficient_scope", (method, path)
    assert call(client, "DELETE", task, writer) == 204


def test_no_oauth_token_reaches_an_admin_route_whatever_its_claims(client, key):
    token = oauth_token(key, scope="tasks:read tasks:write admin", role="admin")
    for method, path in (("POST", "/api/v1/admin/users/bob/revoke"), ("GET", "/api/v1/admin/revocations"),
                         ("POST", "/api/v1/admin/clients/other/revoke")):
        response = client.open(path, method=method, headers=bearer(token))
        challenge = response.headers.get("WWW-Authenticate", "")
        assert response.status_code == 403 and response.get_json()["code"] == "forbidden", response.get_json()
        assert challenge.startswith('Bearer error="insufficient_scope"') and "scope=" not in challenge, challenge


def test_me_and_logout_take_any_valid_oauth_token(client, key):
    token = oauth_token(key, scope="")
    assert call(client, "GET", "/api/v1/auth/me", token) == 200
    assert call(client, "POST", "/api/v1/auth/logout", token) == 204
    assert call(client, "GET", "/api/v1/auth/me", token) == "token_revoked"


def test_an_oauth_token_signs_out_only_itself_never_its_user_everywhere(client, key):
    app_token, users_own = oauth_token(key, scope="tasks:read"), first_party(key)
    refused = client.post("/api/v1/auth/logout", json={"everywhere": True}, headers=bearer(app_token))
    problem, challenge = refused.get_json(), refused.headers.get("WWW-Authenticate", "")
    assert refused.status_code == 403 and problem["code"] == "forbidden", problem
    assert "only itself" in problem["detail"], problem
    assert challenge.startswith('Bearer error="insufficient_scope"') and "scope=" not in challenge, challenge
    assert METADATA in challenge, challenge
    assert call(client, "GET", "/api/v1/tasks", users_own) == 200  # nothing was revoked
    assert call(client, "GET", "/api/v1/tasks", app_token) == 200
    assert call(client, "POST", "/api/v1/auth/logout", app_token, json={"everywhere": False}) == 204
    assert call(client, "GET", "/api/v1/tasks", app_token) == "token_revoked"
    assert call(client, "GET", "/api/v1/tasks", users_own) == 200  # the user's own session goes on
    logout = client.get("/openapi.json").get_json()["paths"]["/api/v1/auth/logout"]["post"]
    assert "403" in logout["responses"], sorted(logout["responses"])


# --- discovery ---------------------------------------------------------------------------------


def test_the_protected_resource_metadata_field_by_field(client):
    document = client.get("/.well-known/oauth-protected-resource").get_json()
    assert document["resource"] == RESOURCE
    assert document["authorization_servers"] == [OAUTH_ISSUER]
    assert document["scopes_supported"] == ["tasks:read", "tasks:write"]
    assert document["bearer_methods_supported"] == ["header"]
    assert document["resource_documentation"] == f"{RESOURCE}/docs"


def test_every_401_points_to_the_metadata(client, key):
    for token in (None, "not-a-token", first_party(key, exp=int(time.time()) - 100)):
        headers = bearer(token) if token else {}
        response = client.get("/api/v1/tasks", headers=headers)
        assert response.status_code == 401 and METADATA in response.headers["WWW-Authenticate"], token


def test_the_openapi_document_declares_the_scopes_on_each_operation(client):
    document = client.get("/openapi.json").get_json()
    flows = document["components"]["securitySchemes"]["oauth2"]["flows"]["authorizationCode"]
    assert flows["authorizationUrl"] == f"{OAUTH_ISSUER}/oauth2/authorize"
    assert flows["tokenUrl"] == f"{OAUTH_ISSUER}/oauth2/token"
    paths = document["paths"]
    assert {"oauth2": ["tasks:read"]} in paths["/api/v1/tasks"]["get"]["security"]
    assert {"oauth2": ["tasks:write"]} in paths["/api/v1/tasks"]["post"]["security"]
    assert {"oauth2": []} in paths["/api/v1/auth/me"]["get"]["security"]
    assert not [s for s in paths["/api/v1/admin/revocations"]["get"]["security"] if "oauth2" in s]


# --- DPoP --------------------------------------------------------------------------------------


def test_a_dpop_bound_token_needs_a_fresh_proof_of_its_key_for_this_request(client, key):
    holder = DpopKey()
    token = oauth_token(key, cnf={"jkt": holder.jkt})
    url = "http://localhost/api/v1/tasks"

    def get(headers: dict[str, str]) -> int | str:
        response = client.get("/api/v1/tasks", headers=headers)
        return 200 if response.status_code == 200 else response.get_json()["code"]

    proof = holder.proof("GET", url, token)
    assert get({"Authorization": f"DPoP {token}", "DPoP": proof}) == 200
    assert get({"Authorization": f"DPoP {token}", "DPoP": proof}) == "invalid_dpop_proof"  # replayed
    assert get(bearer(token)) == "invalid_dpop_proof"  # a stolen bound token alone
    assert get({"Authorization": f"DPoP {token}"}) == "invalid_dpop_proof"  # no proof
    fresh = holder.proof("GET", url, token)
    assert get({"Authorization": f"DPoP {token}", "DPoP": f"{fresh}, {fresh}"}) == "invalid_dpop_proof"  # joined
    assert get({"Authorization": f"DPoP {token}", "DPoP": "not a jwt"}) == "invalid_dpop_proof"
    other = DpopKey()
    assert get({"Authorization": f"DPoP {token}", "DPoP": other.proof("GET", url, token)}) == "invalid_dpop_proof"
    for change in ({"htm": "POST"}, {"htu": "http://localhost/api/v1/tasks/1"}, {"ath": "x"},
                   {"iat": int(time.time()) - 3600}):
        assert get({"Authorization": f"DPoP {token}", "DPoP": holder.proof("GET", url, token, **change)}) \
            == "invalid_dpop_proof", change
    unbound = oauth_token(key)
    assert get({"Authorization": f"DPoP {unbound}", "DPoP": holder.proof("GET", url, unbound)}) == "invalid_token"


def test_a_dpop_bound_token_is_refused_a_scope_in_the_dpop_scheme(client, key):
    """RFC 9449 §7.1: the challenge to a DPoP-bound token names the DPoP scheme, whatever the error."""
    holder = DpopKey()
    token = oauth_token(key, cnf={"jkt": holder.jkt}, scope="tasks:read")
    headers = {"Authorization": f"DPoP {token}",
               "DPoP": holder.proof("POST", "http://localhost/api/v1/tasks", token)}
    refused = client.post("/api/v1/tasks", json={"title": "t"}, headers=headers)
    challenge = refused.headers.get("WWW-Authenticate", "")
    assert refused.status_code == 403 and refused.get_json()["code"] == "insufficient_scope", refused.get_json()
    assert challenge.startswith('DPoP error="insufficient_scope", scope="tasks:write", algs="'), challenge


def test_a_dpop_proof_names_this_request_s_url_in_any_equivalent_spelling(client, key):
    """RFC 9449 §4.3: htu compared after RFC 3986 normalization, without query or fragment."""
    holder = DpopKey()
    token = oauth_token(key, cnf={"jkt": holder.jkt})
    for htu in ("HTTP://LocalHost:80/api/v1/tasks", "http://localhost/api/v1/%74asks?status=all#top"):
        proof = holder.proof("GET", htu, token)
        response = client.get("/api/v1/tasks", headers={"Authorization": f"DPoP {token}", "DPoP": proof})
        assert response.status_code == 200, (htu, response.get_json())
    for htu in ("https://localhost/api/v1/tasks", "http://localhost:8080/api/v1/tasks", "http://localhost/api/v1",
                "http://user@localhost/api/v1/tasks", "/api/v1/tasks", 7):
        proof = holder.proof("GET", htu, token)
        response = client.get("/api/v1/tasks", headers={"Authorization": f"DPoP {token}", "DPoP": proof})
        assert response.status_code == 401, (htu, response.status_code)
        assert response.get_json()["code"] == "invalid_dpop_proof", (htu, response.get_json())
        scheme, _, params = response.headers["WWW-Authenticate"].partition(" ")
        assert scheme == "DPoP" and 'algs="EdDSA ES256 ES384 ES512 PS256 RS256"' in params, params


@pytest.mark.parametrize("kind", ["first-party", "oauth"])
def test_any_token_with_cnf_needs_the_proof_whatever_its_kind(client, key, kind):
    """A `cnf` claim binds a first-party token as it binds an OAuth one: one check for both."""
    holder = DpopKey()
    make = first_party if kind == "first-party" else oauth_token
    token = make(key, cnf={"jkt": holder.jkt})
    proof = holder.proof("GET", "http://localhost/api/v1/tasks", token)
    as_bearer = client.get("/api/v1/tasks", headers=bearer(token))
    assert as_bearer.status_code == 401 and as_bearer.get_json()["code"] == "invalid_dpop_proof", as_bearer.get_json()
    with_proof = client.get("/api/v1/tasks", headers={"Authorization": f"DPoP {token}", "DPoP": proof})
    assert with_proof.status_code == 200, with_proof.get_json()
    mtls_bound = make(key, cnf={"x5t#S256": "bwcK0esc3ACC3DB2Y5_lESsXE8o9ltc05O89jdN-dg2"})
    refused = client.get("/api/v1/tasks", headers=bearer(mtls_bound))
    assert refused.status_code == 401 and refused.get_json()["code"] == "invalid_token", refused.get_json()
    assert "cannot check" in refused.get_json()["detail"], refused.get_json()


def test_a_dpop_proof_s_iat_is_judged_by_the_window_on_both_sides_of_the_clock(client, key, app):
    """RFC 9449 §11.1: a client whose clock runs a few seconds ahead is not refused; a proof
    whose iat is beyond DPOP_MAX_AGE_SECONDS on either side is, and the answer says why."""
    holder = DpopKey()
    token = oauth_token(key, cnf={"jkt": holder.jkt})
    window = services(app).settings.dpop_max_age_seconds

    def send(iat: int):
        proof = holder.proof("GET", "http://localhost/api/v1/tasks", token, iat=iat)
        return client.get("/api/v1/tasks", headers={"Authorization": f"DPoP {token}", "DPoP": proof})

    for ahead in (1, 3):
        response = send(int(time.time()) + ahead)
        assert response.status_code == 200, (ahead, response.get_json())
    for off in (window + 5, -(window + 5)):
        refused = send(int(time.time()) + off)
        problem = refused.get_json()
        assert refused.status_code == 401 and problem["code"] == "invalid_dpop_proof", (off, problem)
        assert "iat" in problem["detail"] and "signature" not in problem["detail"], (off, problem)


# --- revocations no provider offers ------------------------------------------------------------


def test_an_admin_revokes_an_app_everywhere_and_its_next_tokens_work(client, key, as_user):
    alice, bob = oauth_token(key, user="alice", client_id="bad-agent"), oauth_token(key, user="bob",
                                                                                       client_id="bad-agent")
    other_app = oauth_token(key, user="alice", client_id="calendar-app")
    admin = as_user("root", role="admin")
    response = client.post("/api/v1/admin/clients/bad-agent/revoke", json={"reason": "compromised"}, headers=admin)
    assert response.status_code == 200 and response.get_json()["client_id"] == "bad-agent"
    assert call(client, "GET", "/api/v1/tasks", alice) == "token_revoked"
    assert call(client, "GET", "/api/v1/tasks", bob) == "token_revoked"
    assert call(client, "GET", "/api/v1/tasks", other_app) == 200
    time.sleep(1.1)
    assert call(client, "GET", "/api/v1/tasks", oauth_token(key, user="alice", client_id="bad-agent")) == 200
    audit = client.get("/api/v1/admin/revocations?client_id=bad-agent", headers=admin).get_json()
    assert [(row["kind"], row["client_id"], row["reason"]) for row in audit] == [("client", "bad-agent",
                                                                                  "compromised")]


def test_a_consent_withdrawn_ends_that_grant_only(client, key, app):
    grant = oauth_token(key, user="alice", client_id="calendar-app")
    other_user, other_app = oauth_token(key, user="bob", client_id="calendar-app"), oauth_token(
        key, user="alice", client_id="todo-agent")
    services(app).store.revoke_grant("alice", "calendar-app", "backchannel:test", "consent withdrawn")
    assert call(client, "GET", "/api/v1/tasks", grant) == "token_revoked"
    assert call(client, "GET", "/api/v1/tasks", other_user) == 200
    assert call(client, "GET", "/api/v1/tasks", other_app) == 200


def test_a_session_ended_kills_its_oauth_tokens_and_the_audit_names_the_client(client, key, as_user):
    token = oauth_token(key, user="carol")
    assert client.post("/api/v1/admin/sessions/s-carol/revoke", headers=as_user("root", role="admin")).status_code \
        == 200
    assert call(client, "GET", "/api/v1/tasks", token) == "token_revoked"
    logged_out = oauth_token(key, user="dave", client_id="todo-agent")
    assert call(client, "POST", "/api/v1/auth/logout", logged_out) == 204
    rows = client.get("/api/v1/admin/revocations?user_id=dave", headers=as_user("root", role="admin")).get_json()
    assert [(row["kind"], row["client_id"]) for row in rows] == [("jti", "todo-agent")]


def test_a_sign_out_ends_the_oauth_tokens_of_that_session_but_not_a_grant_that_outlives_sessions(client, key, app):
    """A refreshed OAuth token carries no `sid`: it belongs to the grant, not to a session, so a
    sign-out (which also ends the user's first-party tokens without a sid) leaves it alone."""
    of_the_session = oauth_token(key, user="frank", sid="s-frank")
    refreshed_claims = oauth_claims(user="frank")
    del refreshed_claims["sid"]
    refreshed = key.sign(refreshed_claims, {"typ": "at+jwt"})
    first_party_without_sid = first_party(key, user="frank")
    assert services(app).store.log_out("https://issuer.test", uuid.uuid4().hex, "frank", "s-frank", time.time(), 600)
    assert call(client, "GET", "/api/v1/tasks", of_the_session) == "token_revoked"
    assert call(client, "GET", "/api/v1/auth/me", first_party_without_sid) == "token_revoked"
    assert call(client, "GET", "/api/v1/tasks", refreshed) == 200


def test_the_cli_revokes_an_app_and_a_grant(app, client, key):
    token, grant = oauth_token(key, client_id="cli-app"), oauth_token(key, user="erin", client_id="erin-app")
    runner = app.test_cli_runner()
    assert runner.invoke(args=["revoke", "client", "cli-app"]).exit_code == 0
    assert runner.invoke(args=["revoke", "grant", "erin", "erin-app"]).exit_code == 0
    assert call(client, "GET", "/api/v1/tasks", token) == "token_revoked"
    assert call(client, "GET", "/api/v1/tasks", grant) == "token_revoked"
