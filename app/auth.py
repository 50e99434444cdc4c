"""Token policy (DESIGN §2): the one place that decides whether a bearer token is accepted.

flask-jwt-extended reads the header and verifies the signature; the hooks registered here
choose the key (algorithms come from configuration, never from the token), check claim
types, lifetime and revocation. Routes call `authenticate()` through `app.api.endpoint`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

import orjson
from flask import Flask, current_app, g, request
from flask_jwt_extended import JWTManager, get_jwt_header, verify_jwt_in_request
from flask_jwt_extended.exceptions import NoAuthorizationError, RevokedTokenError
from jwt.exceptions import ExpiredSignatureError

from app.config import SYMMETRIC_ALGORITHMS, Settings
from app.errors import ApiError, Forbidden, Unauthorized
from app.ratelimit import EXTENSION_KEY as RATE_LIMITS_KEY

if TYPE_CHECKING:
    from app.jwks import JwksKeySet

MAX_ID_LENGTH = 255
# Header parameters we refuse outright: critical extensions we do not implement,
# unencoded payloads (RFC 7797), and anything JWE-shaped.
FORBIDDEN_HEADERS = frozenset({"crit", "b64", "zip", "enc"})
# Keys flask-jwt-extended adds to the claims when a token lacks them.
JWT_EXTENDED_DEFAULTS = {"type": "access", "fresh": False, "jti": None}


def require_utf8_segments(encoded_token: str) -> None:
    """RFC 7515/7519: the header and the claims are UTF-8 JSON. Python's json.loads(bytes)
    would also take UTF-16, UTF-32 and a byte-order mark, which no JOSE library emits."""
    header, _, rest = encoded_token.partition(".")
    payload = rest.partition(".")[0]
    for segment in (header, payload):
        try:
            text = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)).decode("utf-8")
        except (ValueError, UnicodeDecodeError):
            raise TokenRejected("The token is not UTF-8 JSON.") from None
        if text.startswith("\ufeff") or "\x00" in text:  # a BOM; UTF-16/32 (NULs)
            raise TokenRejected("The token is not UTF-8 JSON.")


class StrictJWTManager(JWTManager):
    """flask-jwt-extended's manager, refusing non-UTF-8 tokens before PyJWT parses them.
    `_decode_jwt_from_config` is the one method every decode goes through (requests and
    decode_for_revocation); flask-jwt-extended is pinned and tests/security guards this."""

    def _decode_jwt_from_config(self, encoded_token: str, csrf_value: Any = None,
                                allow_expired: bool = False) -> dict:
        require_utf8_segments(encoded_token)
        return super()._decode_jwt_from_config(encoded_token, csrf_value, allow_expired)


class TokenRejected(Unauthorized):
    def __init__(self, detail: str, code: str = "invalid_token") -> None:
        super().__init__(code, detail)


@dataclass(frozen=True)
class Principal:
    """The caller, as established by a verified token."""

    user_id: str
    email: str | None
    name: str | None
    role: str | None
    is_admin: bool
    jti: str | None
    sid: str | None
    iat: float
    exp: float
    claims: dict[str, Any]

    @cached_property
    def token_digest(self) -> str:
        return token_digest(self.claims)


def token_digest(claims: dict[str, Any]) -> str:
    """Identifies a token by its claims alone: a re-encoded (padding, whitespace, key order)
    or re-signed copy of the same claims has the same digest, so it cannot escape a logout."""
    canonical = {k: v for k, v in claims.items() if JWT_EXTENDED_DEFAULTS.get(k, k) != v}
    try:
        data = orjson.dumps(canonical, option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError:
        # Lone surrogates or integers past 64 bits (orjson refuses them): the standard
        # library encodes them; such tokens could never be revoked before, so no stored
        # digest changes.
        data = json.dumps(canonical, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(data).hexdigest()


def _settings() -> Settings:
    return current_app.extensions["taskgate.settings"]


# 9999-12-31T23:59:59Z, the last instant a datetime can hold (/me formats exp and iat).
MAX_TIMESTAMP = 253_402_300_799


def _is_number(value: Any) -> bool:
    # Comparisons, not math.isfinite: NaN and ±Infinity fail them, and so does a 400-digit
    # integer, without an OverflowError.
    return isinstance(value, (int, float)) and not isinstance(value, bool) and -math.inf < value <= MAX_TIMESTAMP


def _is_identifier(value: Any) -> bool:
    return (
        isinstance(value, str)
        and 0 < len(value) <= MAX_ID_LENGTH
        and value.isprintable()
    )


def check_claims(claims: dict[str, Any], settings: Settings, now: float | None = None) -> None:
    """The claim checks PyJWT leaves to us: presence, types and the maximum age."""
    now = time.time() if now is None else now
    for name in ("exp", "iat"):
        if name not in claims:
            raise TokenRejected(f"The token has no '{name}' claim.")
    for name in ("exp", "iat", "nbf"):
        if name in claims and not _is_number(claims[name]):
            raise TokenRejected(f"The token's '{name}' claim must be a number.")
    for name in {"sub", settings.user_claim}:
        if not _is_identifier(claims.get(name)):
            raise TokenRejected(f"The token's '{name}' claim must be a non-empty string.")
    for name in ("jti", "sid"):
        if claims.get(name) is not None and not _is_identifier(claims[name]):
            raise TokenRejected(f"The token's '{name}' claim must be a non-empty string.")
    if claims["iat"] > now + settings.leeway_seconds:
        raise TokenRejected("The token was issued in the future.")
    if now - claims["iat"] > settings.max_age_seconds:
        raise TokenRejected("The token is older than this API accepts.", "token_expired")


def _text(value: Any) -> str | None:
    """A string claim as text: a lone UTF-16 surrogate (a JS string cut mid-emoji, sent as
    "\\ud83d") becomes U+FFFD instead of breaking the JSON encoder."""
    if not isinstance(value, str):
        return None
    return value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def _role_names(role: Any) -> list[str]:
    if isinstance(role, str):
        return [part.strip() for part in _text(role).split(",")]
    if isinstance(role, list):
        return [_text(part).strip() for part in role if isinstance(part, str)]
    return []


def principal_from_claims(claims: dict[str, Any], settings: Settings) -> Principal:
    user_id = claims[settings.user_claim]
    role = claims.get("role")
    return Principal(
        user_id=user_id,
        email=_text(claims.get("email")),
        name=_text(claims.get("name")),
        role=_text(role) if isinstance(role, str) else (",".join(_role_names(role)) or None),
        is_admin="admin" in _role_names(role) or user_id in settings.admin_user_ids,
        jti=claims.get("jti"),
        sid=claims.get("sid"),
        iat=claims["iat"],
        exp=claims["exp"],
        claims=claims,
    )


# --- flask-jwt-extended hooks -------------------------------------------------------


def _decode_key(header: dict[str, Any], claims: dict[str, Any]) -> Any:
    # Runs before PyJWT verifies the token. Checking the claims here only ever rejects
    # (acceptance still needs the signature over these same bytes), and it must come
    # first: PyJWT would read `"exp": true` as 1 and `"exp": "9"` as 9.
    settings = _settings()
    check_claims(claims, settings)
    alg = header.get("alg")
    if alg not in settings.algorithms:
        raise TokenRejected("The token's algorithm is not accepted.")
    if FORBIDDEN_HEADERS & header.keys():
        raise TokenRejected("The token uses header parameters this API does not accept.")
    if alg in SYMMETRIC_ALGORITHMS:
        return settings.secret
    keys = current_app.extensions.get("taskgate.jwks")
    if keys is None:
        raise TokenRejected("The token's algorithm is not accepted.")
    return keys.key_for(header)


def _revoked(principal: Principal, extensions: dict[str, Any] | None = None) -> bool:
    """The one revocation check, for freshly verified and cached tokens alike. The caller's
    per-user rate limit is counted in the same Redis round trip (app.ratelimit).
    `extensions`: the app's, when the caller has them at hand."""
    g.principal = principal
    if extensions is None:
        extensions = current_app.extensions
    store = extensions.get("taskgate.revocations")
    limits = extensions.get(RATE_LIMITS_KEY)
    window = limits.user_window(principal.user_id) if limits is not None else None
    if store is None:  # rate limits need the store too (app.ratelimit): nothing to count
        return False
    revoked, count = store.check(principal, window)
    if window is not None and not revoked:
        window.enforce(count)
    return revoked


