"""DPoP (RFC 9449): a sender-constrained OAuth access token is accepted only with a proof, made
for this request, of the key it is bound to, each proof used once
(ARCHITECTURE.md, "OAuth access tokens")."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import string
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import jwt as pyjwt

from app.errors import DPOP_ALGORITHMS, TokenRejected
from app.redis_client import RedisClient, fail_closed
from app.security.tokens import is_identifier, is_number, read_segments

THUMBPRINT_MEMBERS = {"EC": ("crv", "kty", "x", "y"), "OKP": ("crv", "kty", "x"), "RSA": ("e", "kty", "n")}
PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
DEFAULT_PORTS = {"http": 80, "https": 443}
PERCENT_ENCODED = re.compile(r"%([0-9A-Fa-f]{2})")
UNRESERVED = frozenset(string.ascii_letters + string.digits + "-._~")


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def thumbprint(jwk: dict[str, Any]) -> str:
    """RFC 7638: SHA-256 of the key's required members, in order, as compact JSON."""
    members = THUMBPRINT_MEMBERS.get(jwk.get("kty"))  # type: ignore[arg-type]
    if members is None or not all(isinstance(jwk.get(name), str) for name in members):
        raise TokenRejected("The DPoP proof's key is not a public key this API can use.", "invalid_dpop_proof")
    canonical = json.dumps({name: jwk[name] for name in members}, separators=(",", ":"), sort_keys=True)
    return b64url(hashlib.sha256(canonical.encode()).digest())


def _percent(match: re.Match[str]) -> str:
    character = chr(int(match[1], 16))
    return character if character in UNRESERVED else f"%{match[1].upper()}"


def normalized_url(url: object) -> str | None:
    """An http(s) URL as RFC 9449 §4.3 compares `htu`: RFC 3986's syntax- and scheme-based
    normalization (scheme and host in lower case, no default port, an empty path as "/",
    percent-encodings in upper case, unreserved characters decoded), without query or fragment.
    None: not an absolute http(s) URL, or one with user information."""
    if not isinstance(url, str):
        return None
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    scheme, host = parts.scheme.lower(), parts.hostname
    if scheme not in DEFAULT_PORTS or not host or parts.username is not None:  # any "@" gives a username
        return None
    host = f"[{host}]" if ":" in host else host
    netloc = host if port in (None, DEFAULT_PORTS[scheme]) else f"{host}:{port}"
    return f"{scheme}://{netloc}{PERCENT_ENCODED.sub(_percent, parts.path or '/')}"


def proof_error(detail: str) -> TokenRejected:
    return TokenRejected(detail, "invalid_dpop_proof")


@dataclass(frozen=True)
class Request:
    """What a proof is about: the method and the URL (no query or fragment) of this request."""

    method: str
    url: str


def verify_signature(proof: str, jwk: dict[str, Any], alg: str) -> None:
    """The proof's signature by the key it carries (and `exp`, `nbf` if it has them); its `iat`
    is left to check_iat, whose window PyJWT's would cut short on the future side."""
    try:
        pyjwt.decode(proof, pyjwt.PyJWK(jwk).key, algorithms=[alg], options={"verify_aud": False,
                                                                             "verify_iat": False})
    except (pyjwt.ExpiredSignatureError, pyjwt.ImmatureSignatureError):
        raise proof_error("The DPoP proof is not valid at this time (its exp or nbf).") from None
    except Exception:  # noqa: BLE001 - any failure to verify the proof is the client's
        raise proof_error("The DPoP proof's signature is not valid.") from None


def check_iat(iat: float, now: float, max_age: int) -> None:
    """RFC 9449 §11.1: a proof is good while its `iat` is within `max_age` (DPOP_MAX_AGE_SECONDS)
    of this server's clock, on either side, so a client whose clock runs ahead is not refused."""
    if abs(now - iat) > max_age:
        raise proof_error(f"The DPoP proof's iat is more than {max_age} s from this server's clock "
                          "(too old, or from the future).")


def check_proof(proof: str, request: Request, access_token: str, jkt: str, now: float, max_age: int) -> str:
    """§4.3 for one proof; returns its `jti` (the caller makes sure it is used only once)."""
    try:
        signed = read_segments(proof)
    except TokenRejected:  # a server joins two DPoP headers into one: "proof, proof"
        raise proof_error("The DPoP header is not one signed JWT.") from None
    header, claims = signed.header, signed.claims
    jwk = header.get("jwk")
    if str(header.get("typ", "")).lower() != "dpop+jwt":
        raise proof_error("The DPoP proof must have typ dpop+jwt.")
    if header.get("alg") not in DPOP_ALGORITHMS or not isinstance(jwk, dict) or PRIVATE_MEMBERS & jwk.keys():
        raise proof_error("The DPoP proof must be signed with an asymmetric key it carries, public only.")
    if thumbprint(jwk) != jkt:
        raise proof_error("The DPoP proof is signed with another key than the token is bound to.")
    verify_signature(proof, jwk, header["alg"])
    if not is_identifier(claims.get("jti")) or not is_number(claims.get("iat")):
        raise proof_error("The DPoP proof needs a jti and an iat.")
    check_iat(claims["iat"], now, max_age)
    htu = normalized_url(claims.get("htu"))
    if claims.get("htm") != request.method or htu is None or htu != normalized_url(request.url):
        raise proof_error("The DPoP proof was made for another request (htm, htu).")
    if claims.get("ath") != b64url(hashlib.sha256(access_token.encode()).digest()):
        raise proof_error("The DPoP proof was made for another access token (ath).")
    return claims["jti"]


class ProofReplays:
    """A proof's `jti` is accepted once (per bound key) while a proof is good: SET NX in Redis,
    shared by every instance; Redis unreachable is a 503, as for revocations."""

    def __init__(self, client: RedisClient, prefix: str, max_age: int) -> None:
        self.client, self.prefix, self.max_age = client, prefix, max_age

    def first_use(self, jkt: str, jti: str) -> None:
        key = f"{self.prefix}dpop:{jkt}:{hashlib.sha256(jti.encode()).hexdigest()[:32]}"
        with fail_closed():
            fresh = self.client.client.set(key, "1", nx=True, ex=2 * self.max_age + 1)
        if not fresh:
            raise proof_error("The DPoP proof was used before.")
