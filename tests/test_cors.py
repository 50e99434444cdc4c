"""CORS: only the configured origins may read an answer, matched exactly (scheme, host and port,
IPv6 literals included)."""

from __future__ import annotations

import pytest


class TestCorsOrigins:
    @pytest.fixture
    def settings_overrides(self):
        return {"CORS_ORIGINS": "http://[2001:db8::1]:3000,http://localhost:3000"}

    @pytest.mark.parametrize("origin,allowed", [
        ("http://[2001:db8::1]:3000", True), ("http://localhost:3000", True), ("http://d:3000", False),
        ("http://b:30001", False), ("http://localhost:30001", False), ("http://[2001:db8::1]:30001", False),
        ("http://2:3000", False),
    ])
    def test_only_the_configured_origins_are_allowed(self, client, origin, allowed):
        response = client.get("/healthz", headers={"Origin": origin})
        assert (response.headers.get("Access-Control-Allow-Origin") == origin) is allowed
        if not allowed:
            assert "Access-Control-Allow-Origin" not in response.headers


class TestCors:
    @pytest.fixture
    def settings_overrides(self):
        return {"CORS_ORIGINS": "https://app.example.com"}

    def test_preflight_from_an_allowed_origin(self, client):
        response = client.options("/api/v1/tasks", headers={
            "Origin": "https://app.example.com", "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type"})
        assert response.headers["Access-Control-Allow-Origin"] == "https://app.example.com"
        assert "authorization" in response.headers["Access-Control-Allow-Headers"].lower()
        assert response.headers["Access-Control-Max-Age"] == "600"
        assert "Access-Control-Allow-Credentials" not in response.headers

    def test_a_request_from_the_allowed_origin_may_read_the_answer(self, client, as_user):
        response = client.get("/api/v1/tasks", headers={**as_user("alice"), "Origin": "https://app.example.com"})
        assert response.headers["Access-Control-Allow-Origin"] == "https://app.example.com"
        assert "X-Total-Count" in response.headers["Access-Control-Expose-Headers"]

    def test_a_request_without_an_origin_gets_no_cors_headers(self, client, as_user):
        # Not a browser's cross-origin request: nothing to allow, and no list of the allowed origins.
        response = client.get("/api/v1/tasks", headers=as_user("alice"))
        assert not [name for name in response.headers.keys() if name.lower().startswith("access-control-")]
        assert "Origin" in response.headers["Vary"]

    @pytest.mark.parametrize("origin", ["https://evil.example.com", "https://app.example.com.evil.net",
                                        "http://app.example.com"])
    def test_other_origins_get_no_cors_headers(self, client, as_user, origin):
        response = client.get("/api/v1/tasks", headers={**as_user("alice"), "Origin": origin})
        assert "Access-Control-Allow-Origin" not in response.headers
        assert "Origin" in response.headers["Vary"]