def _is_revoked(_header: dict[str, Any], claims: dict[str, Any]) -> bool:
    return _revoked(principal_from_claims(claims, _settings()))


def _problem_loader(code: str, detail: str):
    from app.errors import api_error_response

    def loader(*_args: Any) -> Any:
        return api_error_response(Unauthorized(code, detail))

    return loader


def init_token_policy(jwt: JWTManager, app: Flask) -> None:
    settings: Settings = app.extensions["taskgate.settings"]
    app.config.update(
        JWT_TOKEN_LOCATION=["headers"],
        JWT_HEADER_NAME="Authorization",
        JWT_HEADER_TYPE="Bearer",
        JWT_SECRET_KEY=settings.secret,
        JWT_ALGORITHM="HS256",
        JWT_DECODE_ALGORITHMS=list(settings.algorithms),
        JWT_DECODE_LEEWAY=settings.leeway_seconds,
        JWT_DECODE_ISSUER=settings.issuer,
        JWT_DECODE_AUDIENCE=settings.audience,
        JWT_IDENTITY_CLAIM=settings.user_claim,
        JWT_VERIFY_SUB=True,
    )
    jwt.init_app(app)
    app.extensions["taskgate.verified_tokens"] = VerifiedTokens()
    jwt.decode_key_loader(_decode_key)
    jwt.token_in_blocklist_loader(_is_revoked)
    # Routes go through authenticate(); these keep @jwt_required (should anyone use it)
    # on the same problem+json contract instead of the library's 422 defaults.
    jwt.unauthorized_loader(_problem_loader("missing_token", "No bearer token was sent."))
    jwt.invalid_token_loader(_problem_loader("invalid_token", "The token is not valid."))
    jwt.expired_token_loader(_problem_loader("token_expired", "The token has expired."))
    jwt.revoked_token_loader(_problem_loader("token_revoked", "The token has been revoked."))
    jwt.needs_fresh_token_loader(_problem_loader("invalid_token", "The token is not valid."))
    jwt.token_verification_failed_loader(_problem_loader("invalid_token", "The token is not valid."))
    jwt.user_lookup_error_loader(_problem_loader("invalid_token", "The token is not valid."))


