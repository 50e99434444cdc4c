"""Revocation (CONTRACT §3): a Redis denylist, made durable by an audit log in the database.

Keys (all under REDIS_KEY_PREFIX):
    rev:loaded          marker: the denylist has been loaded since Redis last lost its data
    rev:jti:<jti>       a token, by its `jti`
    rev:tok:<digest>    a token without `jti`, by the digest of its signed claims
    rev:sid:<sid>       every token of a session
    rev:user:<user_id>  a cutoff (Redis time): every token of the user with `iat` <= it
    rev:ahead:<user_id> the user's tokens accepted with an `iat` ahead of Redis's clock (see CHECK)

Every authenticated request costs one Redis command: the CHECK script (app.revocation.scripts),
which answers "revoked?" and, only for a token that is not, counts it against its user's rate
limit. A revocation is written to the audit table first (one INSERT, committed), then to
Redis. When the marker is missing (Redis restarted empty, FLUSHALL), the denylist is rebuilt
from the audit table before any token is accepted.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import redis
from redis.exceptions import RedisError
from sqlalchemy import insert, select

from app.config import ConfigError, Settings
from app.db import Database
from app.errors import ServiceUnavailable
from app.models import Revocation
from app.observability import BACKEND_ERRORS, REVOCATION_CHECKS, labelled
from app.revocation import scripts
from app.security.tokens import Principal, token_digest

log = logging.getLogger(__name__)
EVICTING_POLICIES = ("allkeys-", "volatile-")
KEY_NAMES = {"session": "sid", "token": "tok"}  # revocation kind -> key segment (see above)
RECORD_COLUMNS = (Revocation.id, Revocation.kind, Revocation.target, Revocation.user_id, Revocation.actor,
                  Revocation.reason, Revocation.created_at, Revocation.expires_at, Revocation.cutoff)


@dataclass(frozen=True)
class Verdict:
    """The answer of one check: is the token revoked, and (when it is not and a rate-limit
    window was given) this request's count in that window."""

    revoked: bool
    count: int = 0


@dataclass(frozen=True)
class RevocationTarget:
    """What to deny: `kind` is jti, token, session or user; `value` names it."""

    kind: str
    value: str
    expires_at: float  # no token it can affect outlives this
    user_id: str | None = None
    cutoff: float | None = None  # kind=user: tokens with iat <= cutoff are denied


def _timestamp(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, UTC)


