"""The factory: configuration from the environment, fail-fast, and pluggable blueprints."""

from __future__ import annotations

import pytest
from flask import Blueprint

from app.factory import ConfigError, create_app
from app.services import services
from tests.conftest import PRODUCTION, SECRET

plugin_bp = Blueprint("plugin", __name__)


@plugin_bp.get("/plugin/hello")
def hello():
    return {"hello": "from a plugin"}


def base_config(tmp_path, **extra):
    return {"APP_ENV": "testing", "DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}",
            "BETTER_AUTH_SECRET": SECRET, "REDIS_URL": "", **extra}


def test_a_blueprint_is_added_through_configuration_alone(tmp_path):
    app = create_app(base_config(tmp_path, BLUEPRINTS="blueprints.health:bp,tests.test_factory:plugin_bp"))
    client = app.test_client()
    assert client.get("/plugin/hello").get_json() == {"hello": "from a plugin"}
    assert client.get("/healthz").status_code == 200
    assert client.get("/api/v1/tasks").status_code == 404  # the tasks blueprint was left out


def test_default_blueprints(tmp_path):
    app = create_app(base_config(tmp_path))
    assert {"health", "auth", "tasks", "admin"} <= set(app.blueprints)


@pytest.mark.parametrize("setting,value,message", [
    ("BLUEPRINTS", "no.such.module:bp", "cannot import"),
    ("BLUEPRINTS", "tests.test_factory:base_config", "not a flask.Blueprint"),
    ("APP_ENV", "staging", "APP_ENV"),
    ("JWT_ALGORITHMS", "HS256,none", "unsupported"),
    ("JWT_ALGORITHMS", "RS256", "JWKS_URL"),
    ("JWT_LEEWAY_SECONDS", "soon", "whole number"),
    ("CORS_ORIGINS", "*", "CORS_ORIGINS"),
    ("CORS_ORIGINS", "https://*.example.com", "exact origins"),
    ("CORS_ORIGINS", "https://app.example.com/path", "exact origins"),
    ("CORS_ORIGINS", "https://app.example.com,^https://evil", "exact origins"),
])
def test_bad_settings_fail_fast_with_a_clear_message(tmp_path, setting, value, message):
    with pytest.raises(ConfigError, match=message):
        create_app(base_config(tmp_path, **{setting: value}))


def test_development_generates_and_keeps_a_throwaway_secret(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = {"APP_ENV": "development", "DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}",
              "BETTER_AUTH_SECRET": "", "REDIS_URL": ""}
    first = services(create_app(config)).settings
    second = services(create_app(config)).settings
    assert first.secret_generated and len(first.secret) >= 32
    assert first.secret == second.secret  # `flask run` and `flask token mint` agree


def test_cors_origins_are_normalised(tmp_path):
    app = create_app(base_config(tmp_path, CORS_ORIGINS="https://App.Example.com/, http://127.0.0.1:3000"))
    assert services(app).settings.cors_origins == ("https://app.example.com", "http://127.0.0.1:3000")


def test_a_dotenv_file_is_read_in_every_environment_and_the_real_environment_wins(tmp_path, monkeypatch):
    # As the flask command does (Flask's load_dotenv): the service and its CLI see the same settings.
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("CORS_ORIGINS=https://from-dotenv.example\nJWT_LEEWAY_SECONDS=7\n")
    monkeypatch.setenv("JWT_LEEWAY_SECONDS", "9")
    settings = services(create_app({**PRODUCTION, "RATE_LIMITS_ENABLED": "0"})).settings
    assert settings.is_production
    assert settings.cors_origins == ("https://from-dotenv.example",)
    assert settings.leeway_seconds == 9
