"""Liveness and readiness for load balancers and orchestrators, and the metrics for scrapers."""

from __future__ import annotations

import hmac
import logging

from flask import Blueprint, Response, request

from app import metrics
from app.api import endpoint, json_response
from app.errors import NotFound, Unauthorized
from app.gate import admit
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


# Not an `endpoint` (Prometheus text, not JSON, and left out of the OpenAPI document).
@bp.get("/metrics")
def metrics_view() -> Response:
    """With METRICS_TOKEN set it needs `Authorization: Bearer <token>`; without, it is served in
    development and testing only (404 in production). Counted against the IP's limit."""
    found = services()
    admit(request, found, None)
    token = found.settings.metrics_token
    if token is None and found.settings.is_production:
        raise NotFound()
    if token is not None and not hmac.compare_digest(request.headers.get("Authorization", "").encode(),
                                                     f"Bearer {token}".encode()):
        raise Unauthorized("invalid_token", "/metrics needs the configured METRICS_TOKEN.")
    return Response(metrics.exposition(), mimetype=metrics.CONTENT_TYPE)
