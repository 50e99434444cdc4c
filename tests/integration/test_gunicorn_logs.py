"""What an operator sees of gunicorn.conf.py: one JSON log format on stderr (gunicorn's lines
and the app's alike), and the worker count from WEB_CONCURRENCY."""

from __future__ import annotations

import json
import os
import runpy
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from app.config import ConfigError
from app.logs import JsonFormatter as AppJsonFormatter
from tests.conftest import bearer
from tests.support.servers import ROOT, free_port, wait_until

pytestmark = pytest.mark.integration
CONF = ROOT / "gunicorn.conf.py"


def read_conf(monkeypatch: pytest.MonkeyPatch, **env: str) -> dict:
    for name in ("GUNICORN_WORKERS", "WEB_CONCURRENCY"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return runpy.run_path(str(CONF))


def test_web_concurrency_sets_the_worker_count_and_gunicorn_workers_wins(monkeypatch):
    default = read_conf(monkeypatch)["workers"]
    assert default >= 2
    assert read_conf(monkeypatch, WEB_CONCURRENCY=str(default + 3))["workers"] == default + 3
    assert read_conf(monkeypatch, WEB_CONCURRENCY="7", GUNICORN_WORKERS="2")["workers"] == 2
    with pytest.raises(ConfigError, match="WEB_CONCURRENCY must be at least 1, got 0"):
        read_conf(monkeypatch, WEB_CONCURRENCY="0")


def test_the_config_never_loads_the_app_or_prometheus_client_into_the_master():
    """Only the settings' reader and the log format: PROMETHEUS_MULTIPROC_DIR is set later."""
    probe = ("import runpy, sys; runpy.run_path(sys.argv[1]); "
             "print(sorted(m for m in sys.modules if m.split('.')[0] in ('app', 'blueprints', 'prometheus_client')))")
    result = subprocess.run([sys.executable, "-c", probe, str(CONF)], cwd=ROOT, capture_output=True, text=True,
                            timeout=60, check=True)
    assert result.stdout.strip() == "['app', 'app.config', 'app.logs', 'app.redis_url']"


def test_gunicorn_lines_are_written_by_the_apps_formatter():
    assert runpy.run_path(str(CONF))["JsonFormatter"] is AppJsonFormatter


@pytest.fixture(scope="module")
def served_output(postgres_url: str) -> Iterator[str]:
    """gunicorn started as the image starts it, WEB_CONCURRENCY=3 and its access log on; its
    stdout and stderr once it has served a few requests and stopped."""
    from tests.conftest import SECRET
    from tests.support.services import redis_key_prefix, require_redis

    with redis_key_prefix("taskgate-logs") as prefix:
        port = free_port()
        env = {**os.environ, "APP_ENV": "production", "DATABASE_URL": postgres_url, "REDIS_URL": require_redis(),
               "REDIS_KEY_PREFIX": prefix, "BETTER_AUTH_SECRET": SECRET, "BETTER_AUTH_URL": "",
               "GUNICORN_BIND": f"127.0.0.1:{port}", "WEB_CONCURRENCY": "3", "GUNICORN_ACCESS_LOG": "-",
               "LOG_LEVEL": "INFO"}
        env.pop("GUNICORN_WORKERS", None)
        gunicorn = Path(sys.executable).parent / "gunicorn"
        process = subprocess.Popen([str(gunicorn), "-c", "gunicorn.conf.py", "wsgi:app"], cwd=ROOT, env=env,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            url = f"http://127.0.0.1:{port}"
            wait_until(lambda: requests.get(f"{url}/healthz", timeout=1).status_code == 200, 30, "gunicorn")
            requests.get(f"{url}/api/v1/tasks", headers=bearer("not-a-token"), timeout=5)
        finally:
            process.terminate()
            output = process.communicate(timeout=30)[0]
    yield output


def test_every_line_gunicorn_and_the_app_write_is_one_json_object(served_output):
    lines = [line for line in served_output.splitlines() if line.strip()]
    entries = [json.loads(line) for line in lines]  # raises on any line in another format
    assert all({"time", "level", "logger", "message"} <= entry.keys() for entry in entries)
    loggers = {entry["logger"] for entry in entries}
    assert {"gunicorn.error", "gunicorn.access", "taskgate.access"} <= loggers
    assert any(entry["message"].startswith("Starting gunicorn") for entry in entries)
    assert any(entry["message"] == "Shutting down: Master" for entry in entries)


def test_web_concurrency_starts_that_many_workers(served_output):
    booted = [line for line in served_output.splitlines() if '"Booting worker with pid' in line]
    assert len(booted) == 3
