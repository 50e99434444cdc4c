"""Sign-out, session revocation and bans in Better Auth reach taskgate at once (issue 16).

The real, pinned better-auth package (tests/interop/issuer) with the repo's
@taskgate/better-auth plugin installed from integrations/better-auth sends its logout tokens
to taskgate instance A; instance B, a second gunicorn sharing A's Redis and PostgreSQL, is
where most checks look, so a revocation must be effective on every instance by the time
Better Auth answers. Deployments: EdDSA through the JWKS with Better Auth's default payload
(no sid) and with definePayload adding sid, and a shared-secret (HS256) one without the jwt()
plugin. Figures (how long after the sign-out the token is rejected, what a sign-out costs
Better Auth with taskgate up, down or hanging) are printed and kept as test properties.
"""

from __future__ import annotations

import socket
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import requests

from serve import SERVERS
from tests.conftest import bearer
from tests.interop.conftest import new_email
from tests.interop.issuer import BetterAuthIssuer, IssuerError, Session, decode_unverified
from tests.support.clock import next_second
from tests.support.servers import AppServer, free_port, production_env, wait_until
from tests.support.services import redis_key_prefix, require_redis

pytestmark = pytest.mark.integration

# Retries fast enough that "taskgate is back" shows within a second or so.
RETRY = {"retry_initial_ms": 200, "retry_max_ms": 1000}

MODES = {
    "eddsa": {"alg": "EdDSA", "define_payload": False, "jwt_plugin": True},
    "eddsa-sid": {"alg": "EdDSA", "define_payload": True, "jwt_plugin": True},
    "hs256": {"jwt_plugin": False},
}


@dataclass
class Deployment:
    mode: str
    issuer: BetterAuthIssuer
    a: AppServer  # the instance the plugin sends logout tokens to
    b: AppServer  # another instance of the same taskgate

    @property
    def tokens_carry_sid(self) -> bool:
        return self.mode != "eddsa"  # Better Auth's default payload has no sid; the HS256 route adds one

    def token(self, session: Session) -> str:
        if self.mode == "hs256":
            return self.issuer.hs256_token(session, with_issuer=True)
        return self.issuer.token(session)

    def me(self, token: str, instance: AppServer | None = None) -> requests.Response:
        return requests.get(f"{(instance or self.b).url}/api/v1/auth/me", headers=bearer(token), timeout=5)

    def accepted(self, token: str) -> bool:
        """On both instances; a mixed answer is a failure of its own."""
        answers = {self.me(token, instance).status_code for instance in (self.a, self.b)}
        assert answers in ({200}, {401}), answers
        return answers == {200}

    def assert_revoked(self, token: str) -> None:
        for instance in (self.b, self.a):
            response = self.me(token, instance)
            assert response.status_code == 401, (instance.url, response.status_code, response.text,
                                                 self.issuer.plugin_log())
            assert response.json()["code"] == "token_revoked", response.json()


@pytest.fixture(scope="module")
def shared_services(postgres_url: str) -> Iterator[tuple[str, str, str]]:
    with redis_key_prefix("taskgate-e2e") as prefix:
        yield postgres_url, require_redis(), prefix


def start_deployment(mode: str, services: tuple[str, str, str]) -> Deployment:
    database_url, redis_url, prefix = services
    # One instance under each supported server.
    a, b = (AppServer(production_env(database_url, redis_url, prefix, ""), server=server)
            for server in SERVERS)
    issuer = BetterAuthIssuer(**MODES[mode], taskgate_url=a.url, taskgate_options=RETRY).start()
    hs256 = mode == "hs256"
    # As the README says: BETTER_AUTH_URL alone (issuer, audience and JWKS URL default from it);
    # the shared-secret deployment gives the secret and no JWKS instead.
    for instance in (a, b):
        instance.env.update({"BETTER_AUTH_URL": issuer.url, "BETTER_AUTH_SECRET": issuer.secret if hs256 else ""})
        if hs256:
            instance.env["JWKS_URL"] = ""
    deployment = Deployment(mode, issuer, a, b)
    try:
        a.__enter__()
        b.__enter__()
    except BaseException:
        stop_deployment(deployment)
        raise
    assert issuer.taskgate_state()["signingMode"] == ("hs256" if hs256 else "jwks")
    return deployment


