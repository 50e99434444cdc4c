"""The application factory: settings, logging, then one `register_*` step per concern
(ARCHITECTURE.md, "What each module owns")."""

from __future__ import annotations

import importlib
import logging
from collections.abc import Mapping
from pathlib import Path

from flask import Blueprint, Flask
from werkzeug.middleware.proxy_fix import ProxyFix

from app.api import register_converters
from app.cli import register_cli
from app.config import ConfigError, Settings, gather_environment, load_settings
from app.cors import register_cors
from app.db import Database, build_engine
from app.docs import register_docs
from app.errors import register_error_handlers
from app.extensions import jwt
from app.logs import configure_logging
from app.observability import init_observability
from app.protected_resource import register_protected_resource
from app.rate_limits import SCRIPTS as RATE_LIMIT_SCRIPTS
from app.rate_limits import RateLimits
from app.redis_client import NoRedis, RedisClient
from app.revocation.eviction import check_at_start
from app.revocation.scripts import SCRIPTS as REVOCATION_SCRIPTS
from app.revocation.store import RevocationStore
from app.revocation.targets import Lifetimes
from app.security.dpop import ProofReplays
from app.security.jwks import JwksKeySet
from app.security.tokens import decode_key
from app.security.verified_tokens import VerifiedTokens
from app.services import Services, install, services


def create_app(config: Mapping[str, object] | None = None) -> Flask:
    """Build the app. `config` overrides environment variables of the same names."""
    app = Flask("app")
    settings = load_settings(gather_environment(config), Path(app.instance_path))
    app.config.update(MAX_CONTENT_LENGTH=settings.max_content_length, TESTING=settings.is_testing,
                      APP_ENV=settings.app_env)
    configure_logging(app, settings)
    for warning in settings.warnings:
        app.logger.warning(warning)
    register_proxy_fix(app, settings)
    init_observability(app)
    register_error_handlers(app)
    install(app, build_services(settings))
    register_token_policy(app, settings)
    register_cors(app, settings.cors_origins)
    register_protected_resource(app, settings)
    register_converters(app)
    register_blueprints(app, settings)
    register_docs(app)
    register_cli(app)
    return app


def check_configuration(config: Mapping[str, object] | None = None) -> Settings:
    """What a start refuses, checked before a server starts (serve.py): the settings, and in
    production a Redis that evicts keys (ConfigError, one line)."""
    settings = load_settings(gather_environment(config), Path(Flask("app").instance_path))
    build_engine(settings.database_url).dispose()  # a URL it cannot use: refused now, not in every worker
    if settings.is_production:
        client = RedisClient(settings.redis_target, settings.redis_socket_timeout, {})
        try:
            check_at_start(client)
        finally:
            client.close()
    return settings


def build_services(settings: Settings) -> Services:
    database = Database(settings)
    try:
        client = RedisClient(settings.redis_target, settings.redis_socket_timeout,
                             {**REVOCATION_SCRIPTS, **RATE_LIMIT_SCRIPTS})
    except NoRedis as error:
        raise ConfigError(str(error)) from None
    store = RevocationStore(client, database, key_prefix=settings.redis_key_prefix,
                            lifetimes=Lifetimes(settings.max_age_seconds, settings.leeway_seconds),
                            user_claim=settings.user_claim, sync_seconds=settings.revocation_sync_seconds)
    if settings.is_production:
        store.check_eviction_policy()
    keys = JwksKeySet(settings.jwks_url, timeout=settings.jwks_timeout_seconds,
                      cache_seconds=settings.jwks_cache_seconds,
                      min_refetch_seconds=settings.jwks_min_refetch_seconds) if settings.jwks_url else None
    limits = RateLimits(settings, client, store.layout) if settings.rate_limits_enabled else None
    replays = (ProofReplays(client, settings.redis_key_prefix, settings.dpop_max_age_seconds)
               if settings.oauth_resource_url else None)
    return Services(settings=settings, database=database, store=store, keys=keys,
                    verified_tokens=VerifiedTokens(), rate_limits=limits, proof_replays=replays)


def register_proxy_fix(app: Flask, settings: Settings) -> None:
    if settings.proxy_hops:
        # Behind N trusted proxies: client IP and scheme come from X-Forwarded-For/-Proto.
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=settings.proxy_hops, x_proto=settings.proxy_hops,
                                x_host=0, x_port=0, x_prefix=0)


def register_token_policy(app: Flask, settings: Settings) -> None:
    """flask-jwt-extended verifies signatures and registered claims (app.security.tokens)."""
    app.config.update(
        JWT_SECRET_KEY=settings.secret,
        JWT_ALGORITHM="HS256",
        JWT_DECODE_ALGORITHMS=list(settings.algorithms),
        JWT_DECODE_LEEWAY=settings.leeway_seconds,
        JWT_DECODE_ISSUER=settings.issuer,
        JWT_DECODE_AUDIENCE=settings.audience,
        JWT_IDENTITY_CLAIM=settings.user_claim,
        JWT_VERIFY_SUB=True,
    )
    jwt.init_app(app)
    keys = services(app).keys
    jwt.decode_key_loader(lambda header, _claims: decode_key(header, settings, keys))


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
