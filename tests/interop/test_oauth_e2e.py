"""Third-party apps and agents end to end (issue 26): the real, pinned better-auth and
@better-auth/oauth-provider (tests/interop/issuer, OAUTH_RESOURCE) issue RFC 9068 access tokens
for taskgate, which runs as two instances (gunicorn and granian) on one PostgreSQL and one
Redis, the repo's @taskgate/better-auth plugin sending its logout tokens to instance A.

Scripted over HTTP as a client and a user's browser would do it, without a browser: dynamic
client registration (RFC 7591), the authorization code flow with PKCE, the login and consent
pages, `resource=<OAUTH_RESOURCE_URL>` on the authorization and token requests. Then what each
token may do (scopes, admin routes, first-party tokens unchanged), the discovery documents
and challenges field by field, and each way access ends: a sign-out, a withdrawn consent, the
admin's client revocation; each measured, on both instances, from the moment the revocation
returns to the moment the token is refused (printed and kept as test properties).
"""

from __future__ import annotations

import json
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from tests.conftest import bearer
from tests.interop.conftest import new_email
from tests.interop.issuer import (
    OAUTH_SCOPES,
    Authorization,
    BetterAuthIssuer,
    OAuthClient,
    Session,
    decode_unverified,
)
from tests.support.clock import next_second
from tests.support.dpop import DpopKey
from tests.support.servers import AppServer, production_env
from tests.support.services import redis_key_prefix, require_redis

pytestmark = pytest.mark.integration

RETRY = {"retry_initial_ms": 200, "retry_max_ms": 1000}
ACCESS_TOKEN_TTL = 300  # seconds: short-lived, as the README recommends for third-party tokens
HTTP_TIMEOUT = 10
REFUSAL_BOUND = 10.0  # seconds a revoked token may take to be refused before the test fails
DPOP_ALGORITHMS = ["EdDSA", "ES256", "ES384", "ES512", "PS256", "RS256"]


@dataclass
class Deployment:
    issuer: BetterAuthIssuer
    a: AppServer  # gunicorn: the instance the plugin sends logout tokens to
    b: AppServer  # granian: another instance of the same taskgate

    @property
    def resource(self) -> str:
        return self.a.url  # OAUTH_RESOURCE_URL of both instances

    @property
    def oauth_issuer(self) -> str:
        return f"{self.issuer.url}/api/auth"

    @property
    def instances(self) -> tuple[AppServer, AppServer]:
        return (self.a, self.b)

    @property
    def metadata_url(self) -> str:
        return f"{self.resource}/.well-known/oauth-protected-resource"

    def call(self, instance: AppServer, method: str, path: str, token: str | None = None,
             **kwargs) -> requests.Response:
        headers = bearer(token) if token else {}
        return requests.request(method, instance.url + path, headers=headers, timeout=HTTP_TIMEOUT, **kwargs)

    def status(self, token: str, instance: AppServer) -> int:
        return self.call(instance, "GET", "/api/v1/auth/me", token).status_code

    def accepted(self, token: str) -> bool:
        """On both instances; a mixed answer is a failure of its own."""
        answers = {self.status(token, instance) for instance in self.instances}
        assert answers in ({200}, {401}), answers
        return answers == {200}

    def assert_revoked(self, token: str) -> None:
        for instance in self.instances:
            response = self.call(instance, "GET", "/api/v1/auth/me", token)
            assert response.status_code == 401, (instance.server, response.status_code, response.text,
                                                 self.issuer.plugin_log())
            assert response.json()["code"] == "token_revoked", response.json()

    # -- the OAuth client's side -------------------------------------------------------

    def grant(self, client: OAuthClient, scope: str, *, session: Session | None = None,
              email: str | None = None) -> tuple[dict, Authorization]:
        """An authorization (login and consent pages as needed) and its token response."""
        authorization = self.issuer.oauth_authorize(client, scope, self.resource, session=session, email=email)
        assert authorization.code, authorization.callback
        return self.issuer.oauth_token(client, authorization, self.resource), authorization

    def token(self, client: OAuthClient, scope: str, **kwargs) -> str:
        return self.grant(client, scope, **kwargs)[0]["access_token"]

    def user(self) -> Session:
        """A user with a password, signed in once (their first session)."""
        return self.issuer.sign_up(new_email())

    def admin(self) -> str:
        """A first-party token of a Better Auth admin (the admin() plugin's role)."""
        session = self.issuer.sign_up(new_email())
        self.issuer.make_admin(session.user["id"])
        return self.issuer.token(session)


