"""Sign-outs that survive any outage (issue "Hardening, third round"): the @taskgate/better-auth
plugin's durable outbox, end to end.

The real, pinned better-auth package on a SQLite file (better-sqlite3, Better Auth's Kysely
adapter), with the repo's plugin, sends its logout tokens to taskgate instance A; instance B
shares A's Redis and PostgreSQL. A is DOWN when a user signs out; Better Auth CRASHES (SIGKILL)
and is started again on the same database during the outage; the outage lasts
TASKGATE_OUTBOX_OUTAGE_SECONDS (default 45), several times taskgate's bound on a logout token's
age, which this test sets low (TASKGATE_OUTBOX_LOGOUT_TOKEN_MAX_AGE, default 10 s, as
LOGOUT_TOKEN_MAX_AGE_SECONDS on both instances). Then A comes back: within 5 s the signed-out
session's token is refused (401 token_revoked) on both instances, while a token another session
got during the outage still works, which shows the cutoff is the sign-out's time
(revoked_before), not the delivery's. The issue's own figure is a 10-minute outage:
TASKGATE_OUTBOX_OUTAGE_SECONDS=600 TASKGATE_OUTBOX_LOGOUT_TOKEN_MAX_AGE= (empty: taskgate's
default bound, 300 s).

Also: two Better Auth processes on one database, one of them killed, the other delivers what
both had pending; and the memory adapter's outbox does not survive a restart.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from serve import SERVERS
from tests.conftest import bearer
from tests.interop.conftest import new_email
from tests.interop.issuer import BetterAuthIssuer
from tests.support.clock import next_second
from tests.support.servers import AppServer, free_port, production_env, wait_until
from tests.support.services import redis_key_prefix, require_redis

pytestmark = pytest.mark.integration

OUTAGE = float(os.environ.get("TASKGATE_OUTBOX_OUTAGE_SECONDS", "45"))
# LOGOUT_TOKEN_MAX_AGE_SECONDS on both taskgate instances; set empty for taskgate's default (300).
_MAX_AGE = os.environ.get("TASKGATE_OUTBOX_LOGOUT_TOKEN_MAX_AGE", "10")
LOGOUT_TOKEN_MAX_AGE = int(_MAX_AGE or 300)
BACK_WITHIN = 5.0  # seconds from taskgate being back to the token being refused
# Retries fast enough for BACK_WITHIN (the defaults back off to 30 s between attempts).
# A crashed process's claim is taken over when its lease ends (4 s here, 60 s by default).
PLUGIN = {"retry_initial_ms": 200, "retry_max_ms": 1000, "retry_timeout_ms": 2000, "poll_ms": 500, "lease_ms": 4000}


@dataclass
class Deployment:
    issuer: BetterAuthIssuer
    a: AppServer  # the instance the plugin sends logout tokens to
    b: AppServer  # another instance of the same taskgate

    def me(self, token: str, instance: AppServer) -> requests.Response:
        return requests.get(f"{instance.url}/api/v1/auth/me", headers=bearer(token), timeout=5)

    def answers(self, token: str, *instances: AppServer) -> set[int]:
        return {self.me(token, instance).status_code for instance in instances or (self.a, self.b)}

    def revoked(self, token: str) -> bool:
        return all(self.me(token, i).status_code == 401 and self.me(token, i).json()["code"] == "token_revoked"
                   for i in (self.a, self.b))


@pytest.fixture
def deployment(node_ready, postgres_url: str, tmp_path: Path) -> Iterator[Deployment]:
    with redis_key_prefix("taskgate-outbox") as prefix:
        env = production_env(postgres_url, require_redis(), prefix, "")
        if _MAX_AGE:
            env["LOGOUT_TOKEN_MAX_AGE_SECONDS"] = _MAX_AGE
        a, b = (AppServer(env, server=server) for server in SERVERS)
        issuer = BetterAuthIssuer(taskgate_url=a.url, taskgate_options=PLUGIN, database=tmp_path / "better-auth.sqlite",
                                  port=free_port())
        for instance in (a, b):
            instance.env["BETTER_AUTH_URL"] = f"http://127.0.0.1:{issuer.fixed_port}"
        started: list = []
        try:
            for part in (issuer, a, b):
                part.__enter__()
                started.append(part)
            yield Deployment(issuer, a, b)
        finally:
            for part in reversed(started):
                part.__exit__(None, None, None)
            issuer.stop()


def test_a_sign_out_during_an_outage_and_a_crash_reaches_taskgate_when_it_is_back(deployment, record_property):
    assert OUTAGE >= 2 * LOGOUT_TOKEN_MAX_AGE, "the outage must be well past the receiver's bound on iat"
    d = deployment
    alice = d.issuer.sign_up(new_email())
    laptop = d.issuer.sign_in(alice.user["email"])
    token = d.issuer.token(alice)  # Better Auth's default payload: no sid
    assert d.answers(token) == {200}

    d.a.__exit__(None, None, None)  # taskgate A, where the plugin sends, is down
    started = time.monotonic()
    d.issuer.sign_out(alice)
    signed_out = time.monotonic()
    record_property("ms_sign_out_with_taskgate_down", round((signed_out - started) * 1000, 1))
    state = d.issuer.taskgate_state()
    assert (state["pending"], state["durable"], state["adapter"]) == (1, True, "kysely"), state

    time.sleep(min(OUTAGE / 3, 20))
    d.issuer.restart(crash=True)  # SIGKILL, then a new process on the same SQLite file and port
    state = d.issuer.taskgate_state()
    assert state["pending"] == 1, (state, d.issuer.plugin_log())
    assert state["oldestAgeSeconds"] >= time.monotonic() - signed_out - 2, state

    next_second()
    during = d.issuer.token(laptop)  # another session's token, minted after the sign-out
    assert d.answers(token, d.b) == {200}, "nothing has reached taskgate yet"
    assert d.answers(during, d.b) == {200}

    time.sleep(max(0.0, signed_out + OUTAGE - time.monotonic()))
    state = d.issuer.taskgate_state()
    assert state["pending"] == 1 and state["failing"], state
    outage = time.monotonic() - signed_out
    d.a.__enter__()  # back, on the same port
    back = time.monotonic()
    try:
        wait_until(lambda: d.revoked(token), BACK_WITHIN, f"the revocation, {outage:.0f} s after the sign-out")
    except TimeoutError as error:
        answers = [(i.url, d.me(token, i).status_code, d.me(token, i).text[:200]) for i in (d.a, d.b)]
        raise AssertionError(f"{error}: {answers}\n{d.issuer.taskgate_state()}\n{d.issuer.plugin_log()}\n"
                             f"--- taskgate A ---\n{d.a.output()[-3000:]}") from None
    rejected_after = time.monotonic() - back

    record_property("outage_seconds", round(outage, 1))
    record_property("logout_token_max_age_seconds", LOGOUT_TOKEN_MAX_AGE)
    record_property("ms_from_taskgate_back_to_rejection", round(rejected_after * 1000, 1))
    print(f"outage {outage:.1f} s (receiver's iat bound {LOGOUT_TOKEN_MAX_AGE} s); "
          f"refused {rejected_after * 1000:.0f} ms after taskgate was back")
    assert d.answers(during) == {200}, "the cutoff is the sign-out's time: a later token of another session lives"
    assert d.answers(d.issuer.token(laptop)) == {200}
    assert d.issuer.settle_taskgate(5) == 0
    assert "delivered on attempt" in d.issuer.plugin_log(), d.issuer.plugin_log()


def test_two_instances_on_one_database_one_killed_the_other_delivers(deployment):
    """A second Better Auth process on the same SQLite file (one deployment: the same
    BETTER_AUTH_URL, secret and keys). Users sign out through it while taskgate is down; it is
    killed; the first process delivers what the second left (released, or claimed when it died)."""
    d = deployment
    port = free_port()
    other = BetterAuthIssuer(taskgate_url=d.a.url, taskgate_options=PLUGIN, database=d.issuer.database, port=port,
                             base_url=d.issuer.url, secret=d.issuer.secret, trusted_origins=[f"http://127.0.0.1:{port}"])
    with other:
        users = [d.issuer.sign_up(new_email()) for _ in range(3)]
        tokens = [d.issuer.token(u) for u in users]
        assert all(d.answers(t) == {200} for t in tokens)
        d.a.__exit__(None, None, None)
        for user in users:
            other.sign_out(user)
        assert d.issuer.taskgate_state()["pending"] == 3, "one outbox, seen by both processes"
        time.sleep(2)  # both loops have been retrying
        other.kill()
        d.a.__enter__()
        # (a claim the killed process held when it died is taken over when its lease ends)
        try:
            wait_until(lambda: all(d.revoked(t) for t in tokens), BACK_WITHIN + PLUGIN["lease_ms"] / 1000,
                       "the remaining instance's deliveries")
        except TimeoutError as error:
            raise AssertionError(f"{error}\n{other.earlier_logs[-3000:]}\n{d.issuer.plugin_log()}") from None
        assert d.issuer.settle_taskgate(5) == 0


def test_the_memory_adapter_outbox_does_not_survive_a_restart(node_ready):
    """The documented caveat: with Better Auth's memory adapter the outbox is process memory."""
    with BetterAuthIssuer(taskgate_url=f"http://127.0.0.1:{free_port()}", taskgate_options=PLUGIN,
                          port=free_port()) as issuer:
        issuer.sign_out(issuer.sign_up(new_email()))
        state = issuer.taskgate_state()
        assert (state["pending"], state["durable"], state["adapter"]) == (1, False, "memory"), state
        issuer.restart(crash=False)
        assert issuer.taskgate_state()["pending"] == 0, "lost with the process"
