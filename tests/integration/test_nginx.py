"""nginx in front of the app (gunicorn or granian), the documented production topology, with the repo's configuration
(tests/support/nginx.py): slow clients are held at nginx, instances are balanced and a dead one is
routed around, the client's address reaches the app, and what must not pass does not."""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from tests.conftest import bearer
from tests.support.nginx import Nginx
from tests.support.servers import AppServer, free_port, wait_until

pytestmark = pytest.mark.integration

MAX_CONTENT_LENGTH = 64 * 1024  # the app's default, which the configuration's client_max_body_size matches


@pytest.fixture
def proxied_env(production_env: dict[str, str]) -> dict[str, str]:
    """The app as it runs behind nginx: one trusted proxy hop."""
    return {**production_env, "PROXY_HOPS": "1", "LOG_LEVEL": "INFO"}


def address(server: AppServer) -> str:
    return f"127.0.0.1:{server.port}"


class SlowHeaderClients:
    """`count` connections that each send one byte of a request header per second, never ending it."""

    def __init__(self, port: int, count: int) -> None:
        self.sockets = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(count)]
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._drip, daemon=True)

    def _drip(self) -> None:
        header = b"GET /healthz HTTP/1.1\r\nHost: taskgate\r\nX-Padding: " + b"a" * 10_000
        for byte in header:
            for client in self.sockets:
                try:
                    client.send(bytes([byte]))
                except OSError:
                    pass  # a peer that gave up on us
            if self.stopped.wait(1):
                return

    def __enter__(self) -> SlowHeaderClients:
        self.thread.start()
        time.sleep(2.5)  # every connection has sent its first bytes
        return self

    def __exit__(self, *_exc) -> None:
        self.stopped.set()
        self.thread.join(timeout=5)
        for client in self.sockets:
            client.close()


def healthz_latencies(url: str, count: int, timeout: float) -> list[float | None]:
    """Seconds each /healthz took on a new connection; None for no answer within `timeout`."""
    latencies: list[float | None] = []
    for _ in range(count):
        started = time.monotonic()
        try:
            requests.get(f"{url}/healthz", timeout=timeout).raise_for_status()
            latencies.append(time.monotonic() - started)
        except requests.exceptions.Timeout:
            latencies.append(None)
    return latencies


def test_fifty_slow_header_clients_do_not_delay_anyone_behind_nginx(proxied_env, app_server):
    with app_server(proxied_env, workers=2) as app, Nginx([address(app)]) as proxy:
        # Straight at gunicorn, the slow clients hold every request thread: /healthz gets no answer.
        # (granian, which reads headers apart from the app's threads, answers.)
        with SlowHeaderClients(app.port, 50):
            direct = healthz_latencies(app.url, 1, timeout=3)
        # The same clients at nginx: they wait there, and the others' requests go straight through.
        time.sleep(1)  # gunicorn's threads are free again (their clients closed)
        with SlowHeaderClients(proxy.port, 50):
            through_nginx = healthz_latencies(proxy.url, 20, timeout=3)
            direct_meanwhile = healthz_latencies(app.url, 5, timeout=3)
    print(f"\n/healthz with 50 slow-header clients: {app.server} alone {direct}; behind nginx max "
          f"{max(filter(None, through_nginx), default=None):.3f} s of {len(through_nginx)}")
    if app.server == "gunicorn":  # a gthread thread reads a started request's headers with no deadline
        assert direct == [None]
    else:  # granian reads headers in its Rust I/O, holding none of the threads that run the app
        assert None not in direct
    assert None not in through_nginx and max(through_nginx) < 0.5
    assert None not in direct_meanwhile  # nginx passed none of the incomplete requests on


@dataclass
class Outcome:
    method: str
    request_id: str
    started: float
    ended: float
    status: int | None  # None: no HTTP answer at all
    error: str = ""