@pytest.fixture(scope="module")
def deployment(node_ready, postgres_url: str) -> Iterator[Deployment]:
    with redis_key_prefix("taskgate-oauth-e2e") as prefix:
        env = production_env(postgres_url, require_redis(), prefix, "")
        a, b = AppServer(env, server="gunicorn"), AppServer(env, server="granian")
        issuer = BetterAuthIssuer(define_payload=True, taskgate_url=a.url, taskgate_options=RETRY,
                                  oauth_resource=a.url, oauth_access_token_ttl=ACCESS_TOKEN_TTL)
        issuer.start()
        # BETTER_AUTH_URL alone gives the JWKS URL, the first-party issuer and audience, and
        # OAUTH_ISSUER (<BETTER_AUTH_URL>/api/auth); OAUTH_RESOURCE_URL turns OAuth tokens on.
        for instance in (a, b):
            instance.env.update({"BETTER_AUTH_URL": issuer.url, "BETTER_AUTH_SECRET": "",
                                 "OAUTH_RESOURCE_URL": a.url})
        started = Deployment(issuer, a, b)
        try:
            a.__enter__()
            b.__enter__()
            assert issuer.taskgate_state()["signingMode"] == "jwks"
            yield started
        finally:
            for instance in (a, b):
                instance.__exit__(None, None, None)
            issuer.stop()


def challenge(header: str) -> tuple[str, dict[str, str]]:
    """A WWW-Authenticate challenge: its scheme and its auth-params (RFC 9110 §11.6.1)."""
    scheme, _, rest = header.partition(" ")
    params = dict(re.findall(r'([A-Za-z_]+)="([^"]*)"', rest))
    assert re.sub(r'\s*([A-Za-z_]+)="[^"]*"\s*,?', "", rest) == "", f"unparsed parts in {header!r}"
    return scheme, params


def refusal_times(deployment: Deployment, token: str, since: float) -> dict[str, tuple[float, int]]:
    """Per instance, both polled at once: milliseconds from `since` (time.monotonic() when the
    revocation returned) to the answer of the first request refused (401), and how many
    requests that took (1: the very first request after the revocation was refused)."""
    found: dict[str, tuple[float, int]] = {}

    def poll(instance: AppServer) -> None:
        deadline = since + REFUSAL_BOUND
        requests_sent = 0
        while time.monotonic() < deadline:
            requests_sent += 1
            if deployment.status(token, instance) == 401:
                found[instance.server] = ((time.monotonic() - since) * 1000, requests_sent)
                return
            time.sleep(0.01)

    threads = [threading.Thread(target=poll, args=(instance,)) for instance in deployment.instances]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(REFUSAL_BOUND + HTTP_TIMEOUT)
    missing = [i.server for i in deployment.instances if i.server not in found]
    assert not missing, f"still accepted after {REFUSAL_BOUND} s on {missing}\n{deployment.issuer.plugin_log()}"
    return found


def report(record_property, what: str, times: dict[str, tuple[float, int]]) -> None:
    for server, (ms, requests_sent) in sorted(times.items()):
        record_property(f"ms_{what}_to_refusal_{server}", round(ms, 1))
        record_property(f"requests_{what}_to_refusal_{server}", requests_sent)
        print(f"{what} -> token refused on {server}: {ms:.1f} ms (request {requests_sent})")


# --- discovery -------------------------------------------------------------------------------