# --- what routes use ----------------------------------------------------------------


SIMPLE_BEARER = re.compile(r"Bearer ([A-Za-z0-9_=-]+\.[A-Za-z0-9_=-]+\.[A-Za-z0-9_=-]*)")


class VerifiedTokens:
    """Tokens this worker has fully verified, so a repeat skips parsing and signature
    verification. Never a shortcut past a check that can change: expiry and maximum age
    are checked again on every use, revocation is checked on every request, and a token
    signed with a JWKS key is honoured only while the key set (refreshed as for any
    verification) still publishes that key unchanged. Bounded (LRU), and an entry lives at
    most `ttl` seconds."""

    def __init__(self, size: int = 4096, ttl: float = 300.0) -> None:
        self.size, self.ttl = size, ttl
        self._entries: OrderedDict[str, tuple[Principal, float, dict[str, Any] | None]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, token: str, settings: Settings, now: float,
            key_set: JwksKeySet | None = None) -> Principal | None:
        with self._lock:
            entry = self._entries.get(token)
            if entry is None:
                return None
            principal, cached_at, jwk = entry
            if now - cached_at > self.ttl:
                del self._entries[token]
                return None
            self._entries.move_to_end(token)
        if jwk is not None and (key_set is None or key_set.current_jwk(jwk["kid"]) != jwk):
            with self._lock:  # the key was withdrawn or replaced: verify afresh (and fail)
                self._entries.pop(token, None)
            return None
        if now > principal.exp + settings.leeway_seconds:
            raise Unauthorized("token_expired", "The token has expired.")
        if now - principal.iat > settings.max_age_seconds:
            raise TokenRejected("The token is older than this API accepts.", "token_expired")
        return principal

    def put(self, token: str, principal: Principal, now: float, jwk: dict[str, Any] | None = None) -> None:
        """`jwk`: the JWKS key that verified the token; None when it was the shared secret."""
        with self._lock:
            self._entries[token] = (principal, now, jwk)
            if len(self._entries) > self.size:
                self._entries.popitem(last=False)


