"""The per-request question to Redis (ARCHITECTURE.md, "The per-request check"): which fields of
which buckets deny a token, asked in one CHECK on one Redis or Sentinel, or one per bucket,
sent together, on Cluster."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from app.redis_client import RedisClient, ScriptCall
from app.revocation import layout
from app.revocation.layout import Layout, bucket_of
from app.revocation.replies import check_reply
from app.revocation.targets import Lifetimes


class Principal(Protocol):
    """What the check reads of a caller (app.security.tokens.Principal)."""

    user_id: str
    subject: str
    client_id: str | None  # an OAuth token's client (None: a first-party token)
    jti: str | None
    sid: str | None
    iat: float
    exp: float
    token_digest: str


class Window(Protocol):
    """A rate-limit window the check counts the request in (app.rate_limits.Window)."""

    key: str
    ttl: int


@dataclass
class Fields:
    """One bucket's fields the token is checked against."""

    deny: list[str] = field(default_factory=list)  # present: revoked
    cutoffs: list[str] = field(default_factory=list)  # iat at or before the cutoff: revoked
    sidless: list[str] = field(default_factory=list)  # the same, for a token without a sid


@dataclass(frozen=True)
class Answer:
    revoked: bool
    count: int
    states: tuple[tuple[int, int], ...]  # (bucket, state) of each bucket asked
    lost: bool  # a bucket had no state: Redis lost it


def token_name(principal: Principal) -> str:
    return f"jti:{principal.jti}" if principal.jti else f"tok:{principal.token_digest}"


def fields_of(principal: Principal) -> dict[int, Fields]:
    """Every field that would deny this token, by bucket."""
    user = principal.user_id
    buckets: dict[int, Fields] = {bucket_of(user): Fields()}

    def at(owner: str) -> Fields:
        return buckets.setdefault(bucket_of(owner), Fields())

    if principal.jti:
        at(principal.jti).deny.append(layout.jti_field(principal.jti))
    else:
        at(user).deny.append(layout.token_field(user, principal.token_digest))
    if principal.sid:
        at(principal.sid).deny.append(layout.session_field(principal.sid))
    for owner in dict.fromkeys((user, principal.subject)):  # a back-channel logout names the subject
        at(owner).cutoffs.append(layout.cutoff_field(owner))
        if principal.client_id:  # an OAuth token without a sid outlives sessions (a refreshed grant)
            at(owner).cutoffs.append(layout.grant_field(owner, principal.client_id))
        else:
            at(owner).sidless.append(layout.sidless_field(owner))
    if principal.client_id:
        at(principal.client_id).cutoffs.append(layout.client_field(principal.client_id))
    return buckets


class Checks:
    def __init__(self, client: RedisClient, keys: Layout, lifetimes: Lifetimes) -> None:
        self.client, self.keys, self.lifetimes = client, keys, lifetimes

    def ask(self, principal: Principal, window: Window | None) -> Answer:
        by_bucket, user_bucket = fields_of(principal), bucket_of(principal.user_id)
        buckets = sorted(by_bucket)
        groups = [[bucket] for bucket in buckets] if self.client.clustered else [buckets]
        calls = [self._call(principal, window, group, by_bucket, user_bucket) for group in groups]
        revoked, count, states = False, 0, []
        for group, raw in zip(groups, self.client.run_together(calls), strict=True):
            reply = check_reply(raw)
            if reply.missing is not None:
                return Answer(True, 0, (), True)
            revoked = revoked or reply.revoked
            count = max(count, reply.count)
            states += zip(group, reply.states, strict=True)
        return Answer(revoked, count, tuple(states), False)

    def give_back(self, window: Window) -> None:
        """Uncount a request counted in `window` whose token turned out to be revoked."""
        self.client.client.decr(window.key)

    def _call(self, principal: Principal, window: Window | None, group: Sequence[int],
              by_bucket: dict[int, Fields], user_bucket: int) -> ScriptCall:
        user_at = group.index(user_bucket) + 1 if user_bucket in group else 0
        counting = window is not None and user_at > 0
        last_valid = self.lifetimes.last_valid(principal.iat, principal.exp)
        args: list[object] = [len(group), user_at, repr(principal.iat), token_name(principal), repr(last_valid),
                              window.ttl if counting else "", "1" if principal.sid else "0",
                              layout.covered_field(principal.user_id, token_name(principal)),
                              layout.ahead_field(principal.user_id)]
        for bucket in group:
            found = by_bucket[bucket]
            args += [len(found.deny), len(found.cutoffs), len(found.sidless), *found.deny, *found.cutoffs,
                     *found.sidless]
        keys = [self.keys.bucket(bucket) for bucket in group] + ([window.key] if counting else [])
        return ScriptCall("check", keys, args)
