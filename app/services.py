"""The app's settings and services, behind one typed accessor, `services()`
(ARCHITECTURE.md, "What each module owns")."""

from __future__ import annotations

from dataclasses import dataclass

from flask import Flask, current_app

from app.config import Settings
from app.db import Database
from app.rate_limits import RateLimits
from app.revocation.store import RevocationStore
from app.security.dpop import ProofReplays
from app.security.jwks import JwksKeySet
from app.security.verified_tokens import VerifiedTokens

EXTENSION_KEY = "taskgate"


@dataclass(frozen=True)
class Services:
    settings: Settings
    database: Database
    store: RevocationStore
    keys: JwksKeySet | None  # JWKS mode only
    verified_tokens: VerifiedTokens
    rate_limits: RateLimits | None  # None when RATE_LIMITS_ENABLED is off
    proof_replays: ProofReplays | None = None  # DPoP proofs' jtis; None without OAuth tokens


def services(app: Flask | None = None) -> Services:
    """The current (or given) app's services."""
    return (app or current_app).extensions[EXTENSION_KEY]


def install(app: Flask, found: Services) -> None:
    app.extensions[EXTENSION_KEY] = found