def test_the_metadata_document_field_by_field_and_the_authorization_server_it_names(deployment: Deployment):
    for instance in deployment.instances:  # the same document from every instance
        response = requests.get(f"{instance.url}/.well-known/oauth-protected-resource", timeout=HTTP_TIMEOUT)
        assert response.status_code == 200, (instance.server, response.text)
        assert response.headers["Content-Type"].startswith("application/json")
        assert response.headers["Cache-Control"] == "public, max-age=3600"
        document = response.json()
        assert sorted(document) == sorted([
            "resource", "authorization_servers", "scopes_supported", "bearer_methods_supported",
            "dpop_signing_alg_values_supported", "resource_name", "resource_documentation"])
        assert document["resource"] == deployment.resource
        assert document["authorization_servers"] == [deployment.oauth_issuer]
        assert document["scopes_supported"] == ["tasks:read", "tasks:write"]
        assert document["bearer_methods_supported"] == ["header"]
        assert document["dpop_signing_alg_values_supported"] == DPOP_ALGORITHMS
        assert document["resource_name"] == "taskgate"
        assert document["resource_documentation"] == f"{deployment.resource}/docs"

    # What an agent does next: the authorization server's own metadata (RFC 8414), found from
    # `authorization_servers`, names the endpoints it uses below.
    server = deployment.issuer.authorization_server_metadata()
    assert server["issuer"] == deployment.oauth_issuer
    assert server["authorization_endpoint"] == f"{deployment.oauth_issuer}/oauth2/authorize"
    assert server["token_endpoint"] == f"{deployment.oauth_issuer}/oauth2/token"
    assert server["registration_endpoint"] == f"{deployment.oauth_issuer}/oauth2/register"
    assert "S256" in server["code_challenge_methods_supported"]
    assert set(OAUTH_SCOPES) <= set(server["scopes_supported"])
    assert "none" in server["token_endpoint_auth_methods_supported"], "public clients (PKCE) may register"


def test_every_401_and_403_challenge_points_to_the_metadata(deployment: Deployment):
    client = deployment.issuer.oauth_register("challenges")
    reader = deployment.token(client, "tasks:read", session=deployment.user())
    for instance in deployment.instances:
        none = deployment.call(instance, "GET", "/api/v1/tasks")
        assert none.status_code == 401
        assert challenge(none.headers["WWW-Authenticate"]) == (
            "Bearer", {"realm": "taskgate", "resource_metadata": deployment.metadata_url})

        bad = deployment.call(instance, "GET", "/api/v1/tasks", "e30.e30.sig")
        assert bad.status_code == 401
        assert challenge(bad.headers["WWW-Authenticate"]) == (
            "Bearer", {"realm": "taskgate", "error": "invalid_token", "resource_metadata": deployment.metadata_url})

        scope = deployment.call(instance, "POST", "/api/v1/tasks", reader, json={"title": "no"})
        assert scope.status_code == 403 and scope.json()["code"] == "insufficient_scope", scope.text
        assert challenge(scope.headers["WWW-Authenticate"]) == (
            "Bearer", {"error": "insufficient_scope", "scope": "tasks:write",
                       "resource_metadata": deployment.metadata_url})


# --- what a token may do ---------------------------------------------------------------------


