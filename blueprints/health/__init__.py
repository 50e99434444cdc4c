"""Liveness and readiness for load balancers and orchestrators."""

from __future__ import annotations

import logging

from flask import Blueprint

from app.api import endpoint, json_response
from app.schemas import Status
from app.services import services

bp = Blueprint("health", __name__)
log = logging.getLogger(__name__)


@bp.get("/healthz")
@endpoint(summary="Liveness: 200 while the process runs", tag="health", auth=None, response=Status,
          rate_limited=False)
def healthz():
    return json_response({"status": "ok"})


def _check(name: str, probe) -> str:
    try:
        probe()
        return "ok"
    except Exception as error:  # noqa: BLE001 - any failure means "not ready"; the reason is logged
        log.warning("readiness check %s failed: %s", name, type(error).__name__)
        return "unavailable"


# Rate limited per IP: each call costs a database query and a Redis command.
@bp.get("/readyz")
@endpoint(summary="Readiness: 200 when the database and Redis answer", tag="health", auth=None,
          response=Status, errors=(429,))
def readyz():
    found = services()
    checks = {"database": _check("database", found.database.ping), "redis": _check("redis", found.store.ping)}
    ready = all(value == "ok" for value in checks.values())
    body = {"status": "ready" if ready else "unavailable", "checks": checks}
    return json_response(body, 200 if ready else 503)
