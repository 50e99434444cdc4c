"""The OpenAPI 3.1 document, built from the routes' `endpoint` declarations and the
pydantic models that validate them (JSON Schema 2020-12 is OpenAPI 3.1's schema dialect)."""

from __future__ import annotations

import re
import typing
from typing import Any

from flask import Flask
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from app.protected_resource import SCOPES
from app.schemas import OAuthError, Problem

ERROR_DESCRIPTIONS = {
    400: "Invalid request (OAuth 2.0 error shape)",
    401: "Missing, invalid, expired or revoked token",
    403: "Forbidden (an OAuth token without the scope: insufficient_scope)",
    404: "Not found (also another user's task)",
    413: "Payload too large",
    415: "Unsupported media type",
    422: "Validation error",
    429: "Rate limited",
    503: "A backing service is unavailable",
}
RULE_ARGUMENT = re.compile(r"<(?:(?P<converter>[a-z]+):)?(?P<name>\w+)>")


def _models_of(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models_of(arg)]


def _schema_ref(annotation: Any) -> dict[str, Any]:
    if typing.get_origin(annotation) is list:
        return {"type": "array", "items": _schema_ref(typing.get_args(annotation)[0])}
    return {"$ref": f"#/components/schemas/{annotation.__name__}"}


def _path_parameters(rule: str, model: type[BaseModel] | None) -> tuple[str, list[dict[str, Any]]]:
    declared = model.model_json_schema()["properties"] if model is not None else {}
    parameters = []
    for match in RULE_ARGUMENT.finditer(rule):
        schema = {"type": "integer", "minimum": 0} if match["converter"] == "int" else {"type": "string"}
        schema = {k: v for k, v in declared.get(match["name"], schema).items() if k != "title"}
        parameters.append({"name": match["name"], "in": "path", "required": True, "schema": schema})
    return RULE_ARGUMENT.sub(lambda m: "{" + m["name"] + "}", rule), parameters


def _query_parameters(model: type[BaseModel]) -> list[dict[str, Any]]:
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    return [
        {
            "name": name,
            "in": "query",
            "required": name in schema.get("required", []),
            "schema": {k: v for k, v in prop.items() if k != "title"},
            **({"description": prop["description"]} if "description" in prop else {}),
        }
        for name, prop in schema["properties"].items()
    ]


def _error_statuses(spec: Any) -> set[int]:
    """The errors an endpoint can answer, from what it declares."""
    errors = set(spec.errors) | {503}
    conditional = {
        401: spec.auth is not None,
        429: spec.auth is not None or spec.rate_limited,
        403: spec.auth == "admin" or spec.scope is not None,
        422: bool(spec.body or spec.query or spec.path),  # (a form's errors are OAuth's 400)
        413: bool(spec.body or spec.form),
        415: bool(spec.body),
    }
    return errors | {status for status, applies in conditional.items() if applies}


def _responses(spec: Any) -> dict[str, Any]:
    success: dict[str, Any] = {"description": spec.summary}
    if spec.response is not None:
        success["content"] = {"application/json": {"schema": _schema_ref(spec.response)}}
    if spec.headers:
        success["headers"] = {name: {"description": text, "schema": {"type": "string"}}
                              for name, text in spec.headers.items()}
    responses = {str(spec.status): success}
    problem = {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
    oauth = {"application/json": {"schema": {"$ref": "#/components/schemas/OAuthError"}}}
    for status in sorted(_error_statuses(spec)):
        content = oauth if status == 400 and spec.form else problem
        responses[str(status)] = {"description": ERROR_DESCRIPTIONS[status], "content": content}
    return responses


def _request_body(spec: Any) -> dict[str, Any] | None:
    if spec.form:
        return {"required": True, "content": {"application/x-www-form-urlencoded": {
            "schema": {"$ref": f"#/components/schemas/{spec.form.__name__}"}}}}
    if spec.body:
        return {"required": spec.body_required,
                "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{spec.body.__name__}"}}}}
    return None


def _security(spec: Any, oauth: bool) -> list[dict[str, list[str]]]:
    """Any first-party token; an OAuth access token with the route's scope, never on admin routes."""
    if not spec.auth:
        return []
    schemes: list[dict[str, list[str]]] = [{"bearerAuth": []}]
    if oauth and spec.auth != "admin":
        schemes.append({"oauth2": [spec.scope] if spec.scope else []})
    return schemes


def _oauth2_scheme(issuer: str) -> dict[str, Any]:
    """Better Auth's OAuth provider: the authorization code flow with PKCE (its endpoints under the issuer)."""
    return {"type": "oauth2", "description": "Scoped access tokens for third-party apps and agents (RFC 9068), "
            "issued by Better Auth's OAuth provider for this API's resource URL",
            "flows": {"authorizationCode": {"authorizationUrl": f"{issuer}/oauth2/authorize",
                                            "tokenUrl": f"{issuer}/oauth2/token", "scopes": SCOPES}}}


def _operation(spec: Any, path_params: list[dict[str, Any]], operation_id: str, oauth: bool) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "operationId": operation_id,
        "summary": spec.summary,
        "tags": [spec.tag],
        "parameters": path_params + (_query_parameters(spec.query) if spec.query else []),
        "responses": _responses(spec),
    }
    body = _request_body(spec)
    if body is not None:
        operation["requestBody"] = body
    operation["security"] = _security(spec, oauth)
    return operation


def build_openapi(app: Flask, oauth_issuer: str | None = None) -> dict[str, Any]:
    """`oauth_issuer`: OAuth access tokens are accepted (OAUTH_RESOURCE_URL set), from this issuer."""
    paths: dict[str, dict[str, Any]] = {}
    models: set[type[BaseModel]] = {Problem}
    for rule in app.url_map.iter_rules():
        spec = getattr(app.view_functions.get(rule.endpoint), "endpoint_spec", None)
        if spec is None:
            continue
        path, path_params = _path_parameters(rule.rule, spec.path)
        # One view may serve two rules (the task routes' two forms): ids must stay unique.
        operation_id = rule.endpoint.replace(".", "_") + ("_for_path_user" if "{user_id}/tasks" in path else "")
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            paths.setdefault(path, {})[method.lower()] = _operation(spec, path_params, operation_id,
                                                                    oauth_issuer is not None)
        models.update(m for m in (spec.body, spec.form) if m)
        if spec.form:
            models.add(OAuthError)
        models.update(_models_of(spec.response))
    modes = [(m, "validation") for m in sorted(models, key=lambda m: m.__name__)]
    _, definitions = models_json_schema(modes, ref_template="#/components/schemas/{model}")
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "taskgate",
            "version": "1.0.0",
            "description": "Per-user todo tasks behind Better Auth tokens. "
            "Errors are RFC 9457 problem+json with a stable `code`.",
        },
        "paths": dict(sorted(paths.items())),
        "components": {
            "schemas": definitions.get("$defs", {}),
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
                                **({"oauth2": _oauth2_scheme(oauth_issuer)} if oauth_issuer else {})},
        },
    }