def test_scopes_decide_what_an_app_may_do_and_first_party_tokens_are_unchanged(deployment: Deployment):
    client = deployment.issuer.oauth_register("scopes")
    alice = deployment.user()

    # Read only: the consent page, then a JWT access token for this API.
    response, authorization = deployment.grant(client, "tasks:read", session=alice)
    assert authorization.steps == ["consent"]
    assert parse_qs(urlsplit(authorization.callback).query)["iss"] == [deployment.oauth_issuer]  # RFC 9207
    assert response["token_type"] == "Bearer"
    assert response["expires_in"] == ACCESS_TOKEN_TTL
    assert response["scope"] == "tasks:read"
    assert "refresh_token" not in response, "no offline_access, no refresh token"
    reader = response["access_token"]
    header, claims = decode_unverified(reader)
    assert header["typ"] == "at+jwt"
    assert claims["iss"] == deployment.oauth_issuer
    assert claims["aud"] == deployment.resource
    assert claims["sub"] == alice.user["id"]
    assert claims["client_id"] == client.client_id
    assert claims["scope"] == "tasks:read"
    assert claims["sid"] == deployment.issuer.session_id(alice)
    assert claims["exp"] - claims["iat"] == ACCESS_TOKEN_TTL

    for instance in deployment.instances:
        assert deployment.call(instance, "GET", "/api/v1/tasks", reader).status_code == 200
        refused = deployment.call(instance, "POST", "/api/v1/tasks", reader, json={"title": "nope"})
        assert refused.status_code == 403 and refused.json()["code"] == "insufficient_scope"

    # Read and write: more scopes than were consented to, so the consent page again.
    response, authorization = deployment.grant(client, "tasks:read tasks:write", session=alice)
    assert authorization.steps == ["consent"]
    writer = response["access_token"]
    created = deployment.call(deployment.a, "POST", "/api/v1/tasks", writer, json={"title": "by an agent"})
    assert created.status_code == 201, created.text
    task = created.json()
    assert deployment.call(deployment.b, "GET", f"/api/v1/tasks/{task['id']}", writer).status_code == 200
    assert deployment.call(deployment.b, "PATCH", f"/api/v1/tasks/{task['id']}/complete", writer).status_code == 200
    assert task["id"] in [t["id"] for t in deployment.call(deployment.b, "GET", "/api/v1/tasks", reader).json()]

    # openid too: `aud` is then a list (this API and the provider's userinfo endpoint).
    with_openid = deployment.token(client, "openid tasks:read", session=alice)
    userinfo = f"{deployment.oauth_issuer}/oauth2/userinfo"
    assert decode_unverified(with_openid)[1]["aud"] == [deployment.resource, userinfo]
    assert deployment.call(deployment.b, "GET", "/api/v1/tasks", with_openid).status_code == 200

    # Admin routes never take an OAuth token, even an admin's.
    deployment.issuer.make_admin(alice.user["id"])
    admins_app_token = deployment.token(client, "tasks:read tasks:write", session=alice)
    for instance in deployment.instances:
        for method, path in (("GET", "/api/v1/admin/revocations"),
                             ("POST", f"/api/v1/admin/clients/{client.client_id}/revoke")):
            answer = deployment.call(instance, method, path, admins_app_token)
            assert answer.status_code == 403 and answer.json()["code"] == "forbidden", (method, path, answer.text)
    assert deployment.accepted(admins_app_token), "the refused admin call revoked nothing"

    # The same user's first-party token: as before OAuth was turned on.
    first_party = deployment.issuer.token(alice)
    for instance in deployment.instances:
        listed = deployment.call(instance, "GET", "/api/v1/tasks", first_party)
        assert listed.status_code == 200 and task["id"] in [t["id"] for t in listed.json()]
        mine = deployment.call(instance, "POST", "/api/v1/tasks", first_party, json={"title": "mine"})
        assert mine.status_code == 201, mine.text
        assert deployment.call(instance, "GET", "/api/v1/admin/revocations", first_party).status_code == 200


def test_a_dpop_bound_token_from_the_provider_needs_a_fresh_proof_of_its_key_on_each_instance(
        deployment: Deployment):
    client, holder = deployment.issuer.oauth_register("dpop"), DpopKey()
    authorization = deployment.issuer.oauth_authorize(client, "tasks:read", deployment.resource,
                                                      session=deployment.user())
    token_endpoint = f"{deployment.oauth_issuer}/oauth2/token"
    response = deployment.issuer.oauth_token(client, authorization, deployment.resource,
                                             dpop=holder.proof("POST", token_endpoint))
    token = response["access_token"]
    header, claims = decode_unverified(token)
    assert response["token_type"] == "DPoP" and header["typ"] == "at+jwt", (response, header)
    assert claims["cnf"] == {"jkt": holder.jkt}, claims

    def listed(url: str, proof: str | None, scheme: str = "DPoP") -> requests.Response:
        headers = {"Authorization": f"{scheme} {token}", **({"DPoP": proof} if proof else {})}
        return requests.get(url, headers=headers, timeout=HTTP_TIMEOUT)

    for instance in deployment.instances:
        url = f"{instance.url}/api/v1/tasks"
        proof = holder.proof("GET", url, token)
        first = listed(url, proof)
        assert first.status_code == 200, (instance.server, first.text)
        stranger = DpopKey().proof("GET", url, token)  # another key's proof
        for refused in (listed(url, proof), listed(url, None, "Bearer"), listed(url, stranger)):
            assert refused.status_code == 401 and refused.json()["code"] == "invalid_dpop_proof", \
                (instance.server, refused.status_code, refused.text)
            assert refused.headers["WWW-Authenticate"].startswith("DPoP"), refused.headers


# --- how access ends -------------------------------------------------------------------------


