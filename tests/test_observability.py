"""Request ids, the JSON access log, metrics and security headers (CORS: test_cors.py)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import pytest
import requests
from flask import Response, request
from prometheus_client.parser import text_string_to_metric_families

from app.factory import create_app
from app.logs import JsonFormatter
from app.observability import _security_headers
from tests.conftest import SECRET, bearer
from tests.support.servers import ROOT, free_port, wait_until


def access_records(caplog) -> list[dict]:
    return [r.fields for r in caplog.records if r.name == "taskgate.access"]


def test_request_id_is_echoed_or_generated(client):
    assert client.get("/healthz", headers={"X-Request-ID": "abc-123"}).headers["X-Request-ID"] == "abc-123"
    generated = client.get("/healthz").headers["X-Request-ID"]
    assert len(generated) == 32
    hostile = client.get("/healthz", headers={"X-Request-ID": "evil\"value with spaces"}).headers["X-Request-ID"]
    assert hostile != "evil\"value with spaces" and len(hostile) == 32


def test_one_access_log_line_per_request_without_the_token(client, make_token, caplog):
    caplog.set_level(logging.INFO, logger="taskgate.access")
    token = make_token("alice")
    client.get("/api/v1/tasks/42?q=secret-query", headers={**bearer(token), "X-Request-ID": "rid-1"})
    (entry,) = access_records(caplog)
    assert entry == {"method": "GET", "path": "/api/v1/tasks/<int:task_id>", "status": 404,
                     "duration_ms": entry["duration_ms"], "user_id": "alice", "request_id": "rid-1",
                     "remote_addr": "127.0.0.1"}
    everything = "\n".join(r.getMessage() + str(getattr(r, "fields", "")) for r in caplog.records)
    assert token not in everything and "secret-query" not in everything


def test_json_log_lines_parse(capsys):
    record = logging.LogRecord("taskgate.access", logging.INFO, __file__, 1, "request", None, None)
    record.fields = {"status": 200, "path": "/healthz"}
    line = json.loads(JsonFormatter().format(record))
    assert line["message"] == "request" and line["status"] == 200 and line["level"] == "info"


def test_security_headers(client, as_user):
    response = client.get("/api/v1/tasks", headers=as_user("alice"))
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["X-Frame-Options"] == "DENY"
    assert "Strict-Transport-Security" not in response.headers  # plain http


class TestBehindAProxy:
    @pytest.fixture
    def settings_overrides(self):
        return {"PROXY_HOPS": "1"}

    def test_hsts_and_client_ip_from_the_trusted_proxy(self, client, caplog):
        caplog.set_level(logging.INFO, logger="taskgate.access")
        response = client.get("/healthz", headers={"X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.9"})
        assert response.headers["Strict-Transport-Security"].startswith("max-age=")
        assert access_records(caplog)[-1]["remote_addr"] == "203.0.113.9"


def test_metrics_count_requests_and_token_failures(client, as_user):
    client.get("/api/v1/tasks", headers=as_user("alice"))
    client.get("/api/v1/tasks", headers=bearer("garbage"))
    response = client.get("/metrics")
    assert response.status_code == 200
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(response.get_data(as_text=True))
               for s in family.samples}
    assert samples[("taskgate_http_requests_total",
                    (("method", "GET"), ("route", "/api/v1/tasks"), ("status", "200")))] >= 1
    assert samples[("taskgate_token_failures_total", (("code", "invalid_token"),))] >= 1
    assert samples[("taskgate_revocation_checks_total", (("result", "ok"),))] >= 1


class TestAMetricsToken:
    @pytest.fixture
    def settings_overrides(self):
        return {"METRICS_TOKEN": "metrics-token-for-the-tests-0123456789"}

    def test_metrics_need_the_configured_token(self, client):
        assert client.get("/metrics").status_code == 401
        assert client.get("/metrics", headers=bearer("m" * 31 + "x")).status_code == 401
        response = client.get("/metrics", headers=bearer("metrics-token-for-the-tests-0123456789"))
        assert response.status_code == 200 and b"taskgate_http_requests_total" in response.data


def test_metrics_are_off_in_production_without_a_token(tmp_path):
    app = create_app({"APP_ENV": "production", "DATABASE_URL": "postgresql+psycopg://u@127.0.0.1:1/x",
                      "REDIS_URL": "redis://127.0.0.1:1/0", "BETTER_AUTH_SECRET": SECRET, "RATE_LIMITS_ENABLED": "0",
                      "METRICS_TOKEN": ""})
    assert app.test_client().get("/metrics").status_code == 404


def test_client_chosen_methods_do_not_grow_metric_labels(client):
    for method in ("FOO", "BAR", "X" * 50):
        client.open("/healthz", method=method)
    text = client.get("/metrics").get_data(as_text=True)
    assert 'method="OTHER"' in text and "FOO" not in text and "BAR" not in text


def test_security_headers_keep_what_a_route_set(app):
    with app.test_request_context("/anything"):
        response = Response("x", headers={"x-frame-options": "SAMEORIGIN", "Vary": "Accept-Encoding",
                                          "X-Request-ID": "from-the-route"})
        _security_headers(response, request, authenticated=False, request_id="rid-1")
        again = Response("y", headers={"Vary": "origin", "Cache-Control": "max-age=60"})
        _security_headers(again, request, authenticated=True, request_id="rid-2")
    assert response.headers.getlist("X-Frame-Options") == ["SAMEORIGIN"]
    assert response.headers["Vary"] == "Accept-Encoding, Origin"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert "Cache-Control" not in response.headers
    assert again.headers.getlist("Vary") == ["origin"] and again.headers.getlist("Cache-Control") == ["no-store"]
    assert response.headers.getlist("X-Request-ID") == ["rid-1"] and again.headers["X-Request-ID"] == "rid-2"


def test_the_development_server_logs_one_json_access_line_per_request(tmp_path):
    """`flask run` (the README's `make run`): taskgate's access line, not werkzeug's coloured copy."""
    port = free_port()
    env = {**os.environ, "APP_ENV": "development", "DATABASE_URL": f"sqlite:///{tmp_path / 'dev.db'}",
           "REDIS_URL": "", "BETTER_AUTH_SECRET": SECRET, "FLASK_DEBUG": "0", "LOG_LEVEL": "INFO"}
    server = subprocess.Popen([sys.executable, "-m", "flask", "--app", "wsgi", "run", "--port", str(port)], cwd=ROOT,
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_until(lambda: requests.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200, 30,
                   "flask run")
        assert requests.get(f"http://127.0.0.1:{port}/nowhere", timeout=5).status_code == 404
    finally:
        server.terminate()
        output = server.communicate(timeout=30)[0]
    # Every log line is JSON (Flask's CLI prints its two-line banner itself, before any request).
    entries = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    assert "\x1b" not in output, output
    about_nowhere = [entry for entry in entries if "nowhere" in entry["message"] or entry.get("status") == 404]
    assert [entry["logger"] for entry in about_nowhere] == ["taskgate.access"], about_nowhere
    assert any(entry["logger"] == "werkzeug" and "Running on" in entry["message"] for entry in entries), entries
