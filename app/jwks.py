"""Better Auth's public keys (JWKS mode, DESIGN §2).

Keys come only from the configured JWKS_URL, never from a token's `jku`, `x5u` or `jwk`
header. They are fetched lazily, cached, refreshed after JWKS_CACHE_SECONDS, and fetched
again at most once per JWKS_MIN_REFETCH_SECONDS when an unknown `kid` arrives (so key
rotation just works and a flood of random kids is not a flood of fetches). When the
endpoint is down, cached keys keep working; with no usable key the answer is 503.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.request
from typing import Any

from flask import Flask
from jwt import PyJWK

from app.config import Settings
from app.errors import ServiceUnavailable
from app.observability import BACKEND_ERRORS

log = logging.getLogger(__name__)
EXTENSION_KEY = "taskgate.jwks"
MAX_JWKS_BYTES = 1 << 20

# The key family (and curve) each accepted algorithm must be verified with. Symmetric
# ("oct") keys from a JWKS are never used: that would reopen HMAC/public-key confusion.
KEY_TYPES = {
    "EdDSA": {("OKP", "Ed25519"), ("OKP", "Ed448")},
    "ES256": {("EC", "P-256")},
    "ES512": {("EC", "P-521")},
    "PS256": {("RSA", None)},
    "RS256": {("RSA", None)},
}


class JwksKeySet:
    def __init__(self, url: str, *, timeout: float, cache_seconds: float, min_refetch_seconds: float) -> None:
        self.url = url
        self.timeout = timeout
        self.cache_seconds = cache_seconds
        self.min_refetch_seconds = min_refetch_seconds
        self._keys: dict[str, tuple[dict[str, Any], Any]] = {}
        self._loaded_at: float | None = None  # last successful fetch
        self._failed_at: float | None = None  # last failed fetch, if the last one failed
        self._kid_refetch_at: float | None = None  # last refetch caused by an unknown kid
        self._lock = threading.Lock()
        self.fetches = 0

    def key_for(self, header: dict[str, Any]) -> Any:
        """The public key that must verify a token with this (unverified) header."""
        from app.auth import TokenRejected

        kid, alg = header.get("kid"), header.get("alg")
        if not isinstance(kid, str) or not 0 < len(kid) <= 256:
            raise TokenRejected("The token has no usable key id (kid).")
        self._refresh(stale_only=True)
        entry = self._keys.get(kid)
        if entry is None:
            self._refresh(stale_only=False)
            entry = self._keys.get(kid)
        if entry is None:
            if not self._keys:
                raise ServiceUnavailable("The signing keys cannot be fetched; try again shortly.")
            raise TokenRejected("The token was signed with an unknown key.")
        jwk, key = entry
        if (jwk.get("kty"), jwk.get("crv")) not in KEY_TYPES.get(alg, ()) or jwk.get("alg", alg) != alg:
            raise TokenRejected("The token's algorithm does not match its key.")
        return key

    def current_jwk(self, kid: str) -> dict[str, Any] | None:
        """The key `kid` as currently published (None once withdrawn), with the key set
        refreshed when stale exactly as for a verification. A token verified earlier and
        cached (app.auth.VerifiedTokens) is honoured only while its key is unchanged."""
        self._refresh(stale_only=True)
        entry = self._keys.get(kid)
        return None if entry is None else entry[0]

    def _refresh(self, stale_only: bool) -> None:
        """stale_only: load if never loaded or older than the cache time (after a failed
        attempt, not again before the cooldown). Otherwise (an unknown kid): refetch at
        most once per cooldown, however many unknown kids arrive."""
        with self._lock:  # one fetch at a time; the others wait for its result
            now = time.monotonic()
            if stale_only:
                fresh = self._loaded_at is not None and now - self._loaded_at < self.cache_seconds
                if fresh or (self._failed_at is not None and now - self._failed_at < self.min_refetch_seconds):
                    return
            else:
                if self._kid_refetch_at is not None and now - self._kid_refetch_at < self.min_refetch_seconds:
                    return
                self._kid_refetch_at = now
            try:
                self._keys = self._fetch()
                self._loaded_at, self._failed_at = time.monotonic(), None
            except Exception as error:  # noqa: BLE001 - keep the cached keys on any failure
                self._failed_at = time.monotonic()
                BACKEND_ERRORS.labels("jwks").inc()
                log.warning("JWKS fetch failed; keeping %d cached keys", len(self._keys),
                            extra={"fields": {"error": type(error).__name__}})

    def _fetch(self) -> dict[str, tuple[dict[str, Any], Any]]:
        self.fetches += 1
        request = urllib.request.Request(self.url, headers={"Accept": "application/json"})  # noqa: S310
        with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310 - URL from config
            document = json.loads(response.read(MAX_JWKS_BYTES + 1)[:MAX_JWKS_BYTES])
        keys: dict[str, tuple[dict[str, Any], Any]] = {}
        for jwk in document.get("keys", []):
            if not isinstance(jwk, dict) or jwk.get("kty") not in ("OKP", "EC", "RSA"):
                continue
            if jwk.get("use", "sig") != "sig" or not isinstance(jwk.get("kid"), str):
                continue
            try:
                keys[jwk["kid"]] = (jwk, PyJWK(jwk).key)
            except Exception:  # noqa: BLE001, S112 - an unusable key is skipped, not fatal
                continue
        log.info("JWKS loaded", extra={"fields": {"keys": len(keys)}})
        return keys


def init_jwks(app: Flask) -> None:
    settings: Settings = app.extensions["taskgate.settings"]
    if settings.jwks_url:
        app.extensions[EXTENSION_KEY] = JwksKeySet(
            settings.jwks_url,
            timeout=settings.jwks_timeout_seconds,
            cache_seconds=settings.jwks_cache_seconds,
            min_refetch_seconds=settings.jwks_min_refetch_seconds,
        )
