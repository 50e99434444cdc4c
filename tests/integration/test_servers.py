"""What every supported server (serve.py: gunicorn, granian) must do as production runs it:
drain the request in flight on SIGTERM and exit 0, write only JSON lines, and add up every
worker's metrics, listen on a unix socket when GUNICORN_BIND names one; and granian drops a
client that never finishes its headers."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time

import pytest
import requests

from tests.conftest import bearer
from tests.integration.conftest import METRICS_TOKEN
from tests.support.servers import (
    ROOT,
    AppServer,
    healthz_over_unix_socket,
    post_across_a_sigterm,
    tasks_titled,
    wait_until,
)

pytestmark = pytest.mark.integration


def test_sigterm_drains_the_request_in_flight_then_exits_0(production_env, make_token, app_server):
    with app_server(production_env, workers=2) as server:
        response, title = post_across_a_sigterm(server.url, make_token("drain-user"),
                                                terminate=lambda: server.process.send_signal(signal.SIGTERM),
                                                running=lambda: server.process.poll() is None)
        assert response.startswith(b"HTTP/1.1 201"), response[:200]
        assert server.process.wait(timeout=30) == 0
    assert tasks_titled(production_env["DATABASE_URL"], title) == 1


def test_every_line_is_json_and_metrics_add_up_every_worker(production_env, make_token, app_server):
    env = {**production_env, "LOG_LEVEL": "INFO"}
    headers = bearer(make_token("metrics-user"))
    with app_server(env, workers=2) as server:
        for _ in range(40):  # new connections: the kernel spreads them over both workers
            assert requests.get(f"{server.url}/api/v1/auth/me", headers=headers, timeout=5).status_code == 200
        metrics = requests.get(f"{server.url}/metrics", headers=bearer(METRICS_TOKEN), timeout=5).text
    counted = [line for line in metrics.splitlines()
               if line.startswith("taskgate_http_requests_total{") and 'route="/api/v1/auth/me"' in line]
    assert sum(float(line.rsplit(" ", 1)[1]) for line in counted) == 40
    entries = [json.loads(line) for line in server.output().splitlines() if line.strip()]  # raises on non-JSON
    assert all({"time", "level", "logger", "message"} <= entry.keys() for entry in entries)
    assert sum(1 for entry in entries if entry["logger"] == "taskgate.access") >= 40


def test_granian_drops_a_client_that_never_finishes_its_headers(production_env):
    # gunicorn's gthread worker has no such deadline: nginx in front holds slow clients (test_nginx).
    with AppServer({**production_env, "GRANIAN_HEADER_TIMEOUT": "2"}, workers=1, server="granian") as server:
        client = socket.create_connection(("127.0.0.1", server.port), timeout=40)
        client.sendall(b"GET /healthz HTTP/1.1\r\nHost: taskgate\r\n")  # and nothing more
        started = time.monotonic()
        try:
            closed = client.recv(65536)
        except (ConnectionResetError, TimeoutError):
            closed = b""
        waited = time.monotonic() - started
        client.close()
        assert waited < 10, f"the connection was held {waited:.0f} s (header timeout 2 s)"
        assert not closed or b" 408 " in closed.split(b"\r\n", 1)[0] or b" 400 " in closed.split(b"\r\n", 1)[0]
        assert requests.get(f"{server.url}/healthz", timeout=5).status_code == 200


def test_a_unix_socket_in_gunicorn_bind_is_where_the_server_listens(production_env, app_server, tmp_path):
    path = tmp_path / "taskgate.sock"  # granian listens on the first address, gunicorn on all
    server = app_server(production_env, workers=1)
    server.env["GUNICORN_BIND"] = f"unix:{path}"
    server.process = subprocess.Popen([sys.executable, "serve.py"], cwd=ROOT, env=server.env, stdout=server.log,
                                      stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: healthz_over_unix_socket(path).startswith(b"HTTP/1.1 200"), 30, server.server)
    except TimeoutError:
        raise AssertionError(f"{server.server} did not answer on {path}:\n{server.output()[-3000:]}") from None
    finally:
        server.__exit__(None, None, None)