def stop_deployment(deployment: Deployment) -> None:
    for instance in (deployment.a, deployment.b):
        instance.__exit__(None, None, None)
    deployment.issuer.stop()


@pytest.fixture(scope="module")
def deployment(request: pytest.FixtureRequest, node_ready, shared_services) -> Iterator[Deployment]:
    started = start_deployment(request.param, shared_services)
    yield started
    stop_deployment(started)


def signed_in_twice(deployment: Deployment) -> tuple[Session, Session]:
    """One user, two sessions (two browsers)."""
    first = deployment.issuer.sign_up(new_email())
    return first, deployment.issuer.sign_in(first.user["email"])


def admin_of(deployment: Deployment) -> Session:
    session = deployment.issuer.sign_up(new_email())
    deployment.issuer.make_admin(session.user["id"])
    return session


def report(record_property, name: str, value: float) -> None:
    record_property(name, round(value, 1))
    print(f"{name}: {value:.1f}")


@pytest.mark.parametrize("deployment", ["eddsa", "eddsa-sid", "hs256"], indirect=True)
def test_sign_out_kills_that_sessions_token(deployment: Deployment, record_property):
    session, other = signed_in_twice(deployment)
    token, other_token = deployment.token(session), deployment.token(other)
    assert deployment.accepted(token) and deployment.accepted(other_token)

    deployment.issuer.sign_out(session)
    answered = time.monotonic()
    rejected = deployment.me(token)  # instance B: A got the logout token
    rejected_after = (time.monotonic() - answered) * 1000

    assert rejected.status_code == 401, (rejected.text, deployment.issuer.plugin_log())
    assert rejected.json()["code"] == "token_revoked"
    report(record_property, f"ms_from_sign_out_response_to_rejection_{deployment.mode}", rejected_after)
    deployment.assert_revoked(token)
    if deployment.tokens_carry_sid:
        assert deployment.accepted(other_token), "another session's token lives on"
    else:
        # Without a sid, the other session's earlier token cannot be told apart from the ended
        # session's: it is revoked too, and that session gets a working token again.
        deployment.assert_revoked(other_token)
        next_second()
        assert deployment.accepted(deployment.token(other))


@pytest.mark.parametrize("deployment", ["eddsa", "eddsa-sid"], indirect=True)
def test_revoke_user_session_kills_session_a_and_leaves_session_b(deployment: Deployment):
    session_a, session_b = signed_in_twice(deployment)
    token_a, token_b = deployment.token(session_a), deployment.token(session_b)
    if deployment.tokens_carry_sid:
        assert decode_unverified(token_a)[1]["sid"] == deployment.issuer.session_id(session_a)
    assert deployment.accepted(token_a) and deployment.accepted(token_b)

    deployment.issuer.admin_call(admin_of(deployment), "revoke-user-session", {"sessionToken": session_a.token})

    deployment.assert_revoked(token_a)
    if deployment.tokens_carry_sid:
        assert deployment.accepted(token_b)
    else:
        deployment.assert_revoked(token_b)  # no sid: as in the sign-out test
        next_second()
    assert deployment.accepted(deployment.token(session_b)), "session B goes on"
    with pytest.raises(IssuerError, match="HTTP 401"):
        deployment.token(session_a)  # and A is over in Better Auth too