def children(pid: int) -> list[int]:
    return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def gone(pid: int) -> bool:
    """Dead: no longer in /proc, or a zombie (its sockets are closed by then)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def drive(url: str, token: str, until: float, outcomes: list[Outcome]) -> None:
    """A closed loop of reads and writes on one keep-alive connection to nginx."""
    with requests.Session() as session:
        number = 0
        while time.monotonic() < until:
            number += 1
            method = "POST" if number % 2 else "GET"
            request_id = uuid.uuid4().hex
            headers = {**bearer(token), "X-Request-ID": request_id}
            started = time.monotonic()
            try:
                if method == "POST":
                    response = session.post(f"{url}/api/v1/tasks", json={"title": f"load {number}"},
                                            headers=headers, timeout=10)
                else:
                    response = session.get(f"{url}/api/v1/tasks?limit=5", headers=headers, timeout=10)
                status, error = response.status_code, ""
            except requests.exceptions.RequestException as exception:
                status, error = None, repr(exception)
            outcomes.append(Outcome(method, request_id, started, time.monotonic(), status, error))


@pytest.fixture
def three_instances(proxied_env: dict[str, str], app_server) -> Iterator[tuple[list[AppServer], Nginx]]:
    with ExitStack() as stack:
        instances = [stack.enter_context(app_server(proxied_env, workers=1)) for _ in range(3)]
        proxy = stack.enter_context(Nginx([address(instance) for instance in instances]))
        yield instances, proxy


def test_killing_an_instance_under_load_fails_only_requests_it_had_in_flight(three_instances, make_token):
    instances, proxy = three_instances
    victim = instances[1]
    token = make_token(f"load-{uuid.uuid4().hex[:8]}")
    outcomes: list[Outcome] = []
    until = time.monotonic() + 6
    drivers = [threading.Thread(target=drive, args=(proxy.url, token, until, outcomes)) for _ in range(6)]
    for driver in drivers:
        driver.start()
    time.sleep(2)
    # A crash, not a shutdown: the master and its worker get SIGKILL together.
    pids = [*children(victim.process.pid), victim.process.pid]
    killed_at = time.monotonic()
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    while not all(gone(pid) for pid in pids):  # a busy machine may take a while to run their exit
        assert time.monotonic() < killed_at + 5, "the killed instance is still running"
        time.sleep(0.001)
    dead_at = time.monotonic()
    for driver in drivers:
        driver.join(timeout=30)
    logged = {entry["request_id"]: entry for entry in proxy.requests_logged()}
    unlogged = {"upstream": "", "status": None}

    expected = {"GET": 200, "POST": 201}
    failed = [outcome for outcome in outcomes if outcome.status != expected[outcome.method]]
    upstream = {o.request_id: logged.get(o.request_id, unlogged)["upstream"] for o in outcomes}
    served_by_victim = [o for o in outcomes if upstream[o.request_id] == address(victim) and o.ended < killed_at]
    retried = [o for o in outcomes if address(victim) in upstream[o.request_id] and "," in upstream[o.request_id]]
    print(f"\n{len(outcomes)} requests through nginx, one of 3 instances killed after 2 s (dead "
          f"{(dead_at - killed_at) * 1000:.0f} ms later): {len(failed)} failed "
          f"({[(o.method, o.status, o.error[:60]) for o in failed]}), {len(retried)} passed on to another instance")
    assert len(served_by_victim) > 10  # the victim had its share of the load before
    for outcome in failed:
        # Only a request the victim had taken on as it died, or that nginx sent on one of its
        # kept-alive connections before its event loop saw them closed. nginx resends a read
        # (unless its response had begun: then the client sees it cut off), never a write.
        assert outcome.started <= dead_at + 0.1 and outcome.ended >= killed_at, outcome
        assert upstream[outcome.request_id].split(", ")[-1] == address(victim), logged.get(outcome.request_id)
        assert (outcome.method == "POST" and outcome.status == 503) or outcome.status is None, outcome
    assert len([o for o in outcomes if o.started > killed_at]) > 50  # the others carried on


def test_a_revocation_made_through_nginx_holds_on_every_instance(three_instances, make_token):
    instances, proxy = three_instances
    user = f"rev-{uuid.uuid4().hex[:8]}"
    logged_out = bearer(make_token(user))
    other_session = bearer(make_token(user, iat=int(time.time()) - 5))
    admin = bearer(make_token("ops-admin", role="admin"))

    assert requests.post(f"{proxy.url}/api/v1/auth/logout", headers=logged_out, timeout=5).status_code == 204
    for instance in instances:
        assert requests.get(f"{instance.url}/api/v1/tasks", headers=other_session, timeout=5).status_code == 200
    assert requests.post(f"{proxy.url}/api/v1/admin/users/{user}/revoke", headers=admin, timeout=5).ok
    for url in [instance.url for instance in instances] + [proxy.url] * 3:
        for headers in (logged_out, other_session):
            response = requests.get(f"{url}/api/v1/tasks", headers=headers, timeout=5)
            assert response.status_code == 401 and response.json()["code"] == "token_revoked", url
    # Every instance had a share of the requests nginx passed on.
    upstreams = {entry["upstream"] for entry in proxy.requests_logged()}
    assert {address(instance) for instance in instances} <= upstreams


def logged_access(server: AppServer, request_id: str) -> dict:
    time.sleep(0.3)
    lines = [json.loads(line) for line in server.output().splitlines() if line.startswith("{")]
    (access,) = [line for line in lines if line.get("request_id") == request_id]
    return access


@pytest.mark.parametrize("forged", ["X-Forwarded-For", "X_Forwarded_For"])
def test_the_app_sees_the_clients_address_never_a_forged_one(proxied_env, app_server, forged):
    with app_server(proxied_env, workers=1) as app, Nginx([address(app)]) as proxy:
        request_id = uuid.uuid4().hex
        # From another loopback address than nginx's own, claiming to be someone else.
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=5, source_address=("127.0.0.2", 0)) as client:
            client.sendall(f"GET /healthz HTTP/1.1\r\nHost: taskgate\r\nConnection: close\r\n"
                           f"{forged}: 203.0.113.7\r\nX-Request-ID: {request_id}\r\n\r\n".encode())
            assert client.recv(4096).startswith(b"HTTP/1.1 200 ")
        assert logged_access(app, request_id)["remote_addr"] == "127.0.0.2"


def test_gunicorn_itself_drops_header_names_with_underscores_and_granian_warns(proxied_env, app_server):
    """Straight to the server, no nginx: gunicorn drops `X_Forwarded_For` (it would override the
    proxy's header once both become one WSGI name); granian cannot, and says so at start."""
    with app_server(proxied_env, workers=1) as app:
        request_id = uuid.uuid4().hex
        with socket.create_connection(("127.0.0.1", app.port), timeout=5) as client:
            client.sendall(f"GET /healthz HTTP/1.1\r\nHost: taskgate\r\nConnection: close\r\n"
                           f"X-Forwarded-For: 198.51.100.1\r\nX_Forwarded_For: 203.0.113.7\r\n"
                           f"X-Request-ID: {request_id}\r\n\r\n".encode())
            assert client.recv(4096).startswith(b"HTTP/1.1 200 ")
        access = logged_access(app, request_id)
        if app.server == "gunicorn":
            assert access["remote_addr"] == "198.51.100.1", access
        else:
            assert "the proxy in front must drop header names with underscores" in app.output()


def exchange(port: int, request: bytes) -> tuple[bytes, bytes]:
    """Send `request` exactly as given (HTTP clients refuse or normalise much of what these tests
    send) and read the whole answer: its head and its body."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as client:
        client.sendall(request)
        response = b""
        while chunk := client.recv(65536):
            response += chunk
    head, _, body = response.partition(b"\r\n\r\n")
    return head, body


def header(head: bytes, name: str) -> str | None:
    for line in head.decode("latin-1").split("\r\n")[1:]:
        field, _, value = line.partition(":")
        if field.lower() == name.lower():
            return value.strip()
    return None


def logged_once(proxy: Nginx) -> dict:
    """The one line nginx logged (a fresh nginx that took one request)."""
    wait_until(lambda: proxy.requests_logged(), 5, "nginx's access line")
    (entry,) = proxy.requests_logged()
    return entry


@pytest.mark.parametrize("request_line,extra,status,code", [
    ("GET /healthz%00 HTTP/1.1", "", 400, "bad_request"),
    ("GET /he llo HTTP/1.1", "", 400, "bad_request"),
    ("GET /healthz HTTP/1.1", f"X-Padding: {'a' * 20000}\r\n", 431, "headers_too_large"),
    ("GET /" + "a" * 20000 + " HTTP/1.1", "", 414, "uri_too_long"),
    ("POST /api/v1/tasks HTTP/1.1", "Transfer-Encoding: gzip, chunked\r\n", 501, "not_implemented"),
    ("TRACE /healthz HTTP/1.1", "", 405, "method_not_allowed"),
    ("GET /healthz?probe=1 HTTP/9.9", "", 505, "http_version_not_supported"),
    # The location those errors are answered from: internal, so a client asking for it gets a 404.
    ("GET /_taskgate/error?status=500 HTTP/1.1", "", 404, "not_found"),
])
def test_nginxs_own_errors_are_problem_json_without_an_error_line(proxied_env, app_server, request_line, extra,
                                                                  status, code):
    with app_server(proxied_env, workers=1) as app, Nginx([address(app)]) as proxy:
        head, body = exchange(proxy.port, f"{request_line}\r\nHost: taskgate\r\n{extra}Connection: close\r\n\r\n"
                                          .encode())
        logged = logged_once(proxy)
        errors = (proxy.prefix / "error.log").read_text() if (proxy.prefix / "error.log").exists() else ""
    print(f"\n{request_line[:60]!r} -> {head[:200]!r} {body[:200]!r}\nlogged: {str(logged)[:400]}")
    assert head.split(b"\r\n")[0].split()[1] == str(status).encode()
    assert header(head, "Content-Type") == "application/problem+json"
    problem = json.loads(body)
    assert (problem["status"], problem["code"], problem["type"]) == (status, code, f"urn:taskgate:problem:{code}")
    assert "[error]" not in errors and "[crit]" not in errors, errors
    # The access line names the client's request, not the error location nginx answered it from
    # (a 414's path is what nginx kept of it: the first 8 KiB).
    method, target = request_line.split(" ", 1)
    path = target.rsplit(" ", 1)[0].split("?")[0]  # without the version and the query
    assert logged["method"] == method
    assert logged["path"] == path or (status == 414 and len(logged["path"]) > 8000 and path.startswith(logged["path"]))
    assert (logged["status"], logged["upstream"]) == (status, "")  # nginx answered it itself


def test_no_instance_reachable_is_a_503_problem_to_try_again():
    with Nginx([f"127.0.0.1:{free_port()}"]) as proxy:  # nothing listens there
        head, body = exchange(proxy.port, b"POST /api/v1/tasks?x=1 HTTP/1.1\r\nHost: taskgate\r\n"
                                          b"Content-Length: 2\r\nConnection: close\r\n\r\n{}")
        logged = logged_once(proxy)
    print(f"\n{head!r} {body!r}\nlogged: {logged}")
    assert head.startswith(b"HTTP/1.1 503 ")
    assert (header(head, "Content-Type"), header(head, "Retry-After")) == ("application/problem+json", "1")
    assert json.loads(body)["code"] == "service_unavailable"
    assert (logged["method"], logged["path"], logged["status"]) == ("POST", "/api/v1/tasks", 503)


def test_one_request_id_across_nginx_and_the_app_whatever_the_client_sends(proxied_env, app_server):
    with app_server(proxied_env, workers=1) as app, Nginx([address(app)]) as proxy:
        for sent in ("good-id.1", "not valid!", "x" * 200, ""):
            answered = requests.get(f"{proxy.url}/healthz", headers={"X-Request-ID": sent}, timeout=5)
            request_id = answered.headers["X-Request-ID"]
            assert (request_id == sent) == (sent == "good-id.1"), (sent, request_id)
            access = logged_access(app, request_id)
            assert any(entry["request_id"] == request_id for entry in proxy.requests_logged()), request_id
            assert access["request_id"] == request_id


def raw_get(port: int, path: str, token: str) -> tuple[int, bytes]:
    """GET with the path sent exactly as given (HTTP clients normalise some of these)."""
    head, body = exchange(port, f"GET {path} HTTP/1.1\r\nHost: taskgate\r\nAuthorization: Bearer {token}\r\n"
                                "Connection: close\r\n\r\n".encode())
    return int(head.split()[1]), body


def test_bodies_over_the_apps_limit_and_metrics_stop_at_nginx(proxied_env, make_token, app_server):
    with app_server(proxied_env, workers=1) as app, Nginx([address(app)]) as proxy:
        headers = {**bearer(make_token("big-body")), "Content-Type": "application/json"}
        padding = MAX_CONTENT_LENGTH - len(json.dumps({"title": "t", "description": ""}))
        at_limit = json.dumps({"title": "t", "description": "x" * padding}).encode()
        assert len(at_limit) == MAX_CONTENT_LENGTH
        passed = requests.post(f"{proxy.url}/api/v1/tasks", data=at_limit, headers=headers, timeout=5)
        assert passed.status_code == 422 and passed.json()["code"] == "validation_error"  # the app judged it
        refused = requests.post(f"{proxy.url}/api/v1/tasks", data=at_limit + b" ", headers=headers, timeout=5)
        assert refused.status_code == 413 and refused.headers["Content-Type"] == "application/problem+json"
        assert refused.json()["code"] == "payload_too_large"

        token = proxied_env["METRICS_TOKEN"]
        assert requests.get(f"{app.url}/metrics", headers=bearer(token), timeout=5).status_code == 200
        sent = ("/metrics", "/metrics/", "/metrics?format=text", "//metrics", "/%6Detrics", "/./metrics",
                "/api/../metrics")
        for path in sent:
            status, body = raw_get(proxy.port, path, token)
            assert status == 404 and json.loads(body)["code"] == "not_found", path
        time.sleep(0.3)
        logged = [entry for entry in proxy.requests_logged() if entry["path"] in {p.split("?")[0] for p in sent}]
    print(f"\nlogged: {[(entry['path'], entry['status'], entry['upstream']) for entry in logged]}")
    assert len(logged) == len(sent)  # each as the client sent it
    assert {entry["upstream"] for entry in logged} == {""}  # nginx answered those itself
