"""OAuth access tokens (RFC 9068) of third-party apps and agents: what makes one acceptable, and
who it names (ARCHITECTURE.md, "OAuth access tokens")."""

from __future__ import annotations

import re
import time
from typing import Any

import jwt as pyjwt

from app.config import SYMMETRIC_ALGORITHMS, Settings
from app.errors import ApiError, TokenRejected
from app.security.jwks import JwksKeySet
from app.security.tokens import (
    FORBIDDEN_HEADERS,
    Principal,
    SignedToken,
    bound_key,
    check_claims,
    check_not_banned,
    claim_text,
    decode_key,
    is_identifier,
)

MAX_SCOPE_LENGTH = 2000
SCOPE = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+")  # RFC 6749 §3.3 scope-token


def check_audience(aud: Any, resource: str) -> None:
    audiences = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else None
    if not audiences or not all(isinstance(a, str) for a in audiences):
        raise TokenRejected("The token's 'aud' claim must name this API.")
    if resource not in audiences:
        raise TokenRejected("The token was issued for another API (its 'aud' does not name this one).")


def scopes_of(claims: dict[str, Any]) -> frozenset[str]:
    scope = claims.get("scope", "")
    if not isinstance(scope, str) or len(scope) > MAX_SCOPE_LENGTH:
        raise TokenRejected("The token's 'scope' claim must be a space-separated string.")
    names = [name for name in scope.split(" ") if name]
    if not all(SCOPE.fullmatch(name) for name in names):
        raise TokenRejected("The token's 'scope' claim must be a space-separated string.")
    return frozenset(names)


def check_oauth_claims(signed: SignedToken, settings: Settings, now: float) -> None:
    """RFC 9068 §4 on the claims as signed, before the signature (each only ever refuses)."""
    claims = signed.claims
    if signed.header.get("alg") in SYMMETRIC_ALGORITHMS or FORBIDDEN_HEADERS & signed.header.keys():
        raise TokenRejected("An OAuth access token must be signed with the authorization server's keys.")
    if "events" in claims:
        raise TokenRejected("The token is not an access token.")
    check_claims(claims, settings, now, user_claim="sub")
    if not is_identifier(claims.get("client_id")):
        raise TokenRejected("The OAuth access token names no client ('client_id').")
    if claims.get("iss") != settings.oauth_issuer:
        raise TokenRejected("The OAuth access token is not from the configured authorization server.")
    check_audience(claims.get("aud"), settings.oauth_resource_url or "")
    check_not_banned(claims)
    scopes_of(claims)


def verify_signature(token: str, signed: SignedToken, settings: Settings, keys: JwksKeySet | None,
                     allow_expired: bool = False) -> None:
    """PyJWT with the key decode_key picks (a JWKS key; never the shared secret), and exp, nbf,
    iss and aud checked again; any failure to read the token is a 401, never a 500."""
    key = decode_key(signed.header, settings, keys)
    try:
        pyjwt.decode(token, key, algorithms=[signed.header["alg"]], audience=settings.oauth_resource_url,
                     issuer=settings.oauth_issuer, leeway=settings.leeway_seconds,
                     options={"require": ["exp", "iat", "sub"], "verify_exp": not allow_expired,
                              "verify_sub": False, "verify_jti": False})
    except pyjwt.ExpiredSignatureError:
        raise TokenRejected("The token has expired.", "token_expired") from None
    except ApiError:
        raise
    except Exception:  # noqa: BLE001 - bad signature, base64, a wrong header...
        raise TokenRejected("The token is not valid.") from None


def principal(signed: SignedToken) -> Principal:
    """The caller: the user (`sub`) through the client; never an admin, whatever its claims say."""
    claims = signed.claims
    return Principal(
        user_id=claims["sub"], subject=claims["sub"], email=claim_text(claims.get("email")),
        name=claim_text(claims.get("name")), role=None, is_admin=False, jti=claims.get("jti"), sid=claims.get("sid"),
        iat=claims["iat"], exp=claims["exp"], claims=claims, key_id=signed.header.get("kid"),
        client_id=claims["client_id"], scopes=scopes_of(claims), jkt=bound_key(claims))


def verify(token: str, signed: SignedToken, settings: Settings, keys: JwksKeySet | None,
           now: float | None = None) -> Principal:
    if settings.oauth_resource_url is None:
        raise TokenRejected("This API does not accept OAuth access tokens.")
    check_oauth_claims(signed, settings, time.time() if now is None else now)
    verify_signature(token, signed, settings, keys)
    return principal(signed)
