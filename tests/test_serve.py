"""serve.py, the image's command: which server it starts, the settings granian takes from the
variables gunicorn reads, and a bad setting as one line and exit 78 before anything starts (under
serve.py, gunicorn started bare, and the entrypoint before them)."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest

import serve
from app.config import cpus_available, load_server_settings
from tests.conftest import SECRET
from tests.support.servers import ROOT, free_port

SERVE_VARIABLES = ("SERVER", "GRANIAN_WORKERS", "GUNICORN_WORKERS", "WEB_CONCURRENCY", "GRANIAN_BLOCKING_THREADS",
                   "GUNICORN_THREADS", "GUNICORN_BACKLOG", "GRANIAN_BACKPRESSURE", "GRANIAN_HEADER_TIMEOUT",
                   "GUNICORN_GRACEFUL_TIMEOUT", "GUNICORN_BIND", "PORT")


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in SERVE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def granian() -> tuple[int, int, int]:
    settings = load_server_settings(os.environ)
    return settings.granian_workers, settings.granian_threads, settings.granian_backpressure


def test_granian_takes_gunicorns_variables_and_its_own_win(clean_env):
    assert granian() == (cpus_available(), 2, 4096)  # one per CPU; backpressure above 1000+ clients
    clean_env.setenv("WEB_CONCURRENCY", "5")
    clean_env.setenv("GUNICORN_THREADS", "3")
    assert granian()[:2] == (5, 3)
    clean_env.setenv("GUNICORN_WORKERS", "4")
    assert granian()[0] == 4
    clean_env.setenv("GRANIAN_WORKERS", "2")
    clean_env.setenv("GRANIAN_BLOCKING_THREADS", "6")
    assert granian()[:2] == (2, 6)


@pytest.mark.parametrize(("env", "message"), [
    ({"SERVER": "uwsgi"}, "SERVER must be gunicorn or granian, got 'uwsgi'"),
    ({"SERVER": "granian", "GRANIAN_WORKERS": "two"}, "GRANIAN_WORKERS must be a whole number, got 'two'"),
    ({"SERVER": "granian", "GRANIAN_BACKPRESSURE": "0"}, "GRANIAN_BACKPRESSURE must be at least 1, got 0"),
    ({"SERVER": "granian", "GUNICORN_BIND": "127.0.0.1:http"},
     "GUNICORN_BIND must be host:port or unix:PATH, got '127.0.0.1:http'"),
    ({"GUNICORN_BIND": "127.0.0.1:70000"}, "GUNICORN_BIND must be host:port or unix:PATH, got '127.0.0.1:70000'"),
    ({"GUNICORN_BIND": "redis://[::1"}, "GUNICORN_BIND must be host:port or unix:PATH, got 'redis://[::1'"),
    ({"GUNICORN_WORKERS": "99999999999999999999"}, "GUNICORN_WORKERS must be at most 256, got 99999999999999999999"),
    ({"GUNICORN_TIMEOUT": str(10**12)}, "GUNICORN_TIMEOUT must be at most 86400, got 1000000000000"),
    ({"SERVER": "granian", "GRANIAN_BACKPRESSURE": str(1 << 40)}, "GRANIAN_BACKPRESSURE must be at most 1048576"),
    ({"FORWARDED_ALLOW_IPS": "10.0.0.0/8, nan"},
     "FORWARDED_ALLOW_IPS must list IP addresses or networks (or *), got 'nan'"),
    ({"PROXY_ALLOW_IPS": "proxy.internal"},
     "PROXY_ALLOW_IPS must list IP addresses or networks (or *), got 'proxy.internal'"),
    ({"GUNICORN_WORKER_CLASS": "bogus"}, "GUNICORN_WORKER_CLASS: gunicorn cannot load the worker class 'bogus'"),
    ({"GUNICORN_LOG_LEVEL": "loud"}, "GUNICORN_LOG_LEVEL must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL, "
                                     "got 'loud'"),
])
def test_a_bad_setting_is_one_line_and_exit_78(env, message):
    clean = {k: v for k, v in os.environ.items() if k not in SERVE_VARIABLES}
    result = subprocess.run([sys.executable, "serve.py"], cwd=ROOT, env={**clean, **env}, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 78
    assert result.stderr.strip().startswith(f"taskgate: configuration error: {message}"), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize(("env", "line"), [
    ({"APP_ENV": "production", "DATABASE_URL": "", "REDIS_URL": "redis://127.0.0.1:6379/0",
      "BETTER_AUTH_SECRET": SECRET}, "DATABASE_URL is required in production (PostgreSQL)"),
    ({"JWT_LEEWAY_SECONDS": "86400"}, "JWT_LEEWAY_SECONDS must be at most 300, got 86400"),
    ({"GUNICORN_WORKERS": "two"}, "GUNICORN_WORKERS must be a whole number, got 'two'"),
    # serve.py's mark that it checked, left from another process: checked all the same
    ({"JWT_LEEWAY_SECONDS": "86400", serve.PREFLIGHT_PASSED: "1"}, "JWT_LEEWAY_SECONDS must be at most 300, got 86400"),
])
def test_gunicorn_started_bare_refuses_a_bad_setting_before_any_worker(env, line):
    """`gunicorn -c gunicorn.conf.py wsgi:app`, as the file's "Run with:" says, without serve.py:
    the master stops with the one line, never starting a worker that would fail again and again."""
    clean = {k: v for k, v in os.environ.items() if k not in SERVE_VARIABLES}
    command = [str(Path(sys.executable).parent / "gunicorn"), "-c", "gunicorn.conf.py", "wsgi:app"]
    started = time.monotonic()
    process = subprocess.Popen(command, cwd=ROOT, env={**clean, "GUNICORN_BIND": f"127.0.0.1:{free_port()}", **env},
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = process.communicate(timeout=20)
    except subprocess.TimeoutExpired:  # still running: its workers are failing to boot, again and again
        process.terminate()
        stdout, stderr = process.communicate(timeout=30)
    took = time.monotonic() - started
    print(f"\nexit {process.returncode} after {took:.1f} s\nstdout: {stdout[:2000]}\nstderr: {stderr[:2000]}")
    assert process.returncode == 78
    assert stderr.splitlines() == [f"taskgate: configuration error: {line}"]
    assert stdout == ""
    assert took < 15


@pytest.mark.parametrize("skip_wait", ["0", "1"])
def test_the_entrypoint_passes_a_configuration_error_on_as_it_is(skip_wait):
    """docker/entrypoint.sh run with sh (no Docker): a bad setting stops `flask db wait` (or, the
    wait skipped, `flask db upgrade`) with the app's one line and 78, and the entrypoint adds no
    line of its own about a database it never tried."""
    clean = {k: v for k, v in os.environ.items() if k not in SERVE_VARIABLES}
    env = {**clean, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "JWT_LEEWAY_SECONDS": "86400",
           "DATABASE_URL": f"postgresql+psycopg://taskgate@127.0.0.1:{free_port()}/taskgate",  # nothing there
           "DB_WAIT_SECONDS": "0", "SKIP_DB_WAIT": skip_wait, "SKIP_MIGRATIONS": "0"}
    result = subprocess.run(["sh", str(ROOT / "docker" / "entrypoint.sh"), "true"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=60)
    print(f"\nexit {result.returncode}\nstdout: {result.stdout}\nstderr: {result.stderr}")
    assert result.returncode == 78
    *before, last = result.stderr.splitlines()
    assert last == "taskgate: configuration error: JWT_LEEWAY_SECONDS must be at most 300, got 86400"
    steps = [] if skip_wait == "0" else ["SKIP_DB_WAIT=1: not waiting for the database",
                                         "running database migrations (flask --app wsgi db upgrade)"]
    assert [json.loads(line)["message"] for line in before] == steps
    assert result.stdout == ""


@pytest.mark.parametrize("env", [{"FORWARDED_ALLOW_IPS": "*"}, {"FORWARDED_ALLOW_IPS": "10.0.0.0/8, ::1"},
                                 {"GUNICORN_BIND": "[::1]:8000,unix:/run/taskgate.sock,:8080"}])
def test_addresses_that_servers_take_are_accepted(env):
    settings = load_server_settings(env)
    taken = {"FORWARDED_ALLOW_IPS": settings.forwarded_allow_ips, "GUNICORN_BIND": ",".join(settings.bind)}
    assert all(taken[name] == value for name, value in env.items()), (env, taken)


def test_the_address_granian_listens_on(clean_env):
    def address() -> dict[str, object]:
        return serve.listen_address(load_server_settings(os.environ).bind)

    assert address() == {"address": "0.0.0.0", "port": 8000}
    clean_env.setenv("PORT", "9000")
    assert address() == {"address": "0.0.0.0", "port": 9000}
    clean_env.setenv("GUNICORN_BIND", "[::1]:8001,127.0.0.1:8002")
    assert address() == {"address": "::1", "port": 8001}
    clean_env.setenv("GUNICORN_BIND", "unix:/run/taskgate.sock")
    assert address() == {"uds": Path("/run/taskgate.sock")}


def test_granian_raises_a_low_open_file_limit_for_its_connections():
    # A child started at a soft limit of 1024 (as many container runtimes start processes).
    probe = ("import resource, serve; soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE); "
             "print(serve.raise_open_files_limit(5120), resource.getrlimit(resource.RLIMIT_NOFILE)[0], hard)")
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 5120:
        pytest.skip(f"the hard open-file limit here is {hard}")
    result = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60,
                            check=True, preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard)))
    returned, soft_after, _ = (int(word) for word in result.stdout.split())
    assert returned == soft_after == 5120


@pytest.mark.parametrize(("files", "expected"), [
    ({"cpu.max": "max 100000\n"}, None),  # no quota: every CPU of the affinity
    ({"cpu.max": "100000 100000\n"}, 1),  # --cpus 1 (cgroup v2)
    ({"cpu.max": "150000 100000\n"}, 2),  # --cpus 1.5: rounded up
    ({"cpu/cpu.cfs_quota_us": "50000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 1),  # cgroup v1
    ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),  # v1, no quota
])
def test_the_default_worker_count_honours_a_container_cpu_quota(tmp_path, files, expected):
    for name, content in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(content)
    affinity = len(os.sched_getaffinity(0))
    assert cpus_available(tmp_path) == (affinity if expected is None else min(affinity, expected))
