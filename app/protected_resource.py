"""This API as an OAuth 2.0 protected resource (RFC 9728; ARCHITECTURE.md, "OAuth access
tokens"): its metadata document, and a pointer to it on every 401 and 403, so that a client
(an MCP client, an agent) finds the authorization server by itself."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from flask import Flask, Response

from app.api import endpoint, json_response
from app.config import Settings
from app.schemas import ProtectedResource

WELL_KNOWN = "/.well-known/oauth-protected-resource"
SCOPES = {"tasks:read": "Read your tasks", "tasks:write": "Create, change and delete your tasks"}


def metadata_path(resource: str) -> str:
    """RFC 9728 §3.1: the well-known suffix between the host and the resource's own path."""
    return WELL_KNOWN + urlsplit(resource).path.rstrip("/")


def metadata_url(resource: str) -> str:
    parts = urlsplit(resource)
    return f"{parts.scheme}://{parts.netloc}{metadata_path(resource)}"


def metadata(settings: Settings) -> dict[str, Any]:
    resource = settings.oauth_resource_url or ""
    parts = urlsplit(resource)
    return {
        "resource": resource,
        "authorization_servers": [settings.oauth_issuer],
        "scopes_supported": list(SCOPES),
        "bearer_methods_supported": ["header"],
        "dpop_signing_alg_values_supported": ["EdDSA", "ES256", "ES384", "ES512", "PS256", "RS256"],
        "resource_name": "taskgate",
        "resource_documentation": f"{parts.scheme}://{parts.netloc}/docs",
    }


def register_protected_resource(app: Flask, settings: Settings) -> None:
    """With OAuth tokens on: the metadata document, at the path RFC 9728 gives it, and
    `resource_metadata` added to every challenge of a 401 or 403."""
    if settings.oauth_resource_url is None:
        return
    pointer = f'resource_metadata="{metadata_url(settings.oauth_resource_url)}"'
    document = metadata(settings)

    @endpoint(summary="OAuth protected resource metadata (RFC 9728)", tag="auth", auth=None,
              response=ProtectedResource)
    def protected_resource_metadata() -> Response:
        return json_response(document, headers={"Cache-Control": "public, max-age=3600"})

    app.add_url_rule(metadata_path(settings.oauth_resource_url), "oauth_protected_resource",
                     protected_resource_metadata)

    def point_to_metadata(response: Response) -> Response:
        challenge = response.headers.get("WWW-Authenticate")
        if response.status_code in (401, 403) and challenge and pointer not in challenge:
            response.headers["WWW-Authenticate"] = f"{challenge}, {pointer}"
        return response

    app.after_request(point_to_metadata)
