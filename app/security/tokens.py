"""Token policy for a first-party token (CONTRACT §2): what makes one acceptable, and who it names
(ARCHITECTURE.md, "A request's path")."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import time
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import orjson
from flask_jwt_extended import decode_token
from jwt.exceptions import ExpiredSignatureError

from app.config import SYMMETRIC_ALGORITHMS, Settings
from app.errors import ApiError, TokenRejected
from app.security.jwks import JwksKeySet

MAX_ID_LENGTH = 255
# Header parameters we refuse outright: critical extensions we do not implement,
# unencoded payloads (RFC 7797), and anything JWE-shaped.
FORBIDDEN_HEADERS = frozenset({"crit", "b64", "zip", "enc"})
# `typ` values of a first-party access token (RFC 7519 §5.1; case-insensitive, and the
# "application/" prefix may be left out); RFC 9068's `at+jwt` is an OAuth access token
# (app.security.oauth_tokens), never a first-party one. Anything else is for another job.
ACCESS_TOKEN_TYPES = frozenset({"jwt", "application/jwt"})
OAUTH_TOKEN_TYPES = frozenset({"at+jwt", "application/at+jwt"})
# 9999-12-31T23:59:59Z, the last instant a datetime can hold (/me formats exp and iat).
MAX_TIMESTAMP = 253_402_300_799
# Role lists are split on commas and ASCII whitespace only: str.split() would also split on
# (and str.strip() remove) a non-breaking space, making "admin\u00a0" an admin.
IDENTITY_CLAIMS = ("sub", "id", "iat", "exp", "jti", "sid", "role")
ROLE_SEPARATORS = re.compile(r"[,\x20\t\n\r\x0b\x0c]+")
JKT = re.compile(r"[A-Za-z0-9_-]{43}")  # a base64url SHA-256 JWK thumbprint (RFC 9449 §6.1)


@dataclass(frozen=True)
class SignedToken:
    """A token's header and claims exactly as they were signed (not yet verified)."""

    header: dict[str, Any]
    claims: dict[str, Any]


@dataclass(frozen=True)
class Principal:
    """The caller, as established by a verified token."""

    user_id: str
    subject: str  # `sub` (a back-channel logout names it, whatever JWT_USER_CLAIM is)
    email: str | None
    name: str | None
    role: str | None
    is_admin: bool
    jti: str | None
    sid: str | None
    iat: float
    exp: float
    claims: dict[str, Any]  # as signed
    key_id: str | None = None  # the JWKS key that verified it (None: the shared secret)
    # An OAuth access token (app.security.oauth_tokens): the client acting for the user and the
    # scopes it was granted. None: a first-party token, which can do everything its user can.
    client_id: str | None = None
    scopes: frozenset[str] | None = None
    # The key a sender-constrained token of either kind is bound to (`cnf.jkt`; bound_key).
    jkt: str | None = None

    @property
    def oauth(self) -> bool:
        return self.client_id is not None

    @cached_property
    def token_digest(self) -> str:
        return token_digest(self.claims)