@pytest.mark.parametrize("deployment", ["eddsa", "eddsa-sid"], indirect=True)
def test_ban_user_kills_every_token_of_the_user(deployment: Deployment):
    session_a, session_b = signed_in_twice(deployment)
    tokens = [deployment.token(session_a), deployment.token(session_a), deployment.token(session_b)]
    bystander = deployment.token(deployment.issuer.sign_up(new_email()))
    assert all(deployment.accepted(t) for t in tokens)

    deployment.issuer.admin_call(admin_of(deployment), "ban-user", {"userId": session_a.user["id"]})

    for token in tokens:
        deployment.assert_revoked(token)
    assert deployment.accepted(bystander)
    with pytest.raises(IssuerError, match="HTTP 401"):
        deployment.token(session_b)


@pytest.mark.parametrize("deployment", ["eddsa-sid"], indirect=True)
def test_taskgate_down_during_a_sign_out_gets_the_revocation_once_back(deployment: Deployment, record_property):
    session, other = signed_in_twice(deployment)
    token, other_token = deployment.token(session), deployment.token(other)
    assert deployment.accepted(token)

    deployment.a.__exit__(None, None, None)  # the instance Better Auth sends to is down
    try:
        started = time.monotonic()
        deployment.issuer.sign_out(session)
        report(record_property, "ms_sign_out_with_taskgate_down", (time.monotonic() - started) * 1000)
        time.sleep(1)
        assert deployment.me(token).status_code == 200, "nothing reached taskgate yet (B still accepts it)"
        assert deployment.issuer.taskgate_state()["pending"] == 1, "kept in the plugin's outbox, retried"
    finally:
        deployment.a.__enter__()  # the same port
    back = time.monotonic()

    wait_until(lambda: deployment.me(token).status_code == 401, 30, "the retried revocation")
    report(record_property, "ms_from_taskgate_back_to_rejection", (time.monotonic() - back) * 1000)
    deployment.assert_revoked(token)
    assert deployment.accepted(other_token)
    assert deployment.issuer.settle_taskgate() == 0


class Blackhole:
    """A loopback port that takes connections and never answers: a hanging taskgate."""

    def __enter__(self) -> Blackhole:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)  # the kernel completes handshakes; nobody ever reads
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        return self

    def __exit__(self, *_exc) -> None:
        self.sock.close()


def sign_out_times(issuer: BetterAuthIssuer, rounds: int) -> list[float]:
    """Milliseconds per sign-out (sign-up and session set-up not counted)."""
    times = []
    for _ in range(rounds):
        session = issuer.sign_up(new_email())
        started = time.monotonic()
        issuer.sign_out(session)
        times.append((time.monotonic() - started) * 1000)
    return times


@pytest.mark.parametrize("deployment", ["eddsa-sid"], indirect=True)
def test_what_a_sign_out_costs_better_auth(deployment: Deployment, record_property):
    with BetterAuthIssuer(define_payload=True) as plain:
        sign_out_times(plain, 2)  # warm-up
        without_plugin = sign_out_times(plain, 10)
    sign_out_times(deployment.issuer, 2)
    taskgate_up = sign_out_times(deployment.issuer, 10)
    # (the logouts these two cannot deliver wait in the plugin's outbox until the issuer stops)
    with BetterAuthIssuer(define_payload=True, taskgate_url=f"http://127.0.0.1:{free_port()}") as refused:
        sign_out_times(refused, 2)
        taskgate_down = sign_out_times(refused, 10)
    with Blackhole() as hole, BetterAuthIssuer(define_payload=True, taskgate_url=hole.url) as hanging:
        taskgate_hanging = sign_out_times(hanging, 3)

    figures = {"without_plugin": without_plugin, "taskgate_up": taskgate_up, "taskgate_down": taskgate_down,
               "taskgate_hanging": taskgate_hanging}
    for name, times in figures.items():
        report(record_property, f"ms_sign_out_median_{name}", statistics.median(times))
        report(record_property, f"ms_sign_out_max_{name}", max(times))
    assert statistics.median(taskgate_up) < 1000
    assert statistics.median(taskgate_down) < 500, "a refused connection costs next to nothing"
    assert all(1900 <= t < 3500 for t in taskgate_hanging), "a hanging taskgate costs the 2 s timeout, once"
