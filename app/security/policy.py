"""The whole token policy for a token not seen before (ARCHITECTURE.md, "A request's path"):
an OAuth access token (`typ: at+jwt`, app.security.oauth_tokens) or a first-party token
(app.security.tokens), the one never passing for the other."""

from __future__ import annotations

import time
from typing import Any

from app.config import Settings
from app.errors import ApiError, ValidationFailed
from app.security import oauth_tokens, tokens
from app.security.jwks import JwksKeySet
from app.security.tokens import Principal, is_oauth_token, read_segments


def verify(token: str, settings: Settings, keys: JwksKeySet | None, now: float | None = None) -> Principal:
    signed = read_segments(token)
    if is_oauth_token(signed):
        return oauth_tokens.verify(token, signed, settings, keys, now)
    return tokens.verify(token, signed, settings, now)


def claims_for_revocation(token: str, settings: Settings, keys: JwksKeySet | None) -> dict[str, Any]:
    """The claims, as signed, of a token this service would accept (expired or not), for an
    admin revoking it; anything else is a 422 (there is nothing to revoke)."""
    token = token.strip()
    try:
        signed = read_segments(token)
        if is_oauth_token(signed) and settings.oauth_resource_url is not None:
            oauth_tokens.check_oauth_claims(signed, settings, time.time())
            oauth_tokens.verify_signature(token, signed, settings, keys, allow_expired=True)
        else:
            tokens.check_access_token(signed)
            tokens.check_claims(signed.claims, settings)
            tokens.verify_signature(token, signed, allow_expired=True)
    except ApiError as error:
        if error.status != 401:
            raise
        raise ValidationFailed(
            "The token is not one this service accepts, so there is nothing to revoke.",
            [{"field": "token", "message": "not a valid token for this service", "type": "value_error"}],
        ) from error
    return signed.claims
