"""Who am I, logout, and the back-channel logout receiver."""

from __future__ import annotations

from datetime import UTC, datetime

from flask import Blueprint, Response, request

from app.api import endpoint, json_response, parse_form
from app.errors import InvalidRequest, OAuthTokenRefused
from app.schemas import BackchannelLogoutForm, LogoutRequest, Me
from app.security import logout_tokens
from app.security.tokens import Principal
from app.services import services

bp = Blueprint("auth", __name__)


def _timestamp(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, UTC)


@bp.get("/api/v1/auth/me")
@endpoint(summary="The caller, as the token says", tag="auth", response=Me)
def me(principal: Principal):
    return json_response({
        "user_id": principal.user_id,
        "email": principal.email,
        "name": principal.name,
        "role": principal.role,
        "is_admin": principal.is_admin,
        "token": {
            "jti": principal.jti,
            "sid": principal.sid,
            "iat": _timestamp(principal.iat),
            "exp": _timestamp(principal.exp),
            "client_id": principal.client_id,
            "scope": " ".join(sorted(principal.scopes)) if principal.scopes is not None else None,
        },
    })


# Not counted against the user's rate limit: a user over it can always log out. A third-party
# app's OAuth token signs out only itself: never its user everywhere (ARCHITECTURE.md, "OAuth
# access tokens").
@bp.post("/api/v1/auth/logout")
@endpoint(summary="Revoke this token, or with everywhere=true every token of the caller (a first-party token "
          "only: an OAuth access token can sign out only itself, 403)", tag="auth",
          body=LogoutRequest, body_required=False, status=204, errors=(403,), rate_limited=False)
def logout(principal: Principal, body: LogoutRequest):
    store, actor = services().store, f"user:{principal.user_id}"
    if body.everywhere and principal.oauth:
        raise OAuthTokenRefused("An OAuth access token can sign out only itself, never its user everywhere.",
                                "an OAuth access token signs out only itself", dpop=principal.jkt is not None)
    if body.everywhere:
        store.revoke_user(principal.user_id, actor, "logout everywhere")
    else:
        store.revoke_token(principal.claims, principal.token_digest, actor, "logout")
    return Response(status=204)


# OpenID Connect Back-Channel Logout 1.0: authenticated by the logout token itself. Failures
# count against the IP's failed-authentication limit; a replayed jti is a 200 with no further
# effect (its revocation, cut off at the token's own iat, is already there).
@bp.post("/api/v1/auth/backchannel-logout")
@endpoint(summary="Back-channel logout: revoke the session (sid) or the user (sub) a logout token names",
          tag="auth", auth=None, rate_limited=False, form=BackchannelLogoutForm, status=200, errors=(400, 429),
          headers={"Cache-Control": "no-store"})
def backchannel_logout():
    found = services()
    try:
        form = parse_form(BackchannelLogoutForm)
        logout = logout_tokens.validate(form.logout_token, found.settings, found.keys)
    except (InvalidRequest, logout_tokens.InvalidLogoutToken) as error:
        if found.rate_limits is not None:
            found.rate_limits.authentication_failed(request.remote_addr)
        raise error if isinstance(error, InvalidRequest) else InvalidRequest(str(error)) from None
    found.store.log_out(logout.issuer, logout.jti, logout.sub, logout.sid, logout.revoked_before,
                        ttl=found.settings.logout_token_max_age_seconds + found.settings.leeway_seconds,
                        client_id=logout.client_id)
    return Response(status=200, headers={"Cache-Control": "no-store"})
