"""taskgate: the application factory."""

from __future__ import annotations

import importlib
import logging
from collections.abc import Mapping
from pathlib import Path

from flask import Blueprint, Flask

from app.api import json_response
from app.auth import init_token_policy
from app.cli import register_cli
from app.config import ConfigError, Settings, gather_environment, load_settings
from app.errors import register_error_handlers
from app.extensions import cors, db, jwt
from app.jwks import init_jwks
from app.logs import configure_logging
from app.observability import init_observability
from app.openapi import build_openapi
from app.ratelimit import init_rate_limits
from app.revocation import init_revocations

__all__ = ["ConfigError", "create_app"]


def create_app(config: Mapping[str, object] | None = None) -> Flask:
    """Build the app. `config` overrides environment variables of the same names."""
    app = Flask(__name__)
    settings = load_settings(gather_environment(config), Path(app.instance_path))
    app.extensions["taskgate.settings"] = settings
    app.config.update(
        MAX_CONTENT_LENGTH=settings.max_content_length,
        TESTING=settings.is_testing,
        APP_ENV=settings.app_env,
    )
    configure_logging(app, settings)
    for warning in settings.warnings:
        app.logger.warning(warning)

    if settings.proxy_hops:
        # Behind N trusted proxies: client IP and scheme come from X-Forwarded-For/-Proto.
        from werkzeug.middleware.proxy_fix import ProxyFix

        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=settings.proxy_hops, x_proto=settings.proxy_hops,
                                x_host=0, x_port=0, x_prefix=0)
    init_observability(app)
    register_error_handlers(app)
    db.init_app(app)
    init_revocations(app)
    init_jwks(app)
    init_rate_limits(app)
    init_token_policy(jwt, app)
    # Bearer tokens, not cookies: no credentials, so no cookie can ride along cross-origin.
    # CORS headers only answer a browser's Origin: flask-cors would otherwise list every
    # allowed origin on every response (always_send), telling any caller the frontend's hosts.
    cors.init_app(
        app,
        origins=list(settings.cors_origins),
        always_send=False,
        supports_credentials=False,
        allow_headers=["Authorization", "Content-Type", "X-Request-ID"],
        expose_headers=["Location", "X-Total-Count", "X-Request-ID", "Retry-After"],
        max_age=600,
    )
    register_blueprints(app, settings)
    app.add_url_rule("/openapi.json", "openapi", lambda: json_response(_openapi(app)))
    register_cli(app)
    return app


def _openapi(app: Flask) -> dict:
    document = app.extensions.get("taskgate.openapi")
    if document is None:
        document = app.extensions["taskgate.openapi"] = build_openapi(app)
    return document


def load_blueprint(import_string: str) -> Blueprint:
    """`package.module:attribute`, or `package.module` exposing `bp`."""
    module_name, _, attribute = import_string.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ConfigError(f"BLUEPRINTS: cannot import {module_name!r} ({error})") from None
    blueprint = getattr(module, attribute or "bp", None)
    if not isinstance(blueprint, Blueprint):
        raise ConfigError(f"BLUEPRINTS: {import_string!r} is not a flask.Blueprint")
    return blueprint


def register_blueprints(app: Flask, settings: Settings) -> None:
    for import_string in settings.blueprints:
        app.register_blueprint(load_blueprint(import_string))
    logging.getLogger(__name__).debug("blueprints: %s", ", ".join(app.blueprints))