def test_sign_out_kills_that_sessions_oauth_tokens_on_both_instances(deployment: Deployment, record_property):
    client = deployment.issuer.oauth_register("sign-out")
    alice = deployment.user()
    # The app sends Alice to the login page (a new session), then the consent page.
    response, authorization = deployment.grant(client, "tasks:read", email=alice.user["email"])
    assert authorization.steps == ["login", "consent"]
    token = response["access_token"]
    session = authorization.session
    # Her other session (another device) authorizes the same app: consented already, no page.
    other, other_authorization = deployment.grant(client, "tasks:read", session=alice)
    assert other_authorization.steps == []
    assert decode_unverified(token)[1]["sid"] != decode_unverified(other["access_token"])[1]["sid"]
    assert deployment.accepted(token) and deployment.accepted(other["access_token"])

    deployment.issuer.sign_out(session)
    times = refusal_times(deployment, token, time.monotonic())

    report(record_property, "sign_out", times)
    deployment.assert_revoked(token)
    assert deployment.accepted(other["access_token"]), "the other session's token lives on"
    # A new session, a new authorization: a working token.
    next_second()
    fresh, fresh_authorization = deployment.grant(client, "tasks:read", email=alice.user["email"])
    assert fresh_authorization.steps == ["login"], "the consent stands"
    assert deployment.accepted(fresh["access_token"])


def test_a_withdrawn_consent_kills_that_clients_tokens_and_no_other(deployment: Deployment, record_property):
    withdrawn, kept = deployment.issuer.oauth_register("withdrawn"), deployment.issuer.oauth_register("kept")
    alice, bob = deployment.user(), deployment.user()
    response, _ = deployment.grant(withdrawn, "tasks:read tasks:write offline_access", session=alice)
    token, refresh_token = response["access_token"], response["refresh_token"]
    second_token = deployment.token(withdrawn, "tasks:read", session=alice)  # one grant, two tokens
    other_client = deployment.token(kept, "tasks:read", session=alice)
    other_user = deployment.token(withdrawn, "tasks:read", session=bob)
    assert all(deployment.accepted(t) for t in (token, second_token, other_client, other_user))

    deployment.issuer.oauth_withdraw_consent(alice, withdrawn.client_id)
    times = refusal_times(deployment, token, time.monotonic())

    report(record_property, "consent_withdrawal", times)
    deployment.assert_revoked(token)
    deployment.assert_revoked(second_token)
    assert deployment.accepted(other_client), "her grant to another app stands"
    assert deployment.accepted(other_user), "another user's grant to that app stands"
    assert deployment.issuer.settle_taskgate() == 0

    # What the app still holds, its refresh token, mints nothing newer than the withdrawal (the
    # plugin ends the grant in Better Auth too: the provider alone leaves the refresh token).
    next_second()
    refreshed = deployment.issuer.oauth_refresh(withdrawn, refresh_token, deployment.resource)
    assert refreshed.status == 400 and refreshed.json()["error"] == "invalid_grant", refreshed.body

    # Consent given again: a new token works.
    response, authorization = deployment.grant(withdrawn, "tasks:read", session=alice)
    assert authorization.steps == ["consent"], "the consent was gone"
    assert deployment.accepted(response["access_token"])


def test_the_admins_client_revocation_kills_every_users_tokens_of_that_client(deployment: Deployment,
                                                                              record_property):
    revoked, kept = deployment.issuer.oauth_register("compromised"), deployment.issuer.oauth_register("fine")
    alice, bob = deployment.user(), deployment.user()
    tokens = [deployment.token(revoked, "tasks:read", session=user) for user in (alice, bob)]
    bystander = deployment.token(kept, "tasks:read", session=alice)
    first_party = deployment.issuer.token(alice)
    assert all(deployment.accepted(t) for t in (*tokens, bystander, first_party))

    answer = deployment.call(deployment.a, "POST", f"/api/v1/admin/clients/{revoked.client_id}/revoke",
                             deployment.admin(), json={"reason": "compromised app"})
    returned = time.monotonic()
    assert answer.status_code == 200, answer.text
    assert answer.json()["client_id"] == revoked.client_id
    times = refusal_times(deployment, tokens[0], returned)

    report(record_property, "client_revocation", times)
    for token in tokens:
        deployment.assert_revoked(token)
    assert deployment.accepted(bystander) and deployment.accepted(first_party)
    # Tokens issued after the revocation work: the app is back once it is trusted again.
    next_second()
    assert deployment.accepted(deployment.token(revoked, "tasks:read", session=bob))