class RevocationStore:
    def __init__(self, client: redis.Redis, settings: Settings, database: Database) -> None:
        self.client = client
        self.database = database
        self.prefix = settings.redis_key_prefix
        self.max_age = settings.max_age_seconds
        self.leeway = settings.leeway_seconds
        self.user_claim = settings.user_claim
        self.marker = f"{self.prefix}rev:loaded"
        # redis-py's Script: EVALSHA, loading the script when Redis does not know it.
        self._check = client.register_script(scripts.CHECK)
        self._user_cutoff = client.register_script(scripts.USER_CUTOFF)
        self._raise_cutoff = client.register_script(scripts.RAISE_CUTOFF)
        self._set_marker = client.register_script(scripts.SET_MARKER)
        self._count = client.register_script(scripts.COUNT)

    # --- keys and lifetimes ------------------------------------------------------

    def key(self, kind: str, value: str) -> str:
        return f"{self.prefix}rev:{KEY_NAMES.get(kind, kind)}:{value}"

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
        """A jti, session or user: any token it can affect was issued by now (or, for a user,
        by the cutoff), so none outlives that + the maximum token age."""
        now = time.time() if now is None else now
        return RevocationTarget(kind, value, now + self.max_age + self.leeway, user_id)

    # --- the per-request check ---------------------------------------------------

    def check(self, principal: Principal, window: Any = None) -> Verdict:
        """Is the token revoked; and, given a rate-limit window (app.rate_limits.Window) and a
        token that is not, this request's count in it. One Redis command."""
        user_id = principal.user_id
        name = f"jti:{principal.jti}" if principal.jti else f"tok:{principal.token_digest}"
        keys = [self.marker, self.key("user", user_id), self.key("ahead", user_id), f"{self.prefix}rev:{name}"]
        if principal.sid:
            keys.append(self.key("session", principal.sid))
        if window is not None:
            keys.append(window.key)
        last_valid = self.last_valid(principal.iat, principal.exp)
        args = [repr(principal.iat), name, repr(last_valid), max(1, math.ceil(last_valid - time.time())),
                "1" if principal.sid else "0", window.ttl if window is not None else ""]
        with self._redis():
            reply = self._check(keys=keys, args=args)
            if reply[0] == 0:  # the marker is missing: Redis lost its data
                self.rebuild()
                reply = self._check(keys=keys, args=args)
        if reply[0] == 0:
            raise ServiceUnavailable("The revocation list is being restored; try again shortly.")
        revoked = reply[1] == 1
        labelled(REVOCATION_CHECKS, "revoked" if revoked else "ok").inc()
        return Verdict(revoked, int(reply[2]))

    def count(self, key: str, ttl: int) -> int:
        """One request counted in a fixed-window counter, on its own (anonymous calls)."""
        with self._redis():
            return int(self._count(keys=[key], args=[ttl]))

    # --- writes --------------------------------------------------------------------

    def revoke(self, target: RevocationTarget, actor: str, reason: str | None) -> dict[str, Any]:
        """Record the revocation (one INSERT, committed), then deny it in Redis."""
        return self._revoke([target], actor, reason)[0]

    def revoke_user(self, user_id: str, actor: str, reason: str | None = None) -> dict[str, Any]:
        """Every token of the user issued up to now, whatever clock skew the leeway admits: the
        cutoff is Redis's clock now, and tokens accepted with an `iat` ahead of it are revoked
        one by one (a cutoff moved ahead would refuse the next token of a right clock too)."""
        with self._redis():
            cutoff, *ahead = self._user_cutoff(keys=[self.key("ahead", user_id)])
        now = max(float(cutoff), time.time())
        targets = [RevocationTarget("user", user_id, now + self.max_age + self.leeway, user_id, float(cutoff))]
        for name, last_valid in zip(ahead[::2], ahead[1::2], strict=True):
            kind, _, value = name.partition(":")
            targets.append(RevocationTarget("jti" if kind == "jti" else "token", value, float(last_valid), user_id))
        return next(record for record in self._revoke(targets, actor, reason) if record["kind"] == "user")

    def revoke_session(self, sid: str, actor: str, reason: str | None = None) -> dict[str, Any]:
        return self.revoke(self.open_ended_target("session", sid), actor, reason)

    def revoke_jti(self, jti: str, actor: str, reason: str | None = None) -> dict[str, Any]:
        return self.revoke(self.open_ended_target("jti", jti), actor, reason)

    def revoke_token(self, claims: dict[str, Any], actor: str, reason: str | None = None) -> dict[str, Any]:
        """Deny one token, given its verified claims as signed (by jti, else by their digest)."""
        return self.revoke(self.token_target(claims), actor, reason)

    def _revoke(self, targets: list[RevocationTarget], actor: str, reason: str | None) -> list[dict[str, Any]]:
        """Record the targets (one INSERT, committed), then deny each in Redis. The records
        come back in no particular order."""
        created_at = datetime.now(UTC)
        records = self.database.rows(insert(Revocation).values([{
            "kind": t.kind, "target": t.value, "user_id": t.user_id, "actor": actor, "reason": reason,
            "created_at": created_at, "expires_at": _timestamp(t.expires_at), "cutoff": _timestamp(t.cutoff),
        } for t in targets]).returning(*RECORD_COLUMNS))
        with self._redis():
            for target in targets:
                self._deny(target)
        return [record._asdict() for record in records]

    def _deny(self, target: RevocationTarget) -> None:
        ttl = max(1, math.ceil(target.expires_at - time.time()))
        key = self.key(target.kind, target.value)
        if target.cutoff is None:
            if not self.client.set(key, "1", ex=ttl):
                raise RedisError("Redis did not store the revocation")
            return
        self._raise_cutoff(keys=[key], args=[f"{target.cutoff:.6f}", ttl])

    def rebuild(self) -> int:
        """Load every unexpired revocation from the database into Redis, then set the marker."""
        now = time.time()
        rows = self.database.rows(
            select(Revocation.kind, Revocation.target, Revocation.cutoff, Revocation.expires_at)
            .where(Revocation.expires_at > _timestamp(now)))
        cutoffs: dict[str, tuple[float, float]] = {}
        pipe = self.client.pipeline(transaction=False)
        for kind, value, cutoff, expires_at in rows:
            if kind == "user":
                best = cutoffs.get(value)
                if best is None or cutoff.timestamp() > best[0]:
                    cutoffs[value] = (cutoff.timestamp(), expires_at.timestamp())
                continue
            # NX: a key present now was written by a revocation after the loss; keep it.
            pipe.set(self.key(kind, value), "1", ex=max(1, math.ceil(expires_at.timestamp() - now)), nx=True)
        for value, (cutoff, expires_at) in cutoffs.items():
            self._raise_cutoff(keys=[self.key("user", value)],
                               args=[f"{cutoff:.6f}", max(1, math.ceil(expires_at - now))], client=pipe)
        self._set_marker(keys=[self.marker], client=pipe)
        pipe.execute()
        log.warning("revocation list restored from the database", extra={"fields": {"entries": len(rows)}})
        return len(rows)

    # --- operations -----------------------------------------------------------------

    def ping(self) -> None:
        with self._redis():
            self.client.ping()

    @contextmanager
    def _redis(self) -> Iterator[None]:
        try:
            yield
        except RedisError as error:
            raise unavailable(error) from None

    def check_eviction_policy(self) -> None:
        """Evicting denylist keys would let revoked tokens back in: refuse such a Redis."""
        try:
            policy = self.client.config_get("maxmemory-policy").get("maxmemory-policy", "")
        except RedisError as error:
            log.warning("could not read Redis maxmemory-policy (%s); make sure it is noeviction",
                        type(error).__name__)
            return
        if policy.startswith(EVICTING_POLICIES):
            raise ConfigError(f"Redis maxmemory-policy is {policy}: revocations need noeviction")


def unavailable(error: RedisError) -> ServiceUnavailable:
    # Fail closed: no answer from Redis is never a pass.
    log.warning("redis unavailable", extra={"fields": {"error": type(error).__name__}})
    BACKEND_ERRORS.labels("redis").inc()
    return ServiceUnavailable("The revocation store is unavailable; try again shortly.")

