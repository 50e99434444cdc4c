"""The service as an operator runs it: `gunicorn -c gunicorn.conf.py wsgi:app` in
production mode against real PostgreSQL and Redis, and the container's entrypoint."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
import sqlalchemy as sa
from alembic.script import ScriptDirectory
from prometheus_client.parser import text_string_to_metric_families

from app.cli import alembic_config
from tests.conftest import bearer
from tests.integration.conftest import METRICS_TOKEN
from tests.support.servers import ROOT, Gunicorn, free_port, healthz_over_unix_socket, wait_until
from tests.support.services import create_postgres_database

pytestmark = pytest.mark.integration


def metric_samples(text: str) -> dict:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_smoke_health_crud_metrics_and_logs(production_env, make_token, app_server):
    env = {**production_env, "LOG_LEVEL": "INFO"}
    with app_server(env, workers=2) as server:
        assert requests.get(f"{server.url}/healthz", timeout=5).json() == {"status": "ok"}
        ready = requests.get(f"{server.url}/readyz", timeout=5)
        assert ready.status_code == 200 and ready.json()["checks"] == {"database": "ok", "redis": "ok"}

        headers = {**bearer(make_token("smoke-user")), "X-Request-ID": "smoke-1"}
        created = requests.post(f"{server.url}/api/v1/tasks", json={"title": "smoke"}, headers=headers, timeout=5)
        assert created.status_code == 201 and created.headers["X-Request-ID"] == "smoke-1"
        task_url = f"{server.url}{created.headers['Location']}"
        assert requests.patch(f"{task_url}/complete", headers=headers, timeout=5).json()["completed"] is True
        renamed = requests.put(task_url, json={"title": "renamed"}, headers=headers, timeout=5)
        assert renamed.json()["title"] == "renamed"
        listed = requests.get(f"{server.url}/api/smoke-user/tasks", headers=headers, timeout=5)
        assert [t["title"] for t in listed.json()] == ["renamed"] and listed.headers["X-Total-Count"] == "1"
        assert requests.delete(task_url, headers=headers, timeout=5).status_code == 204
        for _ in range(6):  # spread over both workers
            requests.get(f"{server.url}/api/v1/tasks", headers=bearer("bad"), timeout=5)

        samples = metric_samples(requests.get(f"{server.url}/metrics", headers=bearer(METRICS_TOKEN), timeout=5).text)
        created_key = ("taskgate_http_requests_total",
                       (("method", "POST"), ("route", "/api/v1/tasks"), ("status", "201")))
        assert samples[created_key] == 1
        assert samples[("taskgate_token_failures_total", (("code", "invalid_token"),))] == 6
        assert samples[("taskgate_revocation_checks_total", (("result", "ok"),))] >= 5
        assert requests.get(f"{server.url}/metrics", timeout=5).status_code == 401  # needs METRICS_TOKEN

        time.sleep(0.5)
        lines = [json.loads(line) for line in server.output().splitlines() if line.startswith("{")]
        access = [line for line in lines
                  if line.get("logger") == "taskgate.access" and line.get("request_id") == "smoke-1"]
        assert access and access[0]["path"] == "/api/v1/tasks" and access[0]["user_id"] == "smoke-user"
        assert access[0]["status"] == 201 and isinstance(access[0]["duration_ms"], float)
        assert production_env["BETTER_AUTH_SECRET"] not in server.output()


def test_production_refuses_to_start_with_bad_settings(production_env):
    env = {**os.environ, **production_env, "BETTER_AUTH_SECRET": "short"}
    result = subprocess.run([sys.executable, "-c", "import wsgi"], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 78
    assert result.stderr.strip().endswith("BETTER_AUTH_SECRET is shorter than 32 bytes")
    assert "Traceback" not in result.stderr


def listening_sockets(port: int) -> int:
    """IPv4 TCP sockets listening on `port` (/proc/net/tcp: state 0A is LISTEN)."""
    rows = [line.split() for line in Path("/proc/net/tcp").read_text().splitlines()[1:]]
    return sum(1 for row in rows if row[3] == "0A" and int(row[1].rsplit(":", 1)[1], 16) == port)


def test_each_worker_listens_on_its_own_socket_unless_told_otherwise(production_env):
    # A socket per worker is what lets the kernel spread connections evenly (gunicorn.conf.py).
    with Gunicorn(production_env, workers=3) as server:
        assert listening_sockets(server.port) == 3
        assert requests.get(f"{server.url}/healthz", timeout=5).status_code == 200
    with Gunicorn({**production_env, "GUNICORN_REUSE_PORT": "0"}, workers=3) as server:
        assert listening_sockets(server.port) == 1


def test_a_unix_socket_bind_falls_back_to_one_shared_socket(production_env, tmp_path):
    path = tmp_path / "gunicorn.sock"
    env = {**os.environ, **production_env, "GUNICORN_BIND": f"unix:{path}", "GUNICORN_WORKERS": "2",
           "GUNICORN_LOG_LEVEL": "info"}
    process = subprocess.Popen([str(Path(sys.executable).parent / "gunicorn"), "-c", "gunicorn.conf.py", "wsgi:app"],
                               cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    try:
        wait_until(lambda: healthz_over_unix_socket(path).startswith(b"HTTP/1.1 200"), 30, "gunicorn on a unix socket")
        assert all(healthz_over_unix_socket(path).startswith(b"HTTP/1.1 200") for _ in range(10))  # both workers
    finally:
        process.terminate()
        output = process.communicate(timeout=30)[0].decode()
    assert "one socket each" not in output and f"Listening at: unix:{path}" in output


def test_a_port_already_taken_stops_the_start_with_a_clear_error(production_env):
    gunicorn = Path(sys.executable).parent / "gunicorn"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {**os.environ, **production_env, "GUNICORN_BIND": f"127.0.0.1:{port}", "GUNICORN_WORKERS": "1"}
        started = time.monotonic()
        result = subprocess.run([str(gunicorn), "-c", "gunicorn.conf.py", "wsgi:app"], cwd=ROOT, env=env,
                                capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and time.monotonic() - started < 20
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in result.stdout + result.stderr


ENTRYPOINT = ROOT / "docker" / "entrypoint.sh"


def entrypoint_env(extra: dict[str, str]) -> dict[str, str]:
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", **extra}


def test_entrypoint_migrates_a_fresh_database_then_execs_gunicorn(production_env):
    url, drop = create_postgres_database()
    port = free_port()
    env = entrypoint_env({**production_env, "DATABASE_URL": url, "GUNICORN_BIND": f"127.0.0.1:{port}",
                          "GUNICORN_WORKERS": "1", "DB_WAIT_SECONDS": "10"})
    process = subprocess.Popen([str(ENTRYPOINT), "gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"], cwd=ROOT,
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: requests.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200, 60,
                   "the entrypoint's gunicorn")
        engine = sa.create_engine(url)
        with engine.connect() as connection:
            version = connection.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()
        engine.dispose()
    finally:
        process.terminate()
        output = process.communicate(timeout=30)[0].decode()
        drop()
    head = ScriptDirectory.from_config(alembic_config(url)).get_current_head()
    assert version == head
    assert output.index("migrations done") < output.index("starting: gunicorn")


def test_entrypoint_gives_up_on_an_unreachable_database_without_leaking_the_url(production_env):
    secret_url = f"postgresql+psycopg://admin:hunter2-password@127.0.0.1:{free_port()}/taskgate"
    env = entrypoint_env({**production_env, "DATABASE_URL": secret_url, "DB_WAIT_SECONDS": "3"})
    started = time.monotonic()
    result = subprocess.run([str(ENTRYPOINT), "true"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert time.monotonic() - started < 20
    assert "hunter2-password" not in result.stdout + result.stderr


@pytest.mark.parametrize("policy", ["allkeys-lru", "volatile-ttl"])
def test_production_refuses_a_redis_that_evicts_keys(production_env, policy):
    from app.factory import ConfigError, create_app
    from tests.support.servers import RedisServer

    with RedisServer() as private_redis:
        import redis

        redis.Redis.from_url(private_redis.url).config_set("maxmemory-policy", policy)
        with pytest.raises(ConfigError, match=f"maxmemory-policy is {policy}"):
            create_app({**production_env, "REDIS_URL": private_redis.url})
