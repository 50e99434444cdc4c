"""One error shape everywhere: RFC 9457 problem+json with a stable `code` (CONTRACT §4)."""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

import orjson
from flask import Flask, Response
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from werkzeug.exceptions import HTTPException

from app.metrics import BACKEND_ERRORS

log = logging.getLogger(__name__)

PROBLEM_MIMETYPE = "application/problem+json"

# Werkzeug's HTTP errors a client can trigger, mapped to our codes.
HTTP_CODES = {
    400: "bad_request",
    401: "missing_token",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "rate_limited",
    503: "service_unavailable",
}
DETAILS = {
    "not_found": "The requested resource was not found.",
    "method_not_allowed": "This method is not allowed on this resource.",
    "payload_too_large": "The request body is larger than this API accepts.",
    "unsupported_media_type": "The request body must be JSON (Content-Type: application/json).",
    "bad_request": "The request could not be understood.",
    "internal_error": "An unexpected error occurred; it has been logged.",
    "service_unavailable": "A backing service is unavailable; try again shortly.",
}
# RFC 9449 §7.1: the asymmetric algorithms a DPoP proof may use (never none or a MAC), named in the challenge.
DPOP_ALGORITHMS = ("EdDSA", "ES256", "ES384", "ES512", "PS256", "RS256")
WWW_AUTHENTICATE = {
    "missing_token": 'Bearer realm="taskgate"',
    "invalid_token": 'Bearer realm="taskgate", error="invalid_token"',
    "token_expired": 'Bearer realm="taskgate", error="invalid_token", error_description="expired"',
    "token_revoked": 'Bearer realm="taskgate", error="invalid_token", error_description="revoked"',
    # RFC 9449 §7.1: a DPoP-bound token whose proof is missing or wrong.
    "invalid_dpop_proof": f'DPoP error="invalid_dpop_proof", algs="{" ".join(DPOP_ALGORITHMS)}"',
}


class ApiError(Exception):
    """An error the API reports to its client as problem+json."""

    def __init__(
        self,
        status: int,
        code: str,
        detail: str | None = None,
        *,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(detail or code)
        self.status = status
        self.code = code
        self.detail = detail or DETAILS.get(code) or HTTPStatus(status).phrase
        self.headers = headers or {}
        self.extra = extra or {}


class Unauthorized(ApiError):
    def __init__(self, code: str, detail: str) -> None:
        super().__init__(401, code, detail, headers={"WWW-Authenticate": WWW_AUTHENTICATE[code]})


class TokenRejected(Unauthorized):
    """A bearer token this API does not accept (401; `invalid_token` unless said otherwise)."""

    def __init__(self, detail: str, code: str = "invalid_token") -> None:
        super().__init__(code, detail)


class InvalidRequest(ApiError):
    """OAuth 2.0's error shape (RFC 6749 §5.2), for the endpoints an OAuth or OpenID peer calls
    (the back-channel logout receiver): a 400 whose body is {"error", "error_description"}."""

    def __init__(self, description: str) -> None:
        super().__init__(400, "invalid_request", description, headers={"Cache-Control": "no-store"})


class Forbidden(ApiError):
    def __init__(self, detail: str = "You are not allowed to do this.") -> None:
        super().__init__(403, "forbidden", detail)


def insufficient_scope(dpop: bool, **params: str) -> str:
    """The 403 challenge of RFC 6750 §3.1, in the DPoP scheme for a DPoP-bound token (RFC 9449 §7.1)."""
    challenge = ", ".join(['error="insufficient_scope"', *(f'{name}="{value}"' for name, value in params.items())])
    if dpop:
        return f'DPoP {challenge}, algs="{" ".join(DPOP_ALGORITHMS)}"'
    return f"Bearer {challenge}"


class InsufficientScope(ApiError):
    """RFC 6750 §3.1: the token is valid but was not granted the scope this route needs."""

    def __init__(self, scope: str, *, dpop: bool = False) -> None:
        super().__init__(403, "insufficient_scope", f"The token was not granted the scope {scope!r}.",
                         headers={"WWW-Authenticate": insufficient_scope(dpop, scope=scope)})


class OAuthTokenRefused(ApiError):
    """What no scope lets an OAuth access token do (an admin route; logging its user out
    everywhere): RFC 6750 §3.1 says so in the challenge (no `scope` to ask for); the body's code
    stays `forbidden`."""

    def __init__(self, detail: str = "Admin routes are never open to OAuth access tokens.",
                 description: str = "admin routes take no OAuth access token", *, dpop: bool = False) -> None:
        super().__init__(403, "forbidden", detail,
                         headers={"WWW-Authenticate": insufficient_scope(dpop, error_description=description)})


class NotFound(ApiError):
    def __init__(self, detail: str = "The requested resource was not found.") -> None:
        super().__init__(404, "not_found", detail)


class ServiceUnavailable(ApiError):
    def __init__(self, detail: str = DETAILS["service_unavailable"]) -> None:
        super().__init__(503, "service_unavailable", detail, headers={"Retry-After": "1"})


class ValidationFailed(ApiError):
    def __init__(self, detail: str, errors: list[dict[str, str]]) -> None:
        super().__init__(422, "validation_error", detail, extra={"errors": errors})


def problem_response(
    status: int,
    code: str,
    detail: str,
    headers: dict[str, str] | None = None,
    extra: dict[str, Any] | None = None,
) -> Response:
    body = {
        "type": f"urn:taskgate:problem:{code}",
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
        "code": code,
        **(extra or {}),
    }
    response = Response(orjson.dumps(body), status=status, mimetype=PROBLEM_MIMETYPE)
    response.headers.update(headers or {})
    return response


def api_error_response(error: ApiError) -> Response:
    if isinstance(error, InvalidRequest):
        body = orjson.dumps({"error": error.code, "error_description": error.detail})
        response = Response(body, status=error.status, mimetype="application/json")
        response.headers.update(error.headers)
        return response
    return problem_response(error.status, error.code, error.detail, error.headers, error.extra)


def _http_exception(error: HTTPException) -> Response:
    status = error.code or 500
    code = HTTP_CODES.get(status, "internal_error" if status >= 500 else "bad_request")
    headers = {}
    if status == 405 and getattr(error, "valid_methods", None):
        headers["Allow"] = ", ".join(sorted(error.valid_methods))
    return problem_response(status, code, DETAILS.get(code, HTTPStatus(status).phrase), headers)


def _unexpected(error: Exception) -> Response:
    # Backing-service outages are 503 wherever they surface; anything else is a bug.
    if is_outage(error):
        BACKEND_ERRORS.labels("redis" if "redis" in type(error).__module__ else "database").inc()
        log.warning("backing service unavailable: %s", type(error).__name__)
        return api_error_response(ServiceUnavailable())
    log.exception("unhandled error")
    return problem_response(500, "internal_error", DETAILS["internal_error"])


def is_outage(error: BaseException) -> bool:
    """True for errors that mean the database or Redis cannot be reached."""
    if isinstance(error, (RedisConnectionError, RedisTimeoutError, OperationalError, PoolTimeout)):
        return True
    return isinstance(error, DBAPIError) and error.connection_invalidated


def register_error_handlers(app: Flask) -> None:
    app.register_error_handler(ApiError, api_error_response)
    app.register_error_handler(HTTPException, _http_exception)
    app.register_error_handler(Exception, _unexpected)
