"""The denylist's entry point (CONTRACT §3; the model and its proof: ARCHITECTURE.md, "The
revocation model"): the per-request check, and every kind of revocation, recorded in the table
first, then applied to Redis, then told to every instance before the call returns.
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
import time
from dataclasses import dataclass
from typing import Any

from app.db import Database
from app.errors import ServiceUnavailable
from app.metrics import REVOCATION_CHECKS, labelled
from app.redis_client import RedisClient, ScriptCall, fail_closed
from app.revocation.channel import FloorChannel
from app.revocation.checks import Checks, Principal, Window
from app.revocation.eviction import check_at_start
from app.revocation.floors import Epochs, Floors
from app.revocation.layout import NO_FIELD, Layout, ahead_field, bucket_of
from app.revocation.records import Record, Records
from app.revocation.replica import LOCK_WAIT_SECONDS, RESTORING, Replica
from app.revocation.replies import Applied, user_cutoff_reply
from app.revocation.targets import Lifetimes, RevocationTarget

log = logging.getLogger(__name__)
ATTEMPTS = 4  # a check asks again after a repair or a verification, at most this often
RETRY_SECONDS = 0.2  # a committed revocation Redis refused is applied again this often


@dataclass(frozen=True)
class Verdict:
    """The answer of one check: is the token revoked, and (when it is not and a rate-limit
    window was given) this request's count in it."""

    revoked: bool
    count: int = 0


