"""The API's own description: the OpenAPI document at /openapi.json, and an interactive page
at /docs (Swagger UI, whose assets ship in the flask-swagger-ui package: no CDN at run time)."""

from __future__ import annotations

from flask import Flask, Response, request
from flask_swagger_ui import get_swaggerui_blueprint

from app.api import json_response
from app.gate import admit
from app.openapi import build_openapi
from app.services import services

DOCS_PATH = "/docs"
# The page runs Swagger UI's own inline start-up script; nothing on it comes from a client.
DOCS_POLICY = ("default-src 'none'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
               "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'")


def register_docs(app: Flask) -> None:
    """After the blueprints: the document describes every route registered by then."""
    settings = services(app).settings
    document = build_openapi(app, settings.oauth_issuer if settings.oauth_resource_url else None)

    def openapi_document():
        admit(request, services(), None)  # the per-IP limit of anonymous endpoints
        return json_response(document)

    app.add_url_rule("/openapi.json", "openapi", openapi_document)
    docs = get_swaggerui_blueprint(DOCS_PATH, "/openapi.json", config={"app_name": "taskgate API"},
                                   blueprint_name="docs")

    @docs.before_request
    def count_the_caller() -> None:  # the per-IP limit of anonymous endpoints
        admit(request, services(), None)

    @docs.after_request
    def page_policy(response: Response) -> Response:
        response.headers["Content-Security-Policy"] = DOCS_POLICY
        return response

    app.register_blueprint(docs)
