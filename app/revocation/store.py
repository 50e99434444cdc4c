"""Revocation (CONTRACT §3): a Redis denylist that never vouches for state older than the
audit table it is a copy of.

- **The table first.** A revocation is one INSERT into `revocations` (who, what, whom, when,
  why, until when), committed, then applied to Redis. Each row belongs to a bucket
  (app.revocation.keys) and carries the next sequence number of its bucket, without gaps and
  in commit order.
- **Redis says how far it is.** Each bucket's state key holds the last sequence Redis has
  applied, and applying revocation n moves it from n-1 to n in the same script, so Redis
  holds exactly the revocations up to its state, whatever it lost: a snapshot, a lost AOF
  tail and a lagging replica all bring back a consistent but older state.
- **Behind is found, then repaired.** This process knows, per bucket, a sequence the table has
  reached (its floor: its own revocations, what Redis and the table told it). A check whose
  bucket state is below the floor, or missing (FLUSHALL, a restart without persistence),
  repairs that bucket from the table before answering; meanwhile requests wait briefly or get
  503, never a pass. Redis losing data always breaks the connection (a restart, a failover),
  so every new Redis connection makes the next check verify every bucket against the table
  first, and the floor is refreshed from the table every REVOCATION_SYNC_SECONDS besides
  (a revocation whose Redis write failed after its commit, by any instance).
- **One command per request** on one Redis or Sentinel: the CHECK script (see its comment).
  On Cluster, one script per bucket concerned, sent together: one for a Better Auth token
  without jti or sid, at most three.
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import bindparam, delete, func, insert, select
from sqlalchemy.exc import IntegrityError

from app.config import ConfigError, Settings
from app.db import Database
from app.errors import ServiceUnavailable
from app.models import Revocation
from app.observability import BACKEND_ERRORS, REVOCATION_CHECKS, labelled
from app.revocation.keys import BUCKETS, KeyLayout, bucket_of
from app.revocation.topology import REDIS_ERRORS, RedisStore, ScriptCall
from app.security.tokens import Principal, token_digest

log = logging.getLogger(__name__)
EVICTING_POLICIES = ("allkeys-", "volatile-")
KEY_SEGMENTS = {"jti": "jti", "session": "sid"}
RECORD_COLUMNS = (Revocation.id, Revocation.kind, Revocation.target, Revocation.user_id, Revocation.actor,
                  Revocation.reason, Revocation.created_at, Revocation.expires_at, Revocation.cutoff,
                  Revocation.covers, Revocation.bucket, Revocation.seq)
PAGE = 5000  # rows read and applied at a time when repairing
LOCK_MS = 60_000  # a repair's lock lives at most this long (its holder may die)
LOCK_WAIT_SECONDS = 0.5  # how long a check waits for another's repair before a 503
RETRY_SECONDS = 0.2  # a committed revocation Redis refused is applied again this often
INSERT_ATTEMPTS = 20  # concurrent revocations of one bucket take turns for its next sequence
# What Redis needs of a revocation (scripts.APPLY).
APPLIED_COLUMNS = (Revocation.kind, Revocation.target, Revocation.user_id, Revocation.cutoff, Revocation.covers,
                   Revocation.expires_at, Revocation.seq)
REPAIR_THREADS = 4  # buckets repaired at once (their reads, Python and Redis overlap)
_NEXT_SEQ = select(func.coalesce(func.max(Revocation.seq), 0) + 1).where(
    Revocation.bucket == bindparam("of_bucket")).scalar_subquery()
_TOPS = select(*[select(func.max(Revocation.seq)).where(Revocation.bucket == b).scalar_subquery()
                 for b in range(BUCKETS)])


@dataclass(frozen=True)
class Verdict:
    """The answer of one check: is the token revoked, and (when it is not and a rate-limit
    counter was given) this request's count in it."""

    revoked: bool
    count: int = 0


