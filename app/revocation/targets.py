"""What a revocation denies, and for how long (ARCHITECTURE.md, "The revocation model")."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from app.revocation.layout import bucket_of

KINDS = ("jti", "token", "session", "user", "sidless")


@dataclass(frozen=True)
class RevocationTarget:
    """`kind` is one of KINDS; `value` names what is denied (a jti, a claims digest, a sid, a user id)."""

    kind: str
    value: str
    expires_at: float  # no token it can affect outlives this
    user_id: str | None = None
    cutoff: float | None = None  # user, sidless: tokens with iat <= cutoff are denied
    covers: tuple[tuple[str, float], ...] = ()  # user: tokens denied by name, with their last valid time

    @property
    def bucket(self) -> int:
        owner = self.user_id if self.kind == "token" else self.value  # user, sidless: the user id
        return bucket_of(owner or "")


@dataclass(frozen=True)
class Lifetimes:
    """How long a token can be accepted: JWT_MAX_AGE_SECONDS after its iat, plus the leeway."""

    max_age: float
    leeway: float

    def last_valid(self, iat: float, exp: float) -> float:
        """When a token with these times stops being accepted, at the latest."""
        return min(float(exp), float(iat) + self.max_age) + self.leeway

    def open_ended(self, now: float) -> float:
        """Until when a denial made now of tokens issued by now matters."""
        return now + self.max_age + self.leeway

    def token(self, claims: dict[str, Any], user_id: str | None, digest: str) -> RevocationTarget:
        """The entry that denies one token (claims as signed): by jti, else by the digest of its claims."""
        expires_at = self.last_valid(claims["iat"], claims["exp"])
        if claims.get("jti"):
            return RevocationTarget("jti", claims["jti"], expires_at, user_id)
        return RevocationTarget("token", digest, expires_at, user_id)

    def user(self, user_id: str, cutoff: float, covers: tuple[tuple[str, float], ...], now: float) -> RevocationTarget:
        return RevocationTarget("user", user_id, self.open_ended(max(cutoff, now)), user_id, cutoff, covers)

    def logged_out(self, sub: str | None, sid: str | None, iat: float, now: float) -> list[RevocationTarget]:
        """A back-channel logout: with a `sid`, that session's tokens and the user's tokens without
        a sid issued up to `iat` (any may be the session's); with a `sub` alone, every token of the
        user issued up to `iat`. The logout token's own `iat` is the cutoff, never the time it
        arrives, so a replay cannot reach later tokens."""
        targets = []
        if sid is not None:
            targets.append(RevocationTarget("session", sid, self.open_ended(max(iat, now)), sub))
        if sub is not None:
            targets.append(RevocationTarget("sidless" if sid is not None else "user", sub, self.open_ended(iat),
                                            sub, iat))
        return targets