def token_digest(claims: dict[str, Any]) -> str:
    """Identifies a token by the claims it was signed over: a re-encoded (padding, whitespace,
    key order) or re-signed copy of the same claims has the same digest, so it cannot escape a
    logout; any other claim, whatever its value, gives another digest."""
    try:
        data = orjson.dumps(claims, option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError:
        # Lone surrogates or integers past 64 bits (orjson refuses them).
        data = json.dumps(claims, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(data).hexdigest()


# --- the segments ----------------------------------------------------------------------


def _json_object(segment: str) -> dict[str, Any]:
    """RFC 7515/7519: a UTF-8 JSON object. Python's json.loads(bytes) would also take UTF-16,
    UTF-32 and a byte-order mark, which no JOSE library emits."""
    try:
        text = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        raise TokenRejected("The token is not UTF-8 JSON.") from None
    if text.startswith("\ufeff") or "\x00" in text:  # a BOM; UTF-16/32 (NULs)
        raise TokenRejected("The token is not UTF-8 JSON.")
    try:
        value = json.loads(text)  # as PyJWT reads it: same numbers, same duplicate-key rule
    except (ValueError, RecursionError):
        raise TokenRejected("The token is not UTF-8 JSON.") from None
    if not isinstance(value, dict):
        raise TokenRejected("The token is not a JSON object.")
    return value


def read_segments(token: str) -> SignedToken:
    parts = token.split(".")
    if len(parts) != 3:
        raise TokenRejected("The token is not a signed JWT.")
    return SignedToken(_json_object(parts[0]), _json_object(parts[1]))


# --- the checks ------------------------------------------------------------------------


def is_oauth_token(signed: SignedToken) -> bool:
    typ = signed.header.get("typ")
    return isinstance(typ, str) and typ.lower() in OAUTH_TOKEN_TYPES


def check_access_token(signed: SignedToken) -> None:
    """RFC 8725 §3.11-3.12: a token made for another job (an OpenID Connect logout token:
    `typ: logout+jwt`, or an `events` claim; an OAuth access token, `typ: at+jwt`) never
    authenticates as a first-party token."""
    typ = signed.header.get("typ")
    if typ is not None and (not isinstance(typ, str) or typ.lower() not in ACCESS_TOKEN_TYPES):
        raise TokenRejected("The token is not an access token.")
    if "events" in signed.claims:
        raise TokenRejected("The token is not an access token.")
    if signed.claims.get("type", "access") != "access":  # flask-jwt-extended's refresh tokens
        raise TokenRejected("The token is not an access token.")
    if "client_id" in signed.claims:  # RFC 9068's mark of an OAuth access token, whatever its typ
        raise TokenRejected("The token names an OAuth client: only an OAuth access token (typ at+jwt) may.")


def is_number(value: Any) -> bool:
    """A NumericDate this API can compute with: a JSON number from 1970 to year 9999. Comparisons,
    not float(): NaN and ±Infinity fail them, and so does an integer of any size or sign
    (-10**400 included), without an OverflowError."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= MAX_TIMESTAMP


def is_identifier(value: Any) -> bool:
    """What a user, session or token id may be: printable, 1-255 characters."""
    return isinstance(value, str) and 0 < len(value) <= MAX_ID_LENGTH and value.isprintable()


def check_claims(claims: dict[str, Any], settings: Settings, now: float | None = None,
                 user_claim: str | None = None) -> None:
    """The claim checks PyJWT leaves to us, for both kinds of token: presence, types, the maximum
    age, and a `cnf` this API can check (bound_key). They come before the signature check:
    PyJWT would read `"exp": true` as 1 and `"exp": "9"` as 9.
    `user_claim`: the claim naming the user (default JWT_USER_CLAIM)."""
    now = time.time() if now is None else now
    for name in ("exp", "iat"):
        if name not in claims:
            raise TokenRejected(f"The token has no '{name}' claim.")
    for name in ("exp", "iat", "nbf"):
        if name in claims and not is_number(claims[name]):
            raise TokenRejected(f"The token's '{name}' claim must be a date (a number of seconds since 1970).")
    for name in {"sub", user_claim or settings.user_claim}:
        if not is_identifier(claims.get(name)):
            raise TokenRejected(f"The token's '{name}' claim must be a non-empty string.")
    for name in ("jti", "sid"):
        if claims.get(name) is not None and not is_identifier(claims[name]):
            raise TokenRejected(f"The token's '{name}' claim must be a non-empty string.")
    if claims["iat"] > now + settings.leeway_seconds:
        raise TokenRejected("The token was issued in the future.")
    check_age(claims["iat"], settings, now)
    bound_key(claims)


def bound_key(claims: dict[str, Any]) -> str | None:
    """The DPoP key a sender-constrained token, first-party or OAuth, is bound to (`cnf.jkt`),
    whose proof app.gate.check_binding asks for; any other confirmation method (mTLS
    `x5t#S256`) is one this API cannot check: refused."""
    if "cnf" not in claims:
        return None
    cnf = claims["cnf"]
    if not isinstance(cnf, dict) or set(cnf) != {"jkt"} or not isinstance(cnf["jkt"], str) \
            or not JKT.fullmatch(cnf["jkt"]):
        raise TokenRejected("The token is bound to its sender by a method this API cannot check.")
    return cnf["jkt"]


def check_age(iat: float, settings: Settings, now: float) -> None:
    if now - iat > settings.max_age_seconds:
        raise TokenRejected("The token is older than this API accepts.", "token_expired")


def check_expiry(exp: float, settings: Settings, now: float) -> None:
    if now > exp + settings.leeway_seconds:
        raise TokenRejected("The token has expired.", "token_expired")


def decode_key(header: dict[str, Any], settings: Settings, keys: JwksKeySet | None) -> Any:
    """The one key that may verify a token with this header: algorithms come from
    configuration, never from the token (flask-jwt-extended's `decode_key_loader`)."""
    alg = header.get("alg")
    if alg not in settings.algorithms:
        raise TokenRejected("The token's algorithm is not accepted.")
    if FORBIDDEN_HEADERS & header.keys():
        raise TokenRejected("The token uses header parameters this API does not accept.")
    if alg in SYMMETRIC_ALGORITHMS:
        return settings.secret  # set whenever HS256 is accepted (app.config.shared_secret)
    if keys is None:
        raise TokenRejected("The token's algorithm is not accepted.")
    return keys.key_for(header)


def verify_signature(token: str, signed: SignedToken, allow_expired: bool = False) -> None:
    """flask-jwt-extended's decode_token (signature, exp, nbf, iss, aud with the configured
    leeway); any failure to read the token is a 401, never a 500."""
    try:
        decoded = decode_token(token, allow_expired=allow_expired)
    except ApiError:
        raise
    except ExpiredSignatureError:
        raise TokenRejected("The token has expired.", "token_expired") from None
    except Exception:  # noqa: BLE001 - bad base64, nested JSON, huge numbers, a wrong header...
        raise TokenRejected("The token is not valid.") from None
    # The claims we act on are our own reading of the signed segment; those that name the
    # caller must be what the library verified (it only ever adds its defaults).
    if any(decoded.get(name) != signed.claims.get(name) for name in IDENTITY_CLAIMS if name in signed.claims):
        raise TokenRejected("The token is not valid.")


def check_not_banned(claims: dict[str, Any]) -> None:
    """Better Auth's admin plugin puts `banned` in the user object its jwt() plugin signs."""
    if claims.get("banned") is True:
        raise TokenRejected("The user is banned.")


def verify(token: str, signed: SignedToken, settings: Settings, now: float | None = None) -> Principal:
    """A first-party token not seen before (app.security.policy chooses this or OAuth's)."""
    check_access_token(signed)
    check_claims(signed.claims, settings, now)
    check_not_banned(signed.claims)
    verify_signature(token, signed)
    by_jwks = signed.header.get("alg") not in SYMMETRIC_ALGORITHMS
    return principal_from_claims(signed.claims, settings, signed.header["kid"] if by_jwks else None)


# --- who the token names ---------------------------------------------------------------


def claim_text(value: Any) -> str | None:
    """A string claim as text: a lone UTF-16 surrogate (a JS string cut mid-emoji, sent as
    "\\ud83d") becomes U+FFFD instead of breaking the JSON encoder."""
    if not isinstance(value, str):
        return None
    return value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def role_names(role: Any) -> list[str]:
    """Better Auth's admin plugin writes `role` as "admin" or "user,admin"; lists are accepted too."""
    if isinstance(role, str):
        parts = [role]
    else:
        parts = [part for part in role if isinstance(part, str)] if isinstance(role, list) else []
    return [name for part in parts for name in ROLE_SEPARATORS.split(claim_text(part)) if name]


def principal_from_claims(claims: dict[str, Any], settings: Settings, key_id: str | None = None) -> Principal:
    user_id = claims[settings.user_claim]
    role = claims.get("role")
    names = role_names(role)
    return Principal(
        user_id=user_id,
        subject=claims["sub"],
        email=claim_text(claims.get("email")),
        name=claim_text(claims.get("name")),
        role=claim_text(role) if isinstance(role, str) else (",".join(names) or None),
        is_admin="admin" in names or user_id in settings.admin_user_ids,
        jti=claims.get("jti"),
        sid=claims.get("sid"),
        iat=claims["iat"],
        exp=claims["exp"],
        claims=claims,
        key_id=key_id,
        jkt=bound_key(claims),
    )
