"""What a revocation denies, and for how long (ARCHITECTURE.md, "The revocation model")."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from app.revocation.layout import bucket_of

KINDS = ("jti", "token", "session", "user", "sidless", "grant", "client")


@dataclass(frozen=True)
class RevocationTarget:
    """`kind` is one of KINDS; `value` names what is denied (a jti, a claims digest, a sid, a user
    id, a client id: grant revocations name the client, with the user in `user_id`)."""

    kind: str
    value: str
    expires_at: float  # no token it can affect outlives this
    user_id: str | None = None
    cutoff: float | None = None  # user, sidless, grant, client: tokens with iat <= cutoff are denied
    covers: tuple[tuple[str, float], ...] = ()  # user: tokens denied by name, with their last valid time
    client_id: str | None = None  # the OAuth client the revocation concerns (grant, client, a client's token)

    @property
    def bucket(self) -> int:
        """A user's revocations in the user's bucket; the others in the bucket of what they name."""
        owner = self.user_id if self.kind in ("token", "grant") else self.value
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
        client = claims.get("client_id") if isinstance(claims.get("client_id"), str) else None
        if claims.get("jti"):
            return RevocationTarget("jti", claims["jti"], expires_at, user_id, client_id=client)
        return RevocationTarget("token", digest, expires_at, user_id, client_id=client)

    def grant(self, user_id: str, client_id: str, cutoff: float, now: float) -> RevocationTarget:
        """One user's tokens of one OAuth client issued up to `cutoff` (a consent withdrawn)."""
        return RevocationTarget("grant", client_id, self.open_ended(max(cutoff, now)), user_id, cutoff,
                                client_id=client_id)

    def client(self, client_id: str, cutoff: float, now: float) -> RevocationTarget:
        """Every token of one OAuth client issued up to `cutoff`, whoever it acts for."""
        return RevocationTarget("client", client_id, self.open_ended(max(cutoff, now)), None, cutoff,
                                client_id=client_id)

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
