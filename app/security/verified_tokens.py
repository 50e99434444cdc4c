"""Tokens this worker has fully verified, so a repeat skips parsing and signature checks, never a
check whose answer can change (ARCHITECTURE.md, "A request's path")."""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

from app.config import Settings
from app.security.jwks import JwksKeySet
from app.security.tokens import Principal, check_age, check_expiry


class VerifiedTokens:
    def __init__(self, size: int = 4096, ttl: float = 300.0) -> None:
        self.size, self.ttl = size, ttl
        self._entries: OrderedDict[str, tuple[Principal, float, dict[str, Any] | None]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, token: str, settings: Settings, now: float, key_set: JwksKeySet | None = None) -> Principal | None:
        """The principal of a token verified before, or None (verify it afresh)."""
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
        check_expiry(principal.exp, settings, now)
        check_age(principal.iat, settings, now)
        return principal

    def put(self, token: str, principal: Principal, now: float, jwk: dict[str, Any] | None = None) -> None:
        """`jwk`: the JWKS key that verified the token; None when it was the shared secret."""
        with self._lock:
            self._entries[token] = (principal, now, jwk)
            if len(self._entries) > self.size:
                self._entries.popitem(last=False)
