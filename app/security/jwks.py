"""Better Auth's public keys (JWKS mode, CONTRACT §2): fetched from JWKS_URL only, cached,
refreshed off the request path (ARCHITECTURE.md, "Better Auth's keys")."""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.request
from typing import Any

from jwt import PyJWK

from app.errors import ServiceUnavailable, TokenRejected
from app.metrics import BACKEND_ERRORS

log = logging.getLogger(__name__)
MAX_JWKS_BYTES = 1 << 20
CHUNK_BYTES = 16384

# The key family (and curve) each accepted algorithm must be verified with. Symmetric
# ("oct") keys from a JWKS are never used: that would reopen HMAC/public-key confusion.
KEY_TYPES = {
    "EdDSA": {("OKP", "Ed25519"), ("OKP", "Ed448")},
    "ES256": {("EC", "P-256")},
    "ES512": {("EC", "P-521")},
    "PS256": {("RSA", None)},
    "RS256": {("RSA", None)},
}
Keys = dict[str, tuple[dict[str, Any], Any]]


class FetchTooSlow(Exception):
    """The JWKS endpoint did not deliver the whole document within the timeout."""


def fetch_keys(url: str, timeout: float) -> Keys:
    """GET the JWKS, the whole exchange bounded by `timeout` (a socket timeout alone bounds
    each read: an endpoint trickling a byte at a time could hold it for ever)."""
    deadline = time.monotonic() + timeout
    request = urllib.request.Request(url, headers={"Accept": "application/json"})  # noqa: S310 - URL from config
    body = bytearray()
    with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
        while len(body) <= MAX_JWKS_BYTES:
            if time.monotonic() > deadline:
                raise FetchTooSlow(f"no complete answer within {timeout} s")
            chunk = response.read1(CHUNK_BYTES)
            if not chunk:
                break
            body += chunk
    if time.monotonic() > deadline:
        raise FetchTooSlow(f"no complete answer within {timeout} s")
    document = json.loads(bytes(body[:MAX_JWKS_BYTES]))
    keys: Keys = {}
    for jwk in document.get("keys", []) if isinstance(document, dict) else []:
        if not isinstance(jwk, dict) or jwk.get("kty") not in ("OKP", "EC", "RSA"):
            continue
        if jwk.get("use", "sig") != "sig" or not isinstance(jwk.get("kid"), str):
            continue
        try:
            keys[jwk["kid"]] = (jwk, PyJWK(jwk).key)
        except Exception:  # noqa: BLE001, S112 - an unusable key is skipped, not fatal
            continue
    return keys


class _Fetch:
    """One fetch in flight, run in its own thread; waiters give up at their own deadline."""

    def __init__(self) -> None:
        self.done = threading.Event()


class JwksKeySet:
    def __init__(self, url: str, *, timeout: float, cache_seconds: float, min_refetch_seconds: float) -> None:
        self.url = url
        self.timeout = timeout
        self.cache_seconds = cache_seconds
        self.min_refetch_seconds = min_refetch_seconds
        self.keys: Keys = {}  # replaced whole by a finished fetch, never changed in place
        self.loaded_at: float | None = None  # monotonic time of the last successful fetch
        self.failed_at: float | None = None  # the last failed fetch, if the last one failed
        self.kid_refetch_at: float | None = None  # the last fetch caused by an unknown kid
        self.fetches = 0
        self._fetch: _Fetch | None = None
        self._lock = threading.Lock()  # held only to read and swap state, never during a fetch

    def key_for(self, header: dict[str, Any]) -> Any:
        """The public key that must verify a token with this (unverified) header."""
        kid, alg = header.get("kid"), header.get("alg")
        if not isinstance(kid, str) or not 0 < len(kid) <= 256:
            raise TokenRejected("The token has no usable key id (kid).")
        entry = self._current(kid)
        if entry is None and self._may_refetch_for_unknown_kid():
            self._wait(self._start_fetch())
            entry = self.keys.get(kid)
        if entry is None:
            if not self.keys:
                raise ServiceUnavailable("The signing keys cannot be fetched; try again shortly.")
            raise TokenRejected("The token was signed with an unknown key.")
        jwk, key = entry
        if (jwk.get("kty"), jwk.get("crv")) not in KEY_TYPES.get(alg, ()) or jwk.get("alg", alg) != alg:
            raise TokenRejected("The token's algorithm does not match its key.")
        return key

    def current_jwk(self, kid: str) -> dict[str, Any] | None:
        """The key `kid` as currently published (None once withdrawn). A token verified earlier
        and cached (app.security.verified_tokens) is honoured only while it is unchanged."""
        entry = self._current(kid)
        return None if entry is None else entry[0]

    def _current(self, kid: str) -> tuple[dict[str, Any], Any] | None:
        """The key from the keys at hand: with none yet, wait for the first fetch; when they are
        stale, refresh them in the background."""
        now = time.monotonic()
        if self.loaded_at is None:
            if self.failed_at is None or now - self.failed_at >= self.min_refetch_seconds:
                self._wait(self._start_fetch())
        elif now - self.loaded_at >= self.cache_seconds and (
                self.failed_at is None or now - self.failed_at >= self.min_refetch_seconds):
            self._start_fetch()
        return self.keys.get(kid)

    def _may_refetch_for_unknown_kid(self) -> bool:
        with self._lock:
            now = time.monotonic()
            if self.kid_refetch_at is not None and now - self.kid_refetch_at < self.min_refetch_seconds:
                return False
            self.kid_refetch_at = now
            return True

    def _start_fetch(self) -> _Fetch:
        with self._lock:
            if self._fetch is None:
                self._fetch = _Fetch()
                self.fetches += 1
                threading.Thread(target=self._run_fetch, args=(self._fetch,), name="jwks-fetch", daemon=True).start()
            return self._fetch

    def _wait(self, fetch: _Fetch) -> None:
        fetch.done.wait(self.timeout)

    def _run_fetch(self, fetch: _Fetch) -> None:
        try:
            keys = fetch_keys(self.url, self.timeout)
        except Exception as error:  # noqa: BLE001 - keep the cached keys on any failure
            with self._lock:
                self.failed_at = time.monotonic()
            BACKEND_ERRORS.labels("jwks").inc()
            log.warning("JWKS fetch failed; keeping %d cached keys", len(self.keys),
                        extra={"fields": {"error": type(error).__name__}})
        else:
            with self._lock:
                self.keys, self.loaded_at, self.failed_at = keys, time.monotonic(), None
            log.info("JWKS loaded", extra={"fields": {"keys": len(keys)}})
        finally:
            with self._lock:
                self._fetch = None
            fetch.done.set()
