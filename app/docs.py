"""The API's own description: the OpenAPI document at /openapi.json."""

from __future__ import annotations

from flask import Flask, request

from app.api import json_response
from app.openapi import build_openapi
from app.security.gate import admit
from app.services import services


def register_docs(app: Flask) -> None:
    """After the blueprints: the document describes every route registered by then."""
    document = build_openapi(app)

    def openapi_document():
        admit(request, services(), None)  # the per-IP limit of anonymous endpoints
        return json_response(document)

    app.add_url_rule("/openapi.json", "openapi", openapi_document)
