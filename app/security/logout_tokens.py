"""OpenID Connect Back-Channel Logout 1.0: what makes a logout token acceptable
(ARCHITECTURE.md, "A back-channel logout")."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import jwt as pyjwt

from app.config import Settings
from app.errors import ApiError
from app.security.jwks import JwksKeySet
from app.security.tokens import (
    FORBIDDEN_HEADERS,
    SignedToken,
    decode_key,
    is_identifier,
    is_number,
    read_segments,
)

BACKCHANNEL_LOGOUT_EVENT = "http://schemas.openid.net/event/backchannel-logout"
LOGOUT_TOKEN_TYPES = frozenset({"logout+jwt", "application/logout+jwt"})  # case-insensitive (RFC 7515 §4.1.9)


class InvalidLogoutToken(Exception):
    """The spec's 400 invalid_request, with a description of what was wrong."""


@dataclass(frozen=True)
class LogoutToken:
    issuer: str
    jti: str
    iat: float
    sub: str | None
    sid: str | None
    # When the sign-out happened: the cutoff for the user's tokens (default: iat). A sender that
    # retries an old sign-out signs a fresh token (a recent iat) that keeps the old cutoff.
    revoked_before: float
    # A grant ended (a user withdrew an OAuth client's consent): that user's tokens of that client.
    client_id: str | None = None



def _check(condition: bool, description: str) -> None:
    if not condition:
        raise InvalidLogoutToken(description)


def check_shape(signed: SignedToken, settings: Settings, now: float) -> None:
    """§2.4 and §2.6, step by step, on the claims as signed (before the signature, like the
    access-token checks: each only ever refuses)."""
    header, claims = signed.header, signed.claims
    typ = header.get("typ")
    _check(typ is None or (isinstance(typ, str) and typ.lower() in LOGOUT_TOKEN_TYPES),
           "typ must be absent or logout+jwt")
    _check(not FORBIDDEN_HEADERS & header.keys(), "header parameters this receiver does not accept")
    _check(isinstance(claims.get("iss"), str) and 0 < len(claims["iss"]) <= 255, "iss is required")
    _check("aud" in claims, "aud is required")
    for name in ("iat", "exp"):
        _check(is_number(claims.get(name)), f"{name} must be a number")
    _check("nbf" not in claims or is_number(claims["nbf"]), "nbf must be a number")
    _check(claims["iat"] <= now + settings.leeway_seconds, "iat is in the future")
    _check(now - claims["iat"] <= settings.logout_token_max_age_seconds, "iat is too old")
    _check(is_identifier(claims.get("jti")), "jti is required")
    events = claims.get("events")
    _check(isinstance(events, dict) and isinstance(events.get(BACKCHANNEL_LOGOUT_EVENT), dict),
           f"events must hold {BACKCHANNEL_LOGOUT_EVENT} as an object")
    _check("sub" in claims or "sid" in claims, "sub or sid is required")
    for name in ("sub", "sid"):
        _check(name not in claims or is_identifier(claims[name]), f"{name} must be a non-empty string")
    _check("nonce" not in claims, "a logout token has no nonce")
    if "client_id" in claims:
        _check(is_identifier(claims["client_id"]) and "sub" in claims, "client_id needs a sub, as a string")
    if "revoked_before" in claims:
        _check(is_number(claims["revoked_before"]) and claims["revoked_before"] <= claims["iat"],
               "revoked_before must be a date no later than iat")


def verify_signature(token: str, signed: SignedToken, settings: Settings, keys: JwksKeySet | None) -> None:
    """The signature with the key the access-token policy would choose (decode_key: the
    algorithm from configuration, the secret or a JWKS key of that family), and exp, iss and
    aud through PyJWT."""
    try:
        key = decode_key(signed.header, settings, keys)
    except ApiError as error:
        if error.status != 401:  # no signing keys at all: 503, the sender retries
            raise
        raise InvalidLogoutToken("the token is not signed with a key this receiver trusts") from None
    try:
        options = {"require": ["iat", "exp", "jti", "iss", "aud"], "verify_aud": settings.audience is not None,
                   "verify_iss": settings.issuer is not None, "verify_sub": False, "verify_jti": True}
        pyjwt.decode(token, key, algorithms=list(settings.algorithms), audience=settings.audience,
                     issuer=settings.issuer, leeway=settings.leeway_seconds, options=options)
    except pyjwt.ExpiredSignatureError:
        raise InvalidLogoutToken("the token has expired") from None
    except pyjwt.InvalidAudienceError:
        raise InvalidLogoutToken("aud does not name this receiver") from None
    except pyjwt.InvalidIssuerError:
        raise InvalidLogoutToken("iss is not the configured issuer") from None
    except Exception:  # noqa: BLE001 - any failure to read or verify the token is the sender's
        raise InvalidLogoutToken("the token's signature is not valid") from None


def validate(token: Any, settings: Settings, keys: JwksKeySet | None, now: float | None = None) -> LogoutToken:
    now = time.time() if now is None else now
    _check(isinstance(token, str) and 0 < len(token) <= 16384, "logout_token is required")
    try:
        signed = read_segments(token.strip())
    except ApiError:
        raise InvalidLogoutToken("logout_token is not a signed JWT") from None
    check_shape(signed, settings, now)
    verify_signature(token.strip(), signed, settings, keys)
    claims = signed.claims
    return LogoutToken(claims["iss"], claims["jti"], float(claims["iat"]), claims.get("sub"), claims.get("sid"),
                       float(claims.get("revoked_before", claims["iat"])), claims.get("client_id"))
