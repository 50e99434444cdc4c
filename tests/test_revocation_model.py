"""The revocation promise as a model (ARCHITECTURE.md, "The revocation model"): a hypothesis
state machine interleaves revocations of every kind and checks, on two stores standing for two
processes, with the faults the promise survives (Redis flushed, rolled back to an older snapshot
with and without new connections, keys evicted; the table losing its newest rows; revocations
racing in threads), against a plain set of what was acknowledged. Revocations of every kind:
a token, a session, a user, an OAuth grant (a user's tokens of one client), an OAuth client.

- No check accepts a token an acknowledged revocation covers (a 503 is fine).
- Once the faults stop, a token no revocation covers is accepted again.

A Redis loss and a table loss of the same revocation before either is repaired cannot be
survived by any design (ARCHITECTURE.md); the machine lets one store be damaged at a time.
Which rules may run never depends on what the real stores answered (no preconditions: a rule
that does not apply returns), so a replay while shrinking draws the same steps, and a failure
shrinks to a minimal example instead of hypothesis's FlakyStrategyDefinition.
REVOCATION_MODEL_EXAMPLES sets the number of runs (CI: a bounded number).
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    rule,
    run_state_machine_as_test,
)

from app.config import load_settings
from app.errors import ServiceUnavailable
from app.factory import build_services
from app.security.tokens import principal_from_claims, token_digest
from app.services import Services
from tests.support.redis_topologies import PersistentRedis

pytestmark = pytest.mark.integration
EXAMPLES = int(os.environ.get("REVOCATION_MODEL_EXAMPLES", "12"))
USERS, SESSIONS, CLIENTS = ("u0", "u1", "u2"), ("s0", "s1", "s2"), ("app0", "app1")


@dataclass(frozen=True)
class Token:
    user: str
    jti: str | None
    sid: str | None
    iat: float
    client: str | None = None  # an OAuth access token's client

    @property
    def claims(self) -> dict:
        claims = {"sub": self.user, "iat": self.iat, "exp": self.iat + 3600}
        if self.jti:
            claims["jti"] = self.jti
        if self.sid:
            claims["sid"] = self.sid
        return claims


@dataclass(frozen=True)
class Revocation:
    """What one revocation covers, as the model sees it."""

    kind: str  # jti, token, session, user, grant, client
    value: str
    cutoff: float = 0.0
    user: str | None = None  # grant: whose

    def covers(self, token: Token) -> bool:
        if self.kind == "grant":
            return token.user == self.user and token.client == self.value and token.iat <= self.cutoff
        if self.kind == "client":
            return token.client == self.value and token.iat <= self.cutoff
        if self.kind == "jti":
            return token.jti == self.value
        if self.kind == "token":
            return token.jti is None and token_digest(token.claims) == self.value
        if self.kind == "session":
            return token.sid == self.value
        return token.user == self.value and token.iat <= self.cutoff


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "postgresql":
        return request.getfixturevalue("postgres_url")
    return f"sqlite:///{request.getfixturevalue('sqlite_template')}"


def make_store(database_url: str, redis_url: str, prefix: str, instance: Path) -> Services:
    return build_services(load_settings({
        "APP_ENV": "testing", "DATABASE_URL": database_url, "REDIS_URL": redis_url, "REDIS_KEY_PREFIX": prefix,
        "BETTER_AUTH_SECRET": "s" * 40, "REVOCATION_SYNC_SECONDS": "60", "REDIS_SOCKET_TIMEOUT": "2"}, instance))


class RevocationModel(RuleBasedStateMachine):
    """Set up by `run_model` (class attributes: the Redis node, the database URL, a folder)."""

    node: PersistentRedis
    template_url: str
    folder: Path

    @initialize()
    def start(self) -> None:
        self.node.node.call("FLUSHALL")
        self.database_url = self._fresh_database()
        prefix = f"model-{uuid.uuid4().hex[:8]}:"
        self.stores = [make_store(self.database_url, self.node.url, prefix, self.folder) for _ in range(2)]
        self.acknowledged: list[Revocation] = []
        self.unknown: list[Revocation] = []  # answered 503: may or may not have happened
        self.all_tokens = [Token(user, uuid.uuid4().hex if n % 2 else None, SESSIONS[n % 3] if n > 2 else None,
                                 time.time(), CLIENTS[n % 2] if n > 3 else None)
                           for n, user in enumerate(USERS * 2)]
        self.redis_damaged = self.table_damaged = False
        self.snapshot: Path | None = None
        for found in self.stores:  # both running before anything happens, as processes are
            found.store.verify()

    def _fresh_database(self) -> str:
        if self.template_url.startswith("sqlite"):
            path = self.folder / f"model-{uuid.uuid4().hex[:8]}.db"
            path.write_bytes(Path(self.template_url.removeprefix("sqlite:///")).read_bytes())
            return f"sqlite:///{path}"
        engine = sa.create_engine(self.template_url)
        with engine.begin() as connection:
            connection.execute(sa.text("TRUNCATE revocations RESTART IDENTITY"))
        engine.dispose()
        return self.template_url

    def teardown(self) -> None:
        for found in getattr(self, "stores", []):
            found.store.channel.close()
            found.store.client.close()
            found.database.dispose()

    # --- tokens and checks ------------------------------------------------------------------

    @rule(user=st.sampled_from(USERS), with_jti=st.booleans(), sid=st.none() | st.sampled_from(SESSIONS),
          client=st.none() | st.sampled_from(CLIENTS))
    def mint(self, user: str, with_jti: bool, sid: str | None, client: str | None) -> None:
        self.all_tokens.append(Token(user, uuid.uuid4().hex if with_jti else None, sid, time.time(), client))

    def check(self, which: int, token: Token) -> bool | None:
        """Revoked? None for a 503."""
        found = self.stores[which]
        principal = replace(principal_from_claims(token.claims, found.settings), client_id=token.client)
        try:
            return found.store.check(principal).revoked
        except ServiceUnavailable:
            return None

    def check_a_token(self, which: int, token: Token) -> None:
        revoked = self.check(which, token)
        covered = [r for r in self.acknowledged if r.covers(token)]
        assert not (covered and revoked is False), f"store {which} accepted {token}; acknowledged: {covered}"

    @rule(which=st.integers(0, 1))
    def check_every_token(self, which: int) -> None:
        """Every token on one store (the other one may not have looked at Redis for a while)."""
        for token in self.all_tokens:
            self.check_a_token(which, token)

    # --- revocations ------------------------------------------------------------------------

    def revoke(self, which: int, how: str, value: str, token: Token | None = None) -> None:
        store = self.stores[which].store
        try:
            if how == "jti":
                record = store.revoke_jti(value, "model")
            elif how == "token":
                record = store.revoke_token(token.claims, value, "model")
            elif how == "session":
                record = store.revoke_session(value, "model")
            elif how == "grant":
                record = store.revoke_grant(token.user, value, "model")
            elif how == "client":
                record = store.revoke_client(value, "model")
            else:
                record = store.revoke_user(value, "model")
        except ServiceUnavailable:
            self.unknown.append(Revocation(how, value, time.time() + 1, token.user if token else None))
            return
        cutoff = record.cutoff.timestamp() if record.cutoff else 0.0
        self.acknowledged.append(Revocation(how, value, cutoff, token.user if token else None))

    @rule(which=st.integers(0, 1), how=st.sampled_from(["log out", "session", "user", "grant", "client"]),
          pick=st.integers(0, 1 << 16), sid=st.sampled_from(SESSIONS), user=st.sampled_from(USERS),
          client=st.sampled_from(CLIENTS))
    def revocation(self, which: int, how: str, pick: int, sid: str, user: str, client: str) -> None:
        token = self.all_tokens[pick % len(self.all_tokens)]
        if how == "grant":
            self.revoke(which, "grant", client, Token(user, None, None, 0.0, client))
        elif how == "client":
            self.revoke(which, "client", client)
        elif how == "session":
            self.revoke(which, "session", sid)
        elif how == "user":
            self.revoke(which, "user", user)
        elif token.jti:
            self.revoke(which, "jti", token.jti)
        else:
            self.revoke(which, "token", token_digest(token.claims), token)

    @rule(count=st.integers(2, 6))
    def revocations_racing(self, count: int) -> None:
        jtis = [uuid.uuid4().hex for _ in range(count)]
        threads = [threading.Thread(target=self.revoke, args=(n % 2, "jti", jti)) for n, jti in enumerate(jtis)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        self.all_tokens += [Token("u0", jti, None, time.time()) for jti in jtis]

    # --- faults -------------------------------------------------------------------------------

    @rule(fault=st.sampled_from(["save", "flush all", "roll back under live connections",
                                 "restart from the last save", "evict keys"]),
          picks=st.lists(st.integers(0, 1 << 16), min_size=1, max_size=4))
    def redis_fault(self, fault: str, picks: list[int]) -> None:
        """Redis loses data: a snapshot is only taken, or it comes back without what it held."""
        if fault == "save":
            self.snapshot = self.node.snapshot()
            return
        if self.table_damaged or (self.snapshot is None and fault != "flush all" and fault != "evict keys"):
            return  # one store damaged at a time (see the module's docstring)
        if fault == "flush all":
            self.node.node.call("FLUSHALL")
        elif fault == "roll back under live connections":
            self.node.roll_back()
        elif fault == "restart from the last save":
            self.node.restart_from(self.snapshot)
        else:
            with self.node.client(decode_responses=True) as client:
                keys = sorted(client.keys("*"))
                if keys:
                    client.delete(*{keys[pick % len(keys)] for pick in picks})
        self.redis_damaged = True

    @rule(which=st.integers(0, 1), user=st.sampled_from(USERS), restart=st.booleans())
    def revocation_rolled_back(self, which: int, user: str, restart: bool) -> None:
        """Redis applies a revocation, then goes back to before it: in place, under live
        connections, or restarted from its snapshot (new connections)."""
        if self.table_damaged:
            return  # one store damaged at a time (module docstring)
        snapshot = self.node.snapshot()
        self.revocation(which, "user", 0, SESSIONS[0], user, CLIENTS[0])
        if restart:
            self.node.restart_from(snapshot)
        else:
            self.node.roll_back()
        self.redis_damaged = True

    @rule(count=st.integers(1, 4))
    def table_loses_its_newest_rows(self, count: int) -> None:
        if self.redis_damaged:
            return  # one store damaged at a time (module docstring)
        self.stores[0].database.rows(sa.text("DELETE FROM revocations WHERE id IN (SELECT id FROM revocations "
                                             "ORDER BY id DESC LIMIT :n) RETURNING id"), {"n": count})
        self.table_damaged = True

    @rule(which=st.integers(0, 1))
    def periodic_sync(self, which: int) -> None:
        """What every instance does every REVOCATION_SYNC_SECONDS: a table that came back older is
        given back what Redis holds."""
        try:
            self.stores[which].store.replica.sync()
        except ServiceUnavailable:
            return
        self.table_damaged = False

    @rule()
    def heal(self) -> None:
        """The faults stop: every store verifies Redis, and every token no revocation covers is
        accepted again, on both; every covered one refused."""
        for found in self.stores:
            for _ in range(5):
                try:
                    found.store.verify()
                    break
                except ServiceUnavailable:
                    time.sleep(0.1)
        self.redis_damaged = self.table_damaged = False
        for token in self.all_tokens:
            covered = any(r.covers(token) for r in self.acknowledged)
            maybe = any(r.covers(token) for r in self.unknown)
            for which in (0, 1):
                answers = [self.check(which, token) for _ in range(3)]
                if covered:
                    assert False not in answers, f"accepted {token} after healing: {answers}"
                elif not maybe:
                    assert answers[-1] is False, f"{token} refused after healing: {answers}"


def test_no_acknowledged_revocation_is_ever_forgotten(redis_node, database_url, tmp_path):
    RevocationModel.node = redis_node
    RevocationModel.template_url = database_url
    RevocationModel.folder = tmp_path
    run_state_machine_as_test(RevocationModel, settings=settings(
        max_examples=EXAMPLES, stateful_step_count=30, deadline=None, suppress_health_check=list(HealthCheck)))