def test_a_token_asked_for_without_naming_the_api_is_opaque_and_refused_saying_so(deployment: Deployment):
    """The provider answers an opaque token when neither the authorization request nor the token
    request names a `resource` (either one is enough for a JWT, as the README says)."""
    client, alice = deployment.issuer.oauth_register("no-resource"), deployment.user()
    for named_in in ("authorization", "token", "neither"):
        authorization = deployment.issuer.oauth_authorize(
            client, "tasks:read", deployment.resource if named_in == "authorization" else None, session=alice)
        token = deployment.issuer.oauth_token(client, authorization,
                                              deployment.resource if named_in == "token" else None)["access_token"]
        if named_in != "neither":
            assert decode_unverified(token)[0]["typ"] == "at+jwt", (named_in, token[:40])
            continue
        assert token.count(".") != 2, f"a JWT although no request named the API: {token[:40]}"
        for instance in deployment.instances:
            response = deployment.call(instance, "GET", "/api/v1/tasks", token)
            assert response.status_code == 401, (instance.server, response.status_code, response.text)
            assert "opaque" in response.json()["detail"], response.json()


# --- the README's flow for an agent's developer ----------------------------------------------

README_AUTH, README_API = "AUTH=https://app.example.com/api/auth", "API=https://api.example.com"


def readme_agent_flow(auth: str, api: str) -> tuple[str, str]:
    """The README's curl flow ("Let third-party apps and agents in"), pointed at `auth` and
    `api`, in two scripts split where the user's browser takes over (the `CODE=...` line)."""
    text = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    block = re.search(r"```sh\n(AUTH=.*?)```", text, re.S)
    assert block, "the README's agent flow (a sh block starting with AUTH=) is gone"
    script = block[1]
    assert README_AUTH in script and README_API in script, script
    script = script.replace(README_AUTH, f"AUTH={auth}").replace(README_API, f"API={api}")
    before, code_line, after = script.partition("\nCODE=...")
    assert code_line, "the README's agent flow has no `CODE=...` line where the user takes over"
    setting = before.splitlines()[0]  # AUTH=... API=... CALLBACK=...
    return before, setting + "\n" + after.split("\n", 1)[1]


def bash(script: str) -> str:
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", script], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, (done.returncode, done.stdout, done.stderr, script)
    return done.stdout


def test_the_readmes_curl_flow_for_an_agents_developer_works_as_written(deployment: Deployment):
    """Registration, PKCE and the token request run as the README prints them (bash, curl,
    openssl, jq); the user's part (the authorization URL in a browser) is the test's."""
    alice = deployment.user()
    registration, token_request = readme_agent_flow(deployment.oauth_issuer, deployment.resource)

    printed = bash(registration + '\necho "CLIENT_ID=$CLIENT_ID VERIFIER=$VERIFIER"').splitlines()
    authorize_url = next(line for line in printed if line.startswith(deployment.oauth_issuer + "/oauth2/authorize?"))
    found = dict(pair.split("=", 1) for pair in printed[-1].split())
    query = parse_qs(urlsplit(authorize_url).query)
    assert query.get("resource") == [deployment.resource], query
    assert query.get("scope") == ["tasks:read tasks:write"], query
    assert found["CLIENT_ID"] and found["CLIENT_ID"] != "null", printed

    callback, _, steps = deployment.issuer.oauth_browse(authorize_url, session=alice)
    assert steps == ["consent"], (steps, callback)
    code = parse_qs(urlsplit(callback).query)["code"][0]

    answer = bash(f"CLIENT_ID={found['CLIENT_ID']} VERIFIER={found['VERIFIER']} CODE={code}\n" + token_request
                  + '\necho; printf "%s" "$TOKEN"').rsplit("\n", 1)
    listed, token = answer[0], answer[1]
    header, claims = decode_unverified(token)
    assert header["typ"] == "at+jwt" and claims["aud"] == deployment.resource, (header, claims)
    assert claims["client_id"] == found["CLIENT_ID"] and claims["sub"] == alice.user["id"], claims
    assert json.loads(listed) == [], listed  # the API's answer for a user with no tasks yet
