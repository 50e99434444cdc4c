"""Administration: revoke a user's tokens, a session or a token; read the audit log."""

from __future__ import annotations

from flask import Blueprint, request
from sqlalchemy import func, select

from app.api import endpoint, json_response
from app.errors import ValidationFailed
from app.models import Revocation
from app.schemas import (
    ClientPath,
    ClientRevoked,
    RevocationListQuery,
    RevocationRecord,
    Revoked,
    RevokeRequest,
    RevokeTokenRequest,
    SessionPath,
    UserPath,
    UserRevoked,
)
from app.security.policy import claims_for_revocation
from app.security.tokens import Principal, token_digest
from app.services import services

bp = Blueprint("admin", __name__)
RECORD_FIELDS = tuple(RevocationRecord.model_fields)  # the columns the audit list selects, in order


def _actor(principal: Principal) -> str:
    return f"admin:{principal.user_id}"


# `id`: any id a token can carry, slashes included (validated by the path model);
# merge_slashes=False so that an id with "//" reaches the view as it is.
@bp.post("/api/v1/admin/users/<id:user_id>/revoke", merge_slashes=False)
@endpoint(summary="Revoke every token of a user issued up to now", tag="admin", auth="admin", path=UserPath,
          body=RevokeRequest, body_required=False, response=UserRevoked)
def revoke_user(principal: Principal, path: UserPath, body: RevokeRequest):
    record = services().store.revoke_user(path.user_id, _actor(principal), body.reason)
    return json_response({"user_id": path.user_id, "revoked_before": record.cutoff})


@bp.post("/api/v1/admin/sessions/<id:sid>/revoke", merge_slashes=False)
@endpoint(summary="Revoke every token of a session (sid claim)", tag="admin", auth="admin", path=SessionPath,
          body=RevokeRequest, body_required=False, response=Revoked)
def revoke_session(principal: Principal, path: SessionPath, body: RevokeRequest):
    services().store.revoke_session(path.sid, _actor(principal), body.reason)
    return json_response({"revoked": "session", "target": path.sid})


@bp.post("/api/v1/admin/clients/<id:client_id>/revoke", merge_slashes=False)
@endpoint(summary="Revoke every OAuth access token of a third-party app issued up to now, for every user",
          tag="admin", auth="admin", path=ClientPath, body=RevokeRequest, body_required=False, response=ClientRevoked)
def revoke_client(principal: Principal, path: ClientPath, body: RevokeRequest):
    record = services().store.revoke_client(path.client_id, _actor(principal), body.reason)
    return json_response({"client_id": path.client_id, "revoked_before": record.cutoff})


@bp.post("/api/v1/admin/tokens/revoke")
@endpoint(summary="Revoke one token, by jti or by the token itself", tag="admin", auth="admin",
          body=RevokeTokenRequest, response=Revoked)
def revoke_token(principal: Principal, body: RevokeTokenRequest):
    store = services().store
    if body.jti is not None:
        record = store.revoke_jti(body.jti, _actor(principal), body.reason)
    else:
        claims = _readable(body.token)
        record = store.revoke_token(claims, token_digest(claims), _actor(principal), body.reason)
    return json_response({"revoked": record.kind, "target": record.target})


def _readable(token: str) -> dict:
    """The claims of a token this service accepts; else a 422, counted like a failed authentication,
    so that an admin token cannot serve as an unlimited oracle of which tokens are valid."""
    found = services()
    try:
        return claims_for_revocation(token, found.settings, found.keys)
    except ValidationFailed:
        if found.rate_limits is not None:
            found.rate_limits.authentication_failed(request.remote_addr)
        raise


@bp.get("/api/v1/admin/revocations")
@endpoint(summary="The revocation audit log, newest first", tag="admin", auth="admin",
          query=RevocationListQuery, response=list[RevocationRecord],
          headers={"X-Total-Count": "Number of records matching the filter"})
def list_revocations(principal: Principal, query: RevocationListQuery):
    statement = select(*(getattr(Revocation, name) for name in RECORD_FIELDS),
                       func.count().over().label("total"))
    if query.user_id is not None:
        statement = statement.where(Revocation.user_id == query.user_id)
    if query.client_id is not None:
        statement = statement.where(Revocation.client_id == query.client_id)
    rows = services().database.rows(statement.order_by(Revocation.created_at.desc(), Revocation.id.desc())
                                    .limit(query.limit).offset(query.offset))
    if rows:
        total = rows[0][-1]
    else:
        total = services().database.rows(statement.with_only_columns(func.count()))[0][0] if query.offset else 0
    records = [dict(zip(RECORD_FIELDS, row, strict=False)) for row in rows]  # rows are read by position
    return json_response(records, headers={"X-Total-Count": str(total)})
