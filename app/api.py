"""The `endpoint` decorator: authentication, request validation and the OpenAPI
declaration of a route, from one place.

    @bp.post("/api/v1/tasks")
    @endpoint(summary="Create a task", body=TaskCreate, response=Task, status=201)
    def create(principal, body): ...

The view receives `principal` (when `auth` is set), `body` and `query` (validated
pydantic models) as keyword arguments, and returns data that `json_response` serialises.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import wraps
from typing import Any

import orjson
from flask import Response, request
from pydantic import BaseModel, ValidationError

from app.auth import authenticate, require_admin
from app.errors import ApiError, ValidationFailed
from app.ratelimit import rate_limits
from app.schemas import READ_ONLY_FIELDS

JSON_OPTIONS = orjson.OPT_UTC_Z | orjson.OPT_NAIVE_UTC


@dataclass(frozen=True)
class EndpointSpec:
    summary: str
    tag: str
    auth: str | None  # None, "user" or "admin"
    body: type[BaseModel] | None
    body_required: bool
    query: type[BaseModel] | None
    response: Any  # a model, list[model], or None for an empty response
    status: int
    errors: tuple[int, ...]
    headers: dict[str, str] = field(default_factory=dict)
    rate_limited: bool = True  # anonymous endpoints: per-IP limit unless False (health checks)


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    response = Response(orjson.dumps(data, option=JSON_OPTIONS), status=status, mimetype="application/json")
    if headers:
        response.headers.update(headers)
    return response


def _field_errors(error: ValidationError) -> list[dict[str, str]]:
    errors = []
    for item in error.errors(include_url=False, include_input=False):
        name = ".".join(str(part) for part in item["loc"]) or "body"
        message = item["msg"]
        if item["type"] == "extra_forbidden" and name in READ_ONLY_FIELDS:
            message = "is read-only and cannot be set by a client"
        elif item["type"] == "extra_forbidden":
            message = "is not a known field"
        errors.append({"field": name, "message": message, "type": item["type"]})
    return errors


def parse_body(model: type[BaseModel], required: bool = True) -> BaseModel:
    mimetype = request.mimetype
    if not required and not mimetype and not request.content_length:
        return model()
    if not (mimetype == "application/json" or mimetype.endswith("+json")):
        raise ApiError(415, "unsupported_media_type", "The request body must be JSON (Content-Type: application/json).")
    raw = request.get_data(cache=False)
    if not raw.strip():
        if not required:
            return model()
        raise ValidationFailed("The request body is empty; a JSON object is expected.", [
            {"field": "body", "message": "a JSON object is required", "type": "missing"}
        ])
    try:
        return model.model_validate_json(raw)
    except ValidationError as error:
        errors = _field_errors(error)
        if any(e["type"] == "json_invalid" for e in errors):
            raise ValidationFailed("The request body is not valid JSON.", [
                {"field": "body", "message": "malformed JSON", "type": "json_invalid"}
            ]) from None
        if any(e["type"] == "model_type" for e in errors):
            raise ValidationFailed("The request body must be a JSON object.", errors) from None
        raise ValidationFailed("The request body failed validation.", errors) from None


def parse_query(model: type[BaseModel]) -> BaseModel:
    try:
        return model.model_validate(request.args.to_dict())
    except ValidationError as error:
        raise ValidationFailed("The query parameters failed validation.", _field_errors(error)) from None


def endpoint(
    *,
    summary: str,
    tag: str,
    auth: str | None = "user",
    body: type[BaseModel] | None = None,
    body_required: bool = True,
    query: type[BaseModel] | None = None,
    response: Any = None,
    status: int = 200,
    errors: tuple[int, ...] = (),
    headers: dict[str, str] | None = None,
    rate_limited: bool = True,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    spec = EndpointSpec(summary, tag, auth, body, body_required, query, response, status, errors, headers or {},
                        rate_limited)

    def decorator(view: Callable[..., Any]) -> Callable[..., Any]:
        @wraps(view)
        def wrapper(**kwargs: Any) -> Any:
            # Authentication first (it also counts the caller's per-user rate limit): an
            # anonymous caller learns nothing from validation.
            if spec.auth is not None:
                try:
                    principal = authenticate()
                except ApiError as error:
                    limits = rate_limits()
                    if limits is not None and error.status == 401:
                        limits.authentication_failed()
                    raise
                if spec.auth == "admin":
                    require_admin(principal)
                kwargs["principal"] = principal
            elif spec.rate_limited and (limits := rate_limits()) is not None:
                limits.anonymous_request()
            if spec.query is not None:
                kwargs["query"] = parse_query(spec.query)
            if spec.body is not None:
                kwargs["body"] = parse_body(spec.body, spec.body_required)
            return view(**kwargs)

        wrapper.endpoint_spec = spec  # type: ignore[attr-defined]
        return wrapper

    return decorator
