"""The request gate: who is calling, and may they: `admit` → `authenticate` → `identify` →
`credential`, then `authorize` (ARCHITECTURE.md, "A request's path")."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field

from flask import Request

from app.errors import ApiError, InsufficientScope, OAuthTokenRefused, TokenRejected, Unauthorized
from app.security import dpop, policy
from app.security.authz import require_admin
from app.security.tokens import Principal
from app.services import Services

# The common shape, matched in one step; anything else goes through credential's full parse.
PLAIN_BEARER = re.compile(r"[Bb][Ee][Aa][Rr][Ee][Rr] ([A-Za-z0-9_=-]+\.[A-Za-z0-9_=-]+\.[A-Za-z0-9_=-]*)")
CREDENTIAL_SEPARATOR = re.compile(r",\s*")
SCHEMES = ("bearer", "dpop")


@dataclass(frozen=True)
class Credential:
    scheme: str  # "bearer" or "dpop" (RFC 9449 §7.1)
    token: str


def credential(header: str | None) -> Credential:
    """The one Bearer (or DPoP) credential of an Authorization header. The scheme is
    case-insensitive (RFC 9110 §11.1); other comma-separated credentials around it are
    tolerated, two token credentials never resolve to one."""
    match = PLAIN_BEARER.fullmatch(header or "")
    if match is not None:
        return Credential("bearer", match[1])
    value = (header or "").strip().strip(",")
    found = [c for c in CREDENTIAL_SEPARATOR.split(value) if c.split() and c.split()[0].lower() in SCHEMES]
    if len(found) != 1:
        raise Unauthorized("missing_token", "No bearer token was sent.")
    parts = found[0].split()
    if len(parts) != 2:
        raise TokenRejected("The Authorization header is not 'Bearer <token>'.")
    if parts[1].count(".") != 2:
        raise TokenRejected("The token is opaque: this API takes JWT access tokens (an OAuth client gets one by "
                            "naming this API as the `resource` of its token request).")
    return Credential(parts[0].lower(), parts[1])


def bearer_token(header: str | None) -> str:
    return credential(header).token


def check_binding(request: Request, given: Credential, principal: Principal, found: Services, now: float) -> None:
    """A token bound to a key (DPoP, `cnf.jkt`), first-party or OAuth alike, comes with the DPoP
    scheme and a fresh proof of that key for this very request; an unbound token with the Bearer
    scheme."""
    if principal.jkt is None:
        if given.scheme == "dpop":
            raise TokenRejected("The DPoP scheme is for a token bound to a key; this one is not.")
        return
    if given.scheme != "dpop":
        raise TokenRejected("The token is bound to a key: send it as 'DPoP <token>' with a DPoP proof.",
                            "invalid_dpop_proof")
    proofs = request.headers.getlist("DPoP")
    if len(proofs) != 1:
        raise TokenRejected("A DPoP-bound token needs exactly one DPoP proof header.", "invalid_dpop_proof")
    about = dpop.Request(request.method, request.base_url)
    max_age = found.settings.dpop_max_age_seconds
    jti = dpop.check_proof(proofs[0], about, given.token, principal.jkt, now, max_age)
    if found.proof_replays is not None:
        found.proof_replays.first_use(principal.jkt, jti)


def identify(request: Request, found: Services, now: float) -> Principal:
    """The principal of the request's token: from this worker's cache of tokens it verified,
    or the whole policy; a bound token's proof checked every time."""
    given = credential(request.headers.get("Authorization"))
    settings = found.settings
    principal = found.verified_tokens.get(given.token, settings, now, found.keys)
    if principal is None:
        principal = policy.verify(given.token, settings, found.keys, now)
        jwk = found.keys.current_jwk(principal.key_id) if principal.key_id and found.keys else None
        if principal.key_id is None or jwk is not None:  # a key withdrawn meanwhile: not worth remembering
            found.verified_tokens.put(given.token, principal, now, jwk)
    check_binding(request, given, principal, found, now)
    return principal


@dataclass(frozen=True)
class Admission:
    """Who was let in (None: an anonymous endpoint), and the RateLimit headers of the limit
    the request counted against."""

    principal: Principal | None
    headers: dict[str, str] = field(default_factory=dict)


def authenticate(request: Request, found: Services, *, counted: bool = True) -> Admission:
    """The principal of the request's token, or a 401 (or 429, 503) ApiError.
    `counted`: the request counts against its user's rate limit (logout does not)."""
    principal = identify(request, found, time.time())
    limits = found.rate_limits if counted else None
    window = limits.user_window(principal.user_id) if limits is not None else None
    verdict = found.store.check(principal, window)
    if verdict.revoked:
        raise TokenRejected("The token has been revoked.", "token_revoked")
    headers = window.enforce(verdict.count) if window is not None else {}
    return Admission(principal, headers)


def authorize(principal: Principal, auth: str, scope: str | None) -> None:
    """An admin route takes first-party admins only; an OAuth token needs the route's scope."""
    if auth == "admin":
        if principal.oauth:
            raise OAuthTokenRefused(dpop=principal.jkt is not None)
        require_admin(principal)
    if scope is not None and principal.scopes is not None and scope not in principal.scopes:
        raise InsufficientScope(scope, dpop=principal.jkt is not None)


def admit(request: Request, found: Services, auth: str | None, *, rate_limited: bool = True,
          scope: str | None = None) -> Admission:
    """The endpoint's caller: no principal for an anonymous endpoint, else an authenticated
    one (an admin when `auth` is "admin"; an OAuth token granted `scope`). `rate_limited`:
    anonymous endpoints count against the IP's limit, authenticated ones against the user's
    (False: health checks, logout)."""
    limits = found.rate_limits
    if auth is None:
        if rate_limited and limits is not None:
            return Admission(None, limits.anonymous_request(request.remote_addr))
        return Admission(None)
    try:
        admission = authenticate(request, found, counted=rate_limited)
    except ApiError as error:
        if error.status == 401 and limits is not None:
            limits.authentication_failed(request.remote_addr)
        raise
    authorize(admission.principal, auth, scope)
    return admission
