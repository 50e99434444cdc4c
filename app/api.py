"""The `endpoint` declaration: admission, validation of path, query and body, and the OpenAPI
facts of a route, from one place (ARCHITECTURE.md, "A request's path")."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import wraps
from typing import Any

import orjson
from flask import Flask, Response, g, make_response, request
from pydantic import BaseModel, ValidationError
from werkzeug.routing import BaseConverter

from app.errors import ApiError, InvalidRequest, ValidationFailed
from app.gate import admit
from app.schemas import READ_ONLY_FIELDS
from app.services import services

JSON_OPTIONS = orjson.OPT_UTC_Z | orjson.OPT_NAIVE_UTC


@dataclass(frozen=True)
class EndpointSpec:
    summary: str
    tag: str
    auth: str | None  # None, "user" or "admin"
    body: type[BaseModel] | None
    body_required: bool
    query: type[BaseModel] | None
    path: type[BaseModel] | None  # validates the rule's variables (and documents them)
    form: type[BaseModel] | None  # a form-encoded body, parsed by the view with parse_form (OAuth errors)
    response: Any  # a model, list[model], or None for an empty response
    status: int
    errors: tuple[int, ...]
    headers: dict[str, str] = field(default_factory=dict)
    # Anonymous endpoints count against the IP's limit, authenticated ones against the user's;
    # False for what must always answer (health checks, logout).
    rate_limited: bool = True
    # The OAuth scope an OAuth access token needs here (None: any valid token; first-party
    # tokens can do everything their user can).
    scope: str | None = None


class IdentifierConverter(BaseConverter):
    """`<id:name>`: any id a token can carry, slashes included; the endpoint's path model
    validates it (a 422, not a 404, for an id no token could carry)."""

    regex = r"[\s\S]+?"  # every character, a newline too: the path model judges them all alike
    part_isolating = False


def register_converters(app: Flask) -> None:
    app.url_map.converters["id"] = IdentifierConverter


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


def parse_form(model: type[BaseModel]) -> BaseModel:
    """An application/x-www-form-urlencoded body, for an OAuth or OpenID peer: its errors are
    OAuth's 400 invalid_request (app.errors.InvalidRequest)."""
    if request.mimetype != "application/x-www-form-urlencoded":
        raise InvalidRequest("the body must be application/x-www-form-urlencoded")
    try:
        return model.model_validate(request.form.to_dict())
    except ValidationError as error:
        fields = ", ".join(".".join(str(part) for part in item["loc"]) for item in error.errors())
        raise InvalidRequest(f"invalid or missing: {fields}") from None


def parse_path(model: type[BaseModel], values: dict[str, Any]) -> BaseModel:
    try:
        return model.model_validate(values)
    except ValidationError as error:
        raise ValidationFailed("The path failed validation.", _field_errors(error)) from None


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
    path: type[BaseModel] | None = None,
    form: type[BaseModel] | None = None,
    response: Any = None,
    status: int = 200,
    errors: tuple[int, ...] = (),
    headers: dict[str, str] | None = None,
    rate_limited: bool = True,
    scope: str | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    spec = EndpointSpec(summary=summary, tag=tag, auth=auth, body=body, body_required=body_required, query=query,
                        path=path, form=form, response=response, status=status, errors=errors,
                        headers=headers or {}, rate_limited=rate_limited, scope=scope)

    def decorator(view: Callable[..., Any]) -> Callable[..., Any]:
        @wraps(view)
        def wrapper(**kwargs: Any) -> Any:
            # Admission first: an anonymous caller learns nothing from validation.
            admission = admit(request, services(), spec.auth, rate_limited=spec.rate_limited, scope=spec.scope)
            if admission.principal is not None:
                g.user_id = admission.principal.user_id  # for the access log line (app.observability)
                kwargs["principal"] = admission.principal
            if spec.path is not None:
                kwargs["path"] = parse_path(spec.path, {name: kwargs.pop(name) for name in spec.path.model_fields})
            if spec.query is not None:
                kwargs["query"] = parse_query(spec.query)
            if spec.body is not None:
                kwargs["body"] = parse_body(spec.body, spec.body_required)
            response = make_response(view(**kwargs))
            response.headers.update(admission.headers)
            return response

        wrapper.endpoint_spec = spec  # type: ignore[attr-defined]
        return wrapper

    return decorator
