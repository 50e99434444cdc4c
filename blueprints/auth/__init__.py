"""Who am I, and logout."""

from __future__ import annotations

from datetime import UTC, datetime

from flask import Blueprint, Response

from app.api import endpoint, json_response
from app.schemas import LogoutRequest, Me
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
        },
    })


# Not counted against the user's rate limit: a user over it can always log out.
@bp.post("/api/v1/auth/logout")
@endpoint(summary="Revoke this token, or with everywhere=true every token of the caller", tag="auth",
          body=LogoutRequest, body_required=False, status=204, rate_limited=False)
def logout(principal: Principal, body: LogoutRequest):
    store, actor = services().store, f"user:{principal.user_id}"
    if body.everywhere:
        store.revoke_user(principal.user_id, actor, "logout everywhere")
    else:
        store.revoke_token(principal.claims, actor, "logout")
    return Response(status=204)