class RevocationStore:
    def __init__(self, client: RedisClient, database: Database, *, key_prefix: str, lifetimes: Lifetimes,
                 user_claim: str, sync_seconds: float) -> None:
        self.floors, self.epochs = Floors(), Epochs()
        self.client = client
        client.on_connect = self.epochs.bump  # a new connection may reach another, older Redis
        self.layout = Layout(key_prefix)
        self.records = Records(database)
        self.lifetimes = lifetimes
        self.user_claim = user_claim
        self.replica = Replica(client, self.layout, self.records, self.floors, self.epochs)
        self.channel = FloorChannel(client, self.layout.floor_channel, self.floors, self.epochs,
                                    timeout=max(1.0, client.timeout))
        self.checks = Checks(client, self.layout, lifetimes)
        self.sync_seconds = sync_seconds
        self._synced_at = -math.inf
        self._closing = threading.Event()
        self._retries: set[threading.Thread] = set()
        self._retries_lock = threading.Lock()

    # --- the per-request check ----------------------------------------------------------

    def check(self, principal: Principal, window: Window | None = None) -> Verdict:
        """Is the token revoked; and, given a rate-limit window and a token that is not, this
        request's count in it. Three cases: Redis trusted (the answer stands), a bucket behind
        this instance's floor (repaired, asked again), Redis not verified since it may have been
        replaced or lost data (verified, asked again)."""
        counted = 0  # the request is counted in `window` once, by the first round that reached the INCR
        with fail_closed():
            for _ in range(ATTEMPTS):
                self._keep_current()
                answer = self.checks.ask(principal, None if counted else window)
                counted = counted or answer.count
                self.channel.drain()  # after the answer: every floor published before it is heard
                if answer.lost or not self.epochs.trusted:
                    self._verify()
                    continue
                behind = self.floors.first_behind(answer.states)
                if behind is not None:
                    self.replica.repair(behind)
                    continue
                for bucket, state in answer.states:
                    self.floors.raise_to(bucket, state)
                labelled(REVOCATION_CHECKS, "revoked" if answer.revoked else "ok").inc()
                if answer.revoked and counted and window is not None:
                    # Counted by this round's user bucket (Cluster: another bucket revokes it) or an
                    # earlier round's: a revoked token spends nothing.
                    self.checks.give_back(window)
                return Verdict(answer.revoked, 0 if answer.revoked else counted)
        log.warning("Redis was still behind or unverified after every round of a check: 503",
                    extra={"fields": {"rounds": ATTEMPTS}})
        raise ServiceUnavailable(RESTORING)

    def _keep_current(self) -> None:
        if not self.epochs.trusted:
            self.channel.drain()  # subscribed before the verification, so nothing falls between
            self._verify()
        elif time.monotonic() - self._synced_at > self.sync_seconds:
            self._synced_at = time.monotonic()
            self.replica.sync()

    def _verify(self) -> None:
        self.replica.verify(wait=LOCK_WAIT_SECONDS)
        self._synced_at = time.monotonic()

    def verify(self) -> list[int]:
        """Every bucket of Redis against the table, repaired where it differs (`flask revoke
        verify`); returns the buckets repaired."""
        with fail_closed():
            self.channel.drain()
            repaired = self.replica.verify()
            self._synced_at = time.monotonic()
        return repaired

    # --- writes ------------------------------------------------------------------------

    def revoke(self, target: RevocationTarget, actor: str, reason: str | None) -> Record:
        """Record the revocation (one INSERT, committed), apply it in Redis, tell every instance.
        A Redis failure after the commit is a 503, and the revocation is applied when Redis answers."""
        bucket = target.bucket
        with fail_closed():
            state = self.replica.state(bucket)
            if state is not None and state > self.records.top(bucket):  # the table came back older
                self.replica.repair(bucket)
            record = self.records.insert(target, actor, reason, at_least=max(self.floors[bucket], state or 0))
        try:
            with fail_closed():
                self._apply(record, target)
                self.channel.publish(bucket, self.floors[bucket])
        except ServiceUnavailable:
            # Committed, not known everywhere: this instance repairs it before trusting the bucket,
            # the others read the table's tops within REVOCATION_SYNC_SECONDS, and meanwhile it is retried.
            self.floors.raise_to(bucket, record.seq)
            self._retry(bucket)
            raise
        return record

    def _apply(self, record: Record, target: RevocationTarget) -> None:
        bucket = record.bucket
        reply = self.replica.apply(bucket, [record], "ordered", record.seq - 1, record.seq)
        self.floors.raise_to(bucket, record.seq)
        if reply.displaced is not None:
            # Redis held another revocation under this sequence: both are recorded again, each
            # under a sequence of its own, so that Redis's log holds both.
            self.replica.readmit(bucket, reply.displaced)
            again = self.records.insert(target, record.actor, record.reason, at_least=self.floors[bucket])
            self.replica.apply(bucket, [again], "ordered", again.seq - 1, again.seq)
            self.floors.raise_to(bucket, again.seq)
        if reply.outcome is not Applied.APPLIED:  # Redis lost the bucket, or misses an earlier revocation
            self.replica.repair(bucket)

    def _retry(self, bucket: int) -> None:
        thread = threading.Thread(target=self._repair_soon, args=(bucket,), name="repair-soon", daemon=True)
        with self._retries_lock:
            self._retries = {retry for retry in self._retries if retry.is_alive()} | {thread}
        thread.start()

    def _repair_soon(self, bucket: int, seconds: float = 30.0) -> None:
        deadline = time.monotonic() + seconds
        while not self._closing.wait(RETRY_SECONDS) and time.monotonic() < deadline:
            try:
                with fail_closed():
                    self.replica.repair(bucket)
                    self.channel.publish(bucket, self.floors[bucket])
                return
            except ServiceUnavailable:
                continue
            except Exception:  # noqa: BLE001 - the database: the checks' own repairs take over
                log.warning("could not apply a committed revocation to Redis; the checks will", exc_info=True)
                return

    def revoke_user(self, user_id: str, actor: str, reason: str | None = None) -> Record:
        """Every token of the user issued up to now, whatever clock skew the leeway admits: the
        cutoff is Redis's clock now, and tokens accepted with an `iat` ahead of it are named in
        the revocation (a cutoff moved ahead would refuse the next token of a right clock too)."""
        with fail_closed():
            reply = user_cutoff_reply(self.client.run(ScriptCall(
                "user_cutoff", [self.layout.bucket(bucket_of(user_id))],
                [ahead_field(user_id)])))
        target = self.lifetimes.user(user_id, reply.cutoff, reply.covers, time.time())
        return self.revoke(target, actor, reason)

    def _redis_now(self, bucket: int) -> float:
        """Redis's clock, the one every instance shares (a cutoff taken on it)."""
        with fail_closed():
            raw = self.client.run(ScriptCall("user_cutoff", [self.layout.bucket(bucket)], [NO_FIELD]))
        return user_cutoff_reply(raw).cutoff

    def revoke_grant(self, user_id: str, client_id: str, actor: str, reason: str | None = None,
                     cutoff: float | None = None) -> Record:
        """Every token of the user for one OAuth client issued up to `cutoff` (default: now, on
        Redis's clock): the user withdrew the app's consent."""
        now = self._redis_now(bucket_of(user_id)) if cutoff is None else cutoff
        return self.revoke(self.lifetimes.grant(user_id, client_id, now, time.time()), actor, reason)

    def revoke_client(self, client_id: str, actor: str, reason: str | None = None) -> Record:
        """Every token of one OAuth client issued up to now, for every user (a compromised app)."""
        cutoff = self._redis_now(bucket_of(client_id))
        return self.revoke(self.lifetimes.client(client_id, cutoff, time.time()), actor, reason)

    def revoke_session(self, sid: str, actor: str, reason: str | None = None) -> Record:
        return self.revoke(RevocationTarget("session", sid, self.lifetimes.open_ended(time.time())), actor, reason)

    def revoke_jti(self, jti: str, actor: str, reason: str | None = None) -> Record:
        return self.revoke(RevocationTarget("jti", jti, self.lifetimes.open_ended(time.time())), actor, reason)

    def revoke_token(self, claims: dict[str, Any], digest: str, actor: str, reason: str | None = None) -> Record:
        """Deny one token, given its verified claims as signed (by jti, else by `digest`, theirs)."""
        user_id = claims.get(self.user_claim)
        target = self.lifetimes.token(claims, user_id if isinstance(user_id, str) else None, digest)
        return self.revoke(target, actor, reason)

    def log_out(self, issuer: str, jti: str, sub: str | None, sid: str | None, cutoff: float, ttl: int,
                client_id: str | None = None) -> bool:
        """A back-channel logout, recorded as done by the issuer's back-channel; `cutoff`: when the
        sign-out happened. With a `client_id` (and a `sub`): that user's grant to the client ended.
        False for a replayed `jti` (the revocations it asks for are there already: nothing more)."""
        seen = self.layout.logout_seen(hashlib.sha256(issuer.encode()).hexdigest()[:16], jti)
        with fail_closed():
            if self.client.client.exists(seen):
                return False
        actor, reason, now = f"backchannel:{issuer}", f"back-channel logout {jti}", time.time()
        if client_id is not None and sub is not None:
            targets = [self.lifetimes.grant(sub, client_id, cutoff, now)]
        else:
            targets = self.lifetimes.logged_out(sub, sid, cutoff, now)
        for target in targets:
            self.revoke(target, actor, reason)
        with fail_closed():  # after the revocations: a sender that saw a failure sends it again
            self.client.client.set(seen, "1", ex=ttl)
        return True

    # --- operations ----------------------------------------------------------------------

    def prune(self, keep_seconds: float) -> int:
        """Delete the audit rows that expired more than `keep_seconds` ago (each bucket keeps its last)."""
        deleted = self.records.prune(keep_seconds)
        log.info("revocation records pruned", extra={"fields": {"deleted": deleted}})
        return deleted

    def close(self) -> None:
        """Stop retrying committed revocations (the retries joined) and leave the floor channel:
        an app being discarded writes nothing more (tests reuse its database)."""
        self._closing.set()
        with self._retries_lock:
            retries, self._retries = self._retries, set()
        for thread in retries:
            thread.join(timeout=10)
        self.channel.close()

    def ping(self) -> None:
        with fail_closed():
            self.client.ping()

    def check_eviction_policy(self) -> None:
        """At a production start (app.revocation.eviction.check_at_start)."""
        memory = check_at_start(self.client)
        if memory is not None:
            self.replica.eviction.changed(memory)
