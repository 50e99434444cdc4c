"""Who am I, and logout."""

from __future__ import annotations

from datetime import UTC, datetime

from flask import Blueprint

from app.api import endpoint, json_response
from app.auth import Principal
from app.schemas import Me

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
