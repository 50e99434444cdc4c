"""The request gate: who is calling, and may they.

Every route declared with `app.api.endpoint` is admitted here before its view runs, in this
order, top to bottom:

1. `admit`: an anonymous endpoint counts the caller's IP against RATE_LIMIT_IP (except the
   health checks); an authenticated one calls `authenticate`, counts a failure against the
   IP's RATE_LIMIT_AUTH_FAILURES, then checks the admin role where it is needed.
2. `authenticate`:
   a. the token from the Authorization header (`bearer_token`);
   b. the principal from the verified-token cache, or a full verification (app.security.tokens);
   c. one store check that answers "revoked?" and, for a token that is not, counts it
      against its user's rate limit (app.revocation.store);
   d. the principal and the RateLimit headers of its count, returned.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field

from flask import Request

from app.errors import ApiError, TokenRejected, Unauthorized
from app.security import tokens
from app.security.authz import require_admin
from app.security.tokens import Principal
from app.services import Services

# The common shape, matched in one step; anything else goes through bearer_token's full parse.
PLAIN_BEARER = re.compile(r"[Bb][Ee][Aa][Rr][Ee][Rr] ([A-Za-z0-9_=-]+\.[A-Za-z0-9_=-]+\.[A-Za-z0-9_=-]*)")
CREDENTIAL_SEPARATOR = re.compile(r",\s*")


def bearer_token(header: str | None) -> str:
    """The one Bearer credential of an Authorization header. The scheme is case-insensitive
    (RFC 9110 §11.1); other comma-separated credentials around it are tolerated, two Bearer
    credentials never resolve to one."""
    match = PLAIN_BEARER.fullmatch(header or "")
    if match is not None:
        return match[1]
    value = (header or "").strip().strip(",")
    credentials = [c for c in CREDENTIAL_SEPARATOR.split(value) if c.split() and c.split()[0].lower() == "bearer"]
    if len(credentials) != 1:
        raise Unauthorized("missing_token", "No bearer token was sent.")
    parts = credentials[0].split()
    if len(parts) != 2:
        raise TokenRejected("The Authorization header is not 'Bearer <token>'.")
    return parts[1]


@dataclass(frozen=True)
class Admission:
    """Who was let in (None: an anonymous endpoint), and the RateLimit headers of the limit
    the request counted against."""

    principal: Principal | None
    headers: dict[str, str] = field(default_factory=dict)


def authenticate(request: Request, found: Services, *, counted: bool = True) -> Admission:
    """The principal of the request's bearer token, or a 401 (or 429, 503) ApiError.
    `counted`: the request counts against its user's rate limit (logout does not)."""
    token = bearer_token(request.headers.get("Authorization"))
    settings, now = found.settings, time.time()

    principal = found.verified_tokens.get(token, settings, now, found.keys)
    if principal is None:
        principal = tokens.verify(token, settings, now)
        jwk = found.keys.current_jwk(principal.key_id) if principal.key_id and found.keys else None
        if principal.key_id is None or jwk is not None:  # a key withdrawn meanwhile: not worth remembering
            found.verified_tokens.put(token, principal, now, jwk)

    limits = found.rate_limits if counted else None
    window = limits.user_window(principal.user_id) if limits is not None else None
    verdict = found.store.check(principal, window)
    if verdict.revoked:
        raise TokenRejected("The token has been revoked.", "token_revoked")
    headers = window.enforce(verdict.count) if window is not None else {}
    return Admission(principal, headers)


def admit(request: Request, found: Services, auth: str | None, *, rate_limited: bool = True) -> Admission:
    """The endpoint's caller: no principal for an anonymous endpoint, else an authenticated
    one (an admin when `auth` is "admin"). `rate_limited`: anonymous endpoints count against
    the IP's limit, authenticated ones against the user's (False: health checks, logout)."""
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
    if auth == "admin":
        require_admin(admission.principal)
    return admission