@dataclass(frozen=True)
class RevocationTarget:
    """What to deny: `kind` is jti, token, session or user; `value` names it."""

    kind: str  # jti, token, session, user or sidless (app.models.Revocation)
    value: str
    expires_at: float  # no token it can affect outlives this
    user_id: str | None = None
    cutoff: float | None = None  # kind=user, sidless: tokens with iat <= cutoff are denied
    covers: tuple[tuple[str, float], ...] = ()  # kind=user: tokens denied by name, with their last valid time

    @property
    def bucket(self) -> int:
        owner = self.user_id if self.kind == "token" else self.value  # user, sidless: the user id
        return bucket_of(owner or "")


def _timestamp(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, UTC)


class RevocationStore:
    def __init__(self, settings: Settings, database: Database) -> None:
        self._connections = 0  # connections to Redis opened by this process
        self._verified = -1  # the value of _connections when Redis was last verified
        self.redis = RedisStore(settings, on_connect=self._connection_opened)
        self.keys = KeyLayout(settings.redis_key_prefix)
        self.database = database
        self.max_age = settings.max_age_seconds
        self.leeway = settings.leeway_seconds
        self.user_claim = settings.user_claim
        self.sync_seconds = settings.revocation_sync_seconds
        self._floor = [0] * BUCKETS  # per bucket, a sequence the table is known to have reached
        self._synced_at = -math.inf  # when the floor was last read from the table
        self._verifying = threading.Lock()

    def _connection_opened(self) -> None:
        self._connections += 1

    # --- keys and lifetimes ------------------------------------------------------

    def last_valid(self, iat: float, exp: float) -> float:
        """When a token with these times stops being accepted, at the latest."""
        return min(float(exp), float(iat) + self.max_age) + self.leeway

    def token_target(self, claims: dict[str, Any]) -> RevocationTarget:
        """The entry that denies this token (claims as signed); it lives as long as the token could."""
        user_id = claims.get(self.user_claim) if isinstance(claims.get(self.user_claim), str) else None
        expires_at = self.last_valid(claims["iat"], claims["exp"])
        if claims.get("jti"):
            return RevocationTarget("jti", claims["jti"], expires_at, user_id)
        return RevocationTarget("token", token_digest(claims), expires_at, user_id)

    def open_ended_target(self, kind: str, value: str, user_id: str | None = None,
                          now: float | None = None) -> RevocationTarget:
        """A jti or session: any token it can affect was issued by now, so none outlives now +
        the maximum token age."""
        now = time.time() if now is None else now
        return RevocationTarget(kind, value, now + self.max_age + self.leeway, user_id)

    # --- the per-request check ---------------------------------------------------

    def check(self, principal: Principal, window: Any = None) -> Verdict:
        """Is the token revoked; and, given a rate-limit window (app.rate_limits.Window) and a
        token that is not, this request's count in it."""
        with self._redis():
            self._keep_verified()
            for _ in range(4):
                verdict, stale, lost = self._exchange(principal, window)
                # Every connection this process opened, this exchange's included, verified: a
                # reconnection can reach another, older Redis whose other buckets are behind too.
                verified = self._verified == self._connections
                if stale is None and verified:
                    labelled(REVOCATION_CHECKS, "revoked" if verdict.revoked else "ok").inc()
                    return verdict
                # The answer came from a bucket behind the table (repair it), from a bucket that
                # lost its state or over an unverified connection (verify every bucket), so ask again.
                if stale is not None and not lost and verified:
                    self.repair(stale)
                else:
                    self.verify(wait=LOCK_WAIT_SECONDS)
        raise ServiceUnavailable("The revocation list is being restored; try again shortly.")

    def _exchange(self, principal: Principal, window: Any) -> tuple[Verdict, int | None, bool]:
        """Ask Redis: the verdict, the bucket to repair before trusting it (or None), and
        whether that bucket lost its state."""
        keys, user_id = self.keys, principal.user_id
        user_bucket = bucket_of(user_id)
        if principal.jti:
            name, token_key, token_bucket = f"jti:{principal.jti}", keys.jti(principal.jti), bucket_of(principal.jti)
        else:
            name = f"tok:{principal.token_digest}"
            token_key, token_bucket = keys.token(user_id, principal.token_digest), user_bucket
        deny: dict[int, list[str]] = {user_bucket: []}
        deny.setdefault(token_bucket, []).append(token_key)
        if principal.sid:
            deny.setdefault(bucket_of(principal.sid), []).append(keys.session(principal.sid))
        last_valid = self.last_valid(principal.iat, principal.exp)
        lifetime = max(1, math.ceil(last_valid - time.time()))
        user_part = [keys.cutoff(user_id), keys.ahead(user_id), keys.skewed(user_id), keys.sidless(user_id)]
        counter = [window.key] if window is not None else []

        def call(buckets: Sequence[int], with_user: bool) -> ScriptCall:
            denying = [key for bucket in buckets for key in deny[bucket]]
            return ScriptCall("check", [*(keys.state(b) for b in buckets), *denying,
                                        *(user_part + counter if with_user else [])],
                              [len(buckets), len(denying), "1" if with_user else "0", repr(principal.iat), name,
                               repr(last_valid), lifetime, window.ttl if with_user and window is not None else "",
                               "1" if principal.sid else "0"])

        buckets = sorted(deny)
        if self.redis.clustered:  # one script per bucket: its keys share a slot
            calls = [call([bucket], bucket == user_bucket) for bucket in buckets]
            groups = [[bucket] for bucket in buckets]
        else:
            calls, groups = [call(buckets, True)], [buckets]
        replies = self.redis.run_together(calls)

        revoked, count = False, 0
        for group, reply, script in zip(groups, replies, calls, strict=True):
            if reply[0] == 0:  # that bucket's state is missing: Redis lost it
                return Verdict(True), group[int(reply[1]) - 1], True
            for bucket, state in zip(group, reply[3:], strict=True):
                if int(state) < self._floor[bucket]:
                    return Verdict(True), bucket, False
                self._floor[bucket] = max(self._floor[bucket], int(state))
            revoked = revoked or reply[1] == 1
            if script.args[2] == "1":
                count = int(reply[2])
        if revoked and count and window is not None:
            # Cluster only: the user's bucket counted a token another bucket revokes; give it back.
            self.redis.client.decr(window.key)
        return Verdict(revoked, count), None, False

    def count(self, key: str, ttl: int) -> int:
        """One request counted in a fixed-window counter, on its own (anonymous calls)."""
        with self._redis():
            return int(self.redis.run(ScriptCall("count", [key], [ttl])))

    # --- knowing Redis is not behind the table ----------------------------------------

    def _keep_verified(self) -> None:
        if self._verified != self._connections:
            self.verify(wait=LOCK_WAIT_SECONDS)
        elif time.monotonic() - self._synced_at > self.sync_seconds and self._verifying.acquire(blocking=False):
            try:
                self._raise_floor(self._table_tops())
                self._synced_at = time.monotonic()
            finally:
                self._verifying.release()

    def verify(self, wait: float = -1) -> None:
        """Every bucket of Redis against the table: missing, behind or (the table restored to
        something older) ahead of it, it is repaired before anyone trusts it. `wait`: how long
        to wait for a verification under way in another thread (-1: as long as it takes)."""
        if not self._verifying.acquire(timeout=wait):
            raise ServiceUnavailable("The revocation list is being restored; try again shortly.")
        try:
            states = self.redis.get_many([self.keys.state(b) for b in range(BUCKETS)])  # Redis first, then
            tops = self._table_tops()  # the table: a state above its top is then never a race
            self._raise_floor(tops)
            repaired = [bucket for bucket, state in enumerate(states)
                        if state is None or not self._floor[bucket] <= int(state) <= tops[bucket]]
            if len(repaired) > 1:
                with ThreadPoolExecutor(min(REPAIR_THREADS, len(repaired)), thread_name_prefix="repair") as pool:
                    list(pool.map(self.repair, repaired))
            elif repaired:
                self.repair(repaired[0])
            # Connections opened by this verification read this Redis. (One another thread opened
            # meanwhile to another Redis is still compared with the floor just read, on every check.)
            opened = self._connections
            if repaired:
                missing = sum(states[bucket] is None for bucket in repaired)
                log.warning("Redis was missing revocations or behind the database: repaired from it",
                            extra={"fields": {"buckets": repaired, "missing": missing}})
            self._verified, self._synced_at = opened, time.monotonic()
        finally:
            self._verifying.release()

    def _table_tops(self) -> list[int]:
        return [top or 0 for top in self.database.rows(_TOPS)[0]]

    def _raise_floor(self, tops: Sequence[int]) -> None:
        for bucket, top in enumerate(tops):
            self._floor[bucket] = max(self._floor[bucket], top)

    def repair(self, bucket: int) -> None:
        """Bring one bucket of Redis up to the table, under the bucket's repair lock."""
        lock, holder = self.keys.repair_lock(bucket), uuid.uuid4().hex
        deadline = time.monotonic() + LOCK_WAIT_SECONDS
        while not self.redis.client.set(lock, holder, nx=True, px=LOCK_MS):
            if time.monotonic() > deadline:
                raise ServiceUnavailable("The revocation list is being restored; try again shortly.")
            time.sleep(0.01)
        try:
            state = self.redis.client.get(self.keys.state(bucket))
            top = self._table_tops()[bucket]
            self._floor[bucket] = max(self._floor[bucket], top)
            if state is None or int(state) > top:
                self._rebuild(bucket, top)
            elif int(state) < self._floor[bucket]:
                self._catch_up(bucket, int(state), self._floor[bucket])
        finally:
            self.redis.run(ScriptCall("release", [lock], [holder]))

    def _rows(self, bucket: int, after: int, upto: int, live_only: bool) -> Iterator[Sequence[Any]]:
        """The bucket's revocations with a sequence in (after, upto], in order, a page at a time."""
        statement = select(*APPLIED_COLUMNS).where(Revocation.bucket == bucket, Revocation.seq > bindparam("after"),
                                                  Revocation.seq <= upto)
        if live_only:
            statement = statement.where(Revocation.expires_at > _timestamp(time.time()))
        statement = statement.order_by(Revocation.seq).limit(PAGE)
        while True:
            page = self.database.rows(statement, {"after": after})
            if not page:
                return
            yield page
            after = page[-1].seq

    def _rebuild(self, bucket: int, top: int) -> None:
        """Load every live revocation of the bucket up to `top`, then seal its state at `top`."""
        started, loaded = time.monotonic(), 0
        for page in self._rows(bucket, 0, top, live_only=True):
            self._apply(bucket, page, "load")
            loaded += len(page)
        self.redis.run(ScriptCall("apply", [self.keys.state(bucket)], ["seal", 0, top]))
        log.info("revocations of a bucket restored from the database", extra={"fields": {
            "bucket": bucket, "entries": loaded, "sequence": top, "seconds": round(time.monotonic() - started, 3)}})

    def _catch_up(self, bucket: int, state: int, upto: int) -> None:
        """Apply, in order, what the bucket is missing between its state and `upto`."""
        while state < upto:
            page = next(self._rows(bucket, state, upto, live_only=False), [])
            to = page[-1].seq if len(page) == PAGE else upto
            reply = self._apply(bucket, page, "ordered", state, to)
            if reply[0] == 1:  # the state went missing meanwhile: start again from the table
                self._rebuild(bucket, self._table_tops()[bucket])
                return
            state = int(reply[1])
        log.info("revocations of a bucket caught up from the database", extra={"fields": {
            "bucket": bucket, "sequence": upto}})

    def _apply(self, bucket: int, rows: Sequence[Any], mode: str, after: int = 0, to: int = 0) -> Any:
        """scripts.APPLY for revocations of `bucket` (rows of APPLIED_COLUMNS): a key, an op
        and its arguments per Redis entry."""
        keys, args = [self.keys.state(bucket)], [mode, after, to]
        tag, now = self.keys.tag(bucket), time.time()
        for kind, target, user_id, cutoff, covers, expires_at, _seq in rows:
            ttl = math.ceil(expires_at.timestamp() - now)
            if ttl < 1:
                continue  # no token it can affect is still accepted
            if kind in ("user", "sidless"):
                keys.append(f"{tag}{kind}:{target}")
                args += ["m", f"{cutoff.timestamp():.6f}", ttl]
                for name, last_valid in covers or ():
                    keys.append(f"{tag}skewed:{target}")
                    args += ["z", name, repr(last_valid), ttl]
                continue
            # KeyLayout's jti(), session() and token(), with the bucket already known.
            keys.append(f"{tag}tok:{user_id}:{target}" if kind == "token" else f"{tag}{KEY_SEGMENTS[kind]}:{target}")
            args += ["s", ttl]
        return self.redis.run(ScriptCall("apply", keys, args))

    # --- writes --------------------------------------------------------------------

    def revoke(self, target: RevocationTarget, actor: str, reason: str | None) -> dict[str, Any]:
        """Record the revocation (one INSERT, committed), then apply it in Redis; a Redis failure
        after the commit is a 503, and the next check repairs the gap."""
        record = self._insert(target, actor, reason)
        try:
            with self._redis():
                reply = self._apply(record.bucket, [[getattr(record, c.key) for c in APPLIED_COLUMNS]], "ordered",
                                    record.seq - 1, record.seq)
                if reply[0] == 2:  # an earlier revocation of this bucket is not in Redis yet
                    self._floor[record.bucket] = max(self._floor[record.bucket], record.seq)
                    self.repair(record.bucket)
        except ServiceUnavailable:
            # Committed, not in Redis: this process's next check repairs it, the others learn of
            # it from the table within REVOCATION_SYNC_SECONDS, and meanwhile it is retried.
            self._floor[record.bucket] = max(self._floor[record.bucket], record.seq)
            threading.Thread(target=self._repair_soon, args=(record.bucket,), name="repair-soon", daemon=True).start()
            raise
        self._floor[record.bucket] = max(self._floor[record.bucket], record.seq)
        return record._asdict()

    def _repair_soon(self, bucket: int, seconds: float = 30.0) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            time.sleep(RETRY_SECONDS)
            try:
                self.repair(bucket)
                return
            except (ServiceUnavailable, *REDIS_ERRORS):
                continue
            except Exception:  # noqa: BLE001 - the database: the checks' own repairs take over
                log.warning("could not apply a committed revocation to Redis; the checks will", exc_info=True)
                return

    def _insert(self, target: RevocationTarget, actor: str, reason: str | None) -> Any:
        statement = insert(Revocation).values(
            kind=target.kind, target=target.value, user_id=target.user_id, actor=actor, reason=reason,
            created_at=datetime.now(UTC), expires_at=_timestamp(target.expires_at), cutoff=_timestamp(target.cutoff),
            covers=[list(pair) for pair in target.covers] or None, bucket=target.bucket, seq=_NEXT_SEQ,
        ).returning(*RECORD_COLUMNS)
        for attempt in range(INSERT_ATTEMPTS):
            try:
                return self.database.rows(statement, {"of_bucket": target.bucket})[0]
            except IntegrityError:  # another revocation of the bucket took that sequence first
                if attempt == INSERT_ATTEMPTS - 1:
                    raise
                time.sleep(0.001 * attempt)
        raise AssertionError("unreachable")

    def revoke_user(self, user_id: str, actor: str, reason: str | None = None) -> dict[str, Any]:
        """Every token of the user issued up to now, whatever clock skew the leeway admits: the
        cutoff is Redis's clock now, and tokens accepted with an `iat` ahead of it are named in
        the revocation (a cutoff moved ahead would refuse the next token of a right clock too)."""
        with self._redis():
            cutoff, *ahead = self.redis.run(ScriptCall("user_cutoff", [self.keys.ahead(user_id)], []))
        covers = tuple((name, float(last_valid)) for name, last_valid in zip(ahead[::2], ahead[1::2], strict=True))
        expires_at = max(float(cutoff), time.time()) + self.max_age + self.leeway
        return self.revoke(RevocationTarget("user", user_id, expires_at, user_id, float(cutoff), covers), actor, reason)

    def revoke_logged_out(self, sub: str | None, sid: str | None, iat: float, actor: str,
                          reason: str) -> list[dict[str, Any]]:
        """A back-channel logout (app.security.logout_tokens): with a `sid`, that session's tokens
        and the user's tokens without a sid issued up to `iat` (any may be the session's); with a
        `sub` alone, every token of the user issued up to `iat`. The cutoff is the logout token's
        own `iat`, never the time it arrives, so a replay cannot reach later tokens."""
        until = iat + self.max_age + self.leeway
        targets = []
        if sid is not None:
            targets.append(self.open_ended_target("session", sid, sub, now=max(iat, time.time())))
        if sub is not None:
            targets.append(RevocationTarget("sidless" if sid is not None else "user", sub, until, sub, iat))
        return [self.revoke(target, actor, reason) for target in targets]

    def log_out(self, issuer: str, jti: str, sub: str | None, sid: str | None, iat: float, ttl: int) -> bool:
        """A back-channel logout, recorded as done by the issuer's back-channel. False for a
        replayed `jti` (the revocation it asks for is there already: nothing more is done)."""
        seen = f"{self.keys.prefix}bcl:{hashlib.sha256(issuer.encode()).hexdigest()[:16]}:{jti}"
        with self._redis():
            if self.redis.client.exists(seen):
                return False
        self.revoke_logged_out(sub, sid, iat, f"backchannel:{issuer}", f"back-channel logout {jti}")
        with self._redis():  # after the revocations: a sender that saw a failure sends it again
            self.redis.client.set(seen, "1", ex=ttl)
        return True

    def revoke_session(self, sid: str, actor: str, reason: str | None = None) -> dict[str, Any]:
        return self.revoke(self.open_ended_target("session", sid), actor, reason)

    def revoke_jti(self, jti: str, actor: str, reason: str | None = None) -> dict[str, Any]:
        return self.revoke(self.open_ended_target("jti", jti), actor, reason)

    def revoke_token(self, claims: dict[str, Any], actor: str, reason: str | None = None) -> dict[str, Any]:
        """Deny one token, given its verified claims as signed (by jti, else by their digest)."""
        return self.revoke(self.token_target(claims), actor, reason)

    # --- operations -----------------------------------------------------------------

    def prune(self, keep_seconds: float) -> int:
        """Delete the rows that expired more than `keep_seconds` ago: no token they deny is still
        accepted, so nothing in Redis depends on them. Each bucket keeps its last row, which
        holds its sequence (the next revocation must not reuse a number Redis has applied)."""
        deleted = 0
        horizon = _timestamp(time.time() - keep_seconds)
        for bucket, top in enumerate(self._table_tops()):
            rows = self.database.rows(
                delete(Revocation).where(Revocation.bucket == bucket, Revocation.expires_at < horizon,
                                         Revocation.seq < top).returning(Revocation.id))
            deleted += len(rows)
        log.info("revocation records pruned", extra={"fields": {"deleted": deleted}})
        return deleted

    def ping(self) -> None:
        with self._redis():
            self.redis.ping()

    @contextmanager
    def _redis(self) -> Iterator[None]:
        try:
            yield
        except REDIS_ERRORS as error:
            raise unavailable(error) from None

    def check_eviction_policy(self) -> None:
        """Evicting denylist keys would let revoked tokens back in: refuse such a Redis."""
        try:
            policies = [client.config_get("maxmemory-policy").get("maxmemory-policy", "")
                        for client in self.redis.primaries()]
        except REDIS_ERRORS as error:
            log.warning("could not read Redis maxmemory-policy (%s); make sure it is noeviction",
                        type(error).__name__)
            return
        for policy in policies:
            if policy.startswith(EVICTING_POLICIES):
                raise ConfigError(f"Redis maxmemory-policy is {policy}: revocations need noeviction")


def unavailable(error: Exception) -> ServiceUnavailable:
    # Fail closed: no answer from Redis is never a pass.
    log.warning("redis unavailable", extra={"fields": {"error": type(error).__name__}})
    BACKEND_ERRORS.labels("redis").inc()
    return ServiceUnavailable("The revocation store is unavailable; try again shortly.")
