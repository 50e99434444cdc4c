"""Administration: revoke a user's tokens, a session or a token; read the audit log."""

from __future__ import annotations

from flask import Blueprint
from sqlalchemy import func, select

from app.api import endpoint, json_response
from app.auth import Principal, decode_for_revocation
from app.extensions import db
from app.models import Revocation
from app.revocation import revocations
from app.schemas import RevocationListQuery, RevocationRecord, Revoked, RevokeRequest, RevokeTokenRequest, UserRevoked

bp = Blueprint("admin", __name__)


def _actor(principal: Principal) -> str:
    return f"admin:{principal.user_id}"


@bp.post("/api/v1/admin/users/<user_id>/revoke")
@endpoint(summary="Revoke every token of a user issued up to now", tag="admin", auth="admin",
          body=RevokeRequest, body_required=False, response=UserRevoked)
def revoke_user(principal: Principal, user_id: str, body: RevokeRequest):
    record = revocations().revoke_user(db.session, user_id, _actor(principal), body.reason)
    db.session.commit()
    return json_response({"user_id": user_id, "revoked_before": record.created_at})


@bp.post("/api/v1/admin/sessions/<sid>/revoke")
@endpoint(summary="Revoke every token of a session (sid claim)", tag="admin", auth="admin",
          body=RevokeRequest, body_required=False, response=Revoked)
def revoke_session(principal: Principal, sid: str, body: RevokeRequest):
    revocations().revoke_session(db.session, sid, _actor(principal), body.reason)
    db.session.commit()
    return json_response({"revoked": "session", "target": sid})


@bp.post("/api/v1/admin/tokens/revoke")
@endpoint(summary="Revoke one token, by jti or by the token itself", tag="admin", auth="admin",
          body=RevokeTokenRequest, response=Revoked)
def revoke_token(principal: Principal, body: RevokeTokenRequest):
    store = revocations()
    if body.jti is not None:
        record = store.revoke_jti(db.session, body.jti, _actor(principal), body.reason)
    else:
        claims = decode_for_revocation(body.token)
        record = store.revoke_token(db.session, claims, _actor(principal), body.reason)
    db.session.commit()
    return json_response({"revoked": record.kind, "target": record.target})


@bp.get("/api/v1/admin/revocations")
@endpoint(summary="The revocation audit log, newest first", tag="admin", auth="admin",
          query=RevocationListQuery, response=list[RevocationRecord],
          headers={"X-Total-Count": "Number of records matching the filter"})
def list_revocations(principal: Principal, query: RevocationListQuery):
    statement = select(Revocation)
    if query.user_id is not None:
        statement = statement.where(Revocation.user_id == query.user_id)
    total = db.session.scalar(select(func.count()).select_from(statement.subquery())) or 0
    rows = db.session.scalars(statement.order_by(Revocation.created_at.desc(), Revocation.id.desc())
                              .limit(query.limit).offset(query.offset))
    records = [RevocationRecord.model_validate(row, from_attributes=True).model_dump() for row in rows]
    return json_response(records, headers={"X-Total-Count": str(total)})
