"""What operators see: a request id, one JSON access-log line per request, metrics, and the
response headers a JSON API needs (ARCHITECTURE.md, "Observability")."""

from __future__ import annotations

import logging
import os
import re
import time
from typing import Any

from flask import Flask, Request, Response, g, request

from app.metrics import LATENCY, REQUESTS, TOKEN_FAILURES, labelled

access_log = logging.getLogger("taskgate.access")
REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")

KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
def _new_request_id() -> str:
    return os.urandom(16).hex()  # 32 hex digits, as uuid4().hex, without building a UUID


def _start() -> None:
    state = g._get_current_object()  # one context lookup, not one per attribute
    state.started = time.perf_counter()
    incoming = request.headers.get("X-Request-ID", "")
    state.request_id = incoming if REQUEST_ID.match(incoming) else _new_request_id()


def _finish(response: Response) -> Response:
    req, state = request._get_current_object(), g._get_current_object()
    duration = time.perf_counter() - getattr(state, "started", time.perf_counter())
    rule = req.url_rule
    route = rule.rule if rule is not None else "<unmatched>"
    user_id = getattr(state, "user_id", None)  # set by app.api once the caller is authenticated
    status = response.status_code
    method = req.method if req.method in KNOWN_METHODS else "OTHER"  # clients pick it: bound it
    labelled(REQUESTS, method, route, str(status)).inc()
    labelled(LATENCY, method, route).observe(duration)
    if status == 401 and response.mimetype == "application/problem+json":
        code = (response.get_json(silent=True) or {}).get("code", "unknown")
        labelled(TOKEN_FAILURES, code).inc()
    request_id = getattr(state, "request_id", None) or _new_request_id()
    _security_headers(response, req, user_id is not None, request_id)
    if access_log.isEnabledFor(logging.INFO):
        _log_access({
            "method": req.method,
            "path": route,  # the template, never the raw path (ids) nor the query (no tokens)
            "status": status,
            "duration_ms": round(duration * 1000, 3),
            "user_id": user_id,
            "request_id": request_id,
            "remote_addr": req.remote_addr,
        })
    return response


def _log_access(fields: dict[str, Any]) -> None:
    """`access_log.info("request", extra=...)` without the search up the stack for the
    caller's file and line, which the JSON line does not carry (a third of the cost)."""
    access_log.handle(access_log.makeRecord(access_log.name, logging.INFO, "(unknown file)", 0, "request",
                                            None, None, extra={"fields": fields}))


# Set on every response unless the route set its own (one pass over the headers: werkzeug's
# setdefault scans them once per call).
SECURITY_HEADERS = (
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "no-referrer"),
    ("Content-Security-Policy", "default-src 'none'; frame-ancestors 'none'"),
)


def _security_headers(response: Response, req: Request, authenticated: bool, request_id: str) -> None:
    headers = response.headers
    present = {name.lower(): value for name, value in headers.items()}
    missing = [(name, value) for name, value in SECURITY_HEADERS if name.lower() not in present]

    def overrule(name: str, value: str) -> None:  # whatever the route set
        if name.lower() in present:
            headers[name] = value
        else:
            missing.append((name, value))

    overrule("X-Request-ID", request_id)
    vary = present.get("vary")
    if vary is None:
        missing.append(("Vary", "Origin"))  # CORS headers depend on it; keep shared caches honest
    elif "origin" not in {part.strip().lower() for part in vary.split(",")}:
        headers["Vary"] = f"{vary}, Origin"
    if req.is_secure and "strict-transport-security" not in present:  # HTTPS, directly or via a trusted proxy
        missing.append(("Strict-Transport-Security", "max-age=63072000; includeSubDomains"))
    if authenticated or req.headers.get("Authorization") or response.status_code >= 400:
        overrule("Cache-Control", "no-store")
    headers.extend(missing)


def init_observability(app: Flask) -> None:
    app.before_request(_start)
    app.after_request(_finish)