def authenticate() -> Principal:
    """Verify the request's bearer token or raise a 401/503 ApiError."""
    header = request.headers.get("Authorization", "")
    match = SIMPLE_BEARER.fullmatch(header)
    app = current_app._get_current_object()
    cache: VerifiedTokens = app.extensions["taskgate.verified_tokens"]
    key_set = app.extensions.get("taskgate.jwks")
    if match is not None:
        now = time.time()
        principal = cache.get(match[1], app.extensions["taskgate.settings"], now, key_set)
        if principal is not None:
            if _revoked(principal, app.extensions):
                raise Unauthorized("token_revoked", "The token has been revoked.")
            return principal
    principal = _verify()
    if match is not None:
        token_header = get_jwt_header()
        jwk = None
        if token_header.get("alg") not in SYMMETRIC_ALGORITHMS:
            jwk = key_set.current_jwk(token_header["kid"])
            if jwk is None:  # withdrawn meanwhile: verified, but not worth remembering
                return principal
        cache.put(match[1], principal, time.time(), jwk)
    return principal


def _verify() -> Principal:
    """The full check through flask-jwt-extended and the hooks above."""
    try:
        verify_jwt_in_request()
    except ApiError:
        raise
    except NoAuthorizationError:
        raise Unauthorized("missing_token", "No bearer token was sent.") from None
    except ExpiredSignatureError:
        raise Unauthorized("token_expired", "The token has expired.") from None
    except RevokedTokenError:
        raise Unauthorized("token_revoked", "The token has been revoked.") from None
    except Exception:  # noqa: BLE001 - see below: every token failure is a 401
        # Any failure to read a token (bad base64, nested JSON, huge numbers, bad
        # UTF-8, a wrong header) is the client's token being invalid, never a 500.
        raise Unauthorized("invalid_token", "The token is not valid.") from None
    return g.principal


def decode_for_revocation(token: str) -> dict[str, Any]:
    """The claims of a token this service would accept (expired or not), for revoking it."""
    from flask_jwt_extended import decode_token

    from app.errors import ValidationFailed

    try:
        return decode_token(token.strip(), allow_expired=True)
    except ApiError as error:
        if error.status != 401:
            raise
        cause: Exception = error
    except Exception as error:  # noqa: BLE001 - any decoding failure means "not our token"
        cause = error
    raise ValidationFailed(
        "The token is not one this service accepts, so there is nothing to revoke.",
        [{"field": "token", "message": "not a valid token for this service", "type": "value_error"}],
    ) from cause


def require_admin(principal: Principal) -> None:
    if not principal.is_admin:
        raise Forbidden("This needs an administrator.")


def require_path_user(principal: Principal, path_user_id: str) -> None:
    if path_user_id != principal.user_id:
        raise Forbidden("The user in the path is not the user of the token.")
