"""Every error the app can produce is problem+json with a stable code; nothing leaks."""

from __future__ import annotations

import pytest
from flask import Blueprint

PROBLEM_KEYS = {"type", "title", "status", "detail", "code"}


def assert_problem(response, status: int, code: str) -> dict:
    assert response.status_code == status
    assert response.mimetype == "application/problem+json"
    body = response.get_json()
    assert PROBLEM_KEYS <= body.keys() and body["status"] == status and body["code"] == code
    return body


def test_unknown_route(client):
    assert_problem(client.get("/no/such/thing"), 404, "not_found")


def test_wrong_method(client):
    response = client.delete("/healthz")
    assert_problem(response, 405, "method_not_allowed")
    assert "GET" in response.headers["Allow"]


def test_body_over_the_size_limit(client, as_user):
    response = client.post("/api/v1/tasks", data=b'{"title":"' + b"x" * 100_000 + b'"}',
                           content_type="application/json", headers=as_user("alice"))
    assert_problem(response, 413, "payload_too_large")


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
def test_non_json_body(client, as_user, content_type):
    headers = as_user("alice")
    response = client.post("/api/v1/tasks", data="title=x", content_type=content_type, headers=headers)
    assert_problem(response, 415, "unsupported_media_type")


@pytest.mark.parametrize("raw", [b"{bad json", b"", b"[1,2]", b"null", b'"title"', b"\xff\xfe", b"[" * 5000])
def test_malformed_json_is_a_clear_422(client, as_user, raw):
    response = client.post("/api/v1/tasks", data=raw, content_type="application/json", headers=as_user("alice"))
    body = assert_problem(response, 422, "validation_error")
    assert body["detail"] and body["errors"]


def test_authentication_comes_before_validation(client):
    response = client.post("/api/v1/tasks", data=b"{bad", content_type="application/json")
    assert_problem(response, 401, "missing_token")


class TestUnexpectedErrors:
    @pytest.fixture
    def settings_overrides(self):
        return {"BLUEPRINTS": "blueprints.health:bp,tests.test_errors:boom_bp"}

    def test_an_exception_is_a_500_without_internals(self, client):
        response = client.get("/boom")
        body = assert_problem(response, 500, "internal_error")
        assert "secret-internal-detail" not in response.get_data(as_text=True)
        assert "Traceback" not in body["detail"]

    def test_a_database_outage_is_a_503(self, client):
        assert_problem(client.get("/db-down"), 503, "service_unavailable")


boom_bp = Blueprint("boom", __name__)


@boom_bp.get("/boom")
def boom():
    raise RuntimeError("secret-internal-detail")


@boom_bp.get("/db-down")
def db_down():
    from sqlalchemy.exc import OperationalError

    raise OperationalError("SELECT 1", {}, Exception("connection refused"))


@pytest.mark.parametrize(("method", "path", "body"), [
    ("GET", "/api/v1/tasks", None), ("POST", "/api/v1/tasks", {"title": "t"}), ("GET", "/api/v1/tasks/1", None),
    ("PATCH", "/api/v1/tasks/1/complete", None), ("PATCH", "/api/v1/tasks/1", {"title": "t"}),
    ("DELETE", "/api/v1/tasks/1", None),
])
def test_a_database_that_refuses_connections_is_a_503_on_every_task_route(method, path, body, as_user):
    """No pooled connection to fall back on: the pool's first connect fails."""
    from app.factory import create_app
    from tests.conftest import SECRET

    app = create_app({"APP_ENV": "testing", "DATABASE_URL": "postgresql+psycopg://u@127.0.0.1:1/x",
                      "BETTER_AUTH_SECRET": SECRET, "REDIS_URL": "", "BETTER_AUTH_URL": "", "JWKS_URL": "",
                      "JWT_ALGORITHMS": "", "ADMIN_USER_IDS": ""})
    response = app.test_client().open(path, method=method, json=body, headers=as_user("alice"))
    assert_problem(response, 503, "service_unavailable")
