"""The image, built and run as production runs it: a private dockerd, the base image made from
Debian packages (or reused), `docker build` of the repo's Dockerfile, then the container on the
host's network against this machine's PostgreSQL (a fresh database its entrypoint migrates) and
Redis (a key prefix of its own), with a read-only root file system."""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import SECRET, bearer
from tests.support.containers import RUN_OPTIONS, Dockerd, build_image, ensure_base_image, image_size
from tests.support.servers import ROOT, free_port, post_across_a_sigterm, tasks_titled, wait_until
from tests.support.services import create_postgres_database, redis_key_prefix, require_redis

pytestmark = pytest.mark.integration

IMAGE = "taskgate:test"
# Not in the build context: what .dockerignore leaves out of the copy below (and the image).
NOT_COPIED = {".git", ".venv", "node_modules", "__pycache__", ".pytest_cache", ".ruff_cache", "instance"}


@pytest.fixture(scope="module")
def dockerd() -> Iterator[Dockerd]:
    with Dockerd() as daemon:
        yield daemon
        # Earlier builds' images that lost the tag, and old build cache beyond a bound.
        daemon.docker("image", "prune", "--force", check=False)
        daemon.docker("builder", "prune", "--force", "--keep-storage", "3GB", check=False)


@pytest.fixture(scope="module")
def image(dockerd: Dockerd, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The image built from a copy of the checkout with a `.env` planted in it, which
    .dockerignore must keep out of the image."""
    base = ensure_base_image(dockerd)
    context = tmp_path_factory.mktemp("context") / "taskgate"
    shutil.copytree(ROOT, context, symlinks=True, ignore=lambda _dir, names: [n for n in names if n in NOT_COPIED])
    (context / ".env").write_text("BETTER_AUTH_SECRET=planted-in-the-build-context-never-in-an-image\n")
    seconds = build_image(dockerd, context, IMAGE, base)
    print(f"\nimage {IMAGE} on {base}: built in {seconds:.1f} s, {image_size(dockerd, IMAGE) / 1e6:.0f} MB")
    return IMAGE


@dataclass
class Container:
    dockerd: Dockerd
    id: str
    url: str
    env: dict[str, str]

    def state(self, field: str) -> str:
        return self.dockerd.inspect(self.id, "{{json .State." + field + "}}")

    def logs(self) -> str:
        result = self.dockerd.docker("logs", self.id, timeout=30)
        return result.stdout + result.stderr


@pytest.fixture(scope="module")
def container_env() -> Iterator[dict[str, str]]:
    url, drop = create_postgres_database()
    with redis_key_prefix("taskgate-container") as prefix:
        yield {
            "DATABASE_URL": url, "REDIS_URL": require_redis(), "REDIS_KEY_PREFIX": prefix,
            "BETTER_AUTH_SECRET": SECRET, "METRICS_TOKEN": secrets.token_urlsafe(24),
            "GUNICORN_WORKERS": "2", "LOG_LEVEL": "INFO", "DB_WAIT_SECONDS": "30",
            "RATE_LIMIT_USER": "1000000/minute", "RATE_LIMIT_AUTH_FAILURES": "1000000/minute",
            "RATE_LIMIT_IP": "1000000/minute",  # the readiness polls
        }
    drop()


def start(dockerd: Dockerd, image: str, env: dict[str, str], *options: str) -> Container:
    port = free_port()
    env = {**env, "PORT": str(port), "GUNICORN_BIND": f"127.0.0.1:{port}"}
    container = Container(dockerd, dockerd.run(image, env, *RUN_OPTIONS, *options), f"http://127.0.0.1:{port}", env)
    try:
        wait_until(lambda: requests.get(f"{container.url}/readyz", timeout=1).status_code == 200, 90,
                   "the container's service")
    except TimeoutError:
        logs = container.logs()
        dockerd.docker("rm", "--force", container.id, check=False)
        raise AssertionError(f"the container did not get ready:\n{logs[-4000:]}") from None
    return container


@pytest.fixture(scope="module")
def app_container(dockerd: Dockerd, image: str, container_env: dict[str, str]) -> Iterator[Container]:
    # The image's own HEALTHCHECK command, checked every 2 s instead of 15 s to keep the test short.
    container = start(dockerd, image, container_env, "--health-interval", "2s")
    yield container
    dockerd.docker("rm", "--force", container.id, check=False)


def test_health_then_the_healthcheck_turns_healthy(app_container):
    assert requests.get(f"{app_container.url}/healthz", timeout=5).json() == {"status": "ok"}
    ready = requests.get(f"{app_container.url}/readyz", timeout=5).json()
    assert ready["checks"] == {"database": "ok", "redis": "ok"}
    wait_until(lambda: json.loads(app_container.state("Health"))["Status"] == "healthy", 60, "a healthy container")
    health = json.loads(app_container.state("Health"))
    assert health["FailingStreak"] == 0 and health["Log"][-1]["ExitCode"] == 0


def test_crud_logout_and_an_admin_revocation(app_container, make_token):
    url = app_container.url
    user = f"user-{uuid.uuid4().hex[:8]}"
    headers = bearer(make_token(user))
    created = requests.post(f"{url}/api/v1/tasks", json={"title": "in a container", "priority": "high"},
                            headers=headers, timeout=5)
    assert created.status_code == 201, created.text
    task_url = f"{url}{created.headers['Location']}"
    assert requests.get(task_url, headers=headers, timeout=5).json()["title"] == "in a container"
    assert requests.patch(task_url, json={"description": "patched"}, headers=headers, timeout=5).status_code == 200
    assert requests.patch(f"{task_url}/complete", headers=headers, timeout=5).json()["completed"] is True
    assert requests.put(task_url, json={"title": "replaced"}, headers=headers, timeout=5).json()["completed"] is False
    listed = requests.get(f"{url}/api/{user}/tasks", headers=headers, timeout=5)
    assert [task["title"] for task in listed.json()] == ["replaced"] and listed.headers["X-Total-Count"] == "1"
    assert requests.delete(task_url, headers=headers, timeout=5).status_code == 204
    assert requests.get(task_url, headers=headers, timeout=5).status_code == 404

    assert requests.post(f"{url}/api/v1/auth/logout", headers=headers, timeout=5).status_code == 204
    after_logout = requests.get(f"{url}/api/v1/tasks", headers=headers, timeout=5)
    assert after_logout.status_code == 401 and after_logout.json()["code"] == "token_revoked"

    other_device = bearer(make_token(user, iat=int(time.time()) - 5))
    assert requests.get(f"{url}/api/v1/tasks", headers=other_device, timeout=5).status_code == 200
    admin = bearer(make_token("ops-admin", role="admin"))
    revoked = requests.post(f"{url}/api/v1/admin/users/{user}/revoke", headers=admin, timeout=5)
    assert revoked.status_code == 200 and revoked.json()["user_id"] == user
    rejected = requests.get(f"{url}/api/v1/tasks", headers=other_device, timeout=5)
    assert rejected.status_code == 401 and rejected.json()["code"] == "token_revoked"


def metric(url: str, token: str, name: str, labels: dict[str, str]) -> float:
    response = requests.get(f"{url}/metrics", headers=bearer(token), timeout=5)
    assert response.status_code == 200, response.text
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    return 0.0


def test_metrics_count_every_request_whichever_worker_served_it(app_container, make_token):
    url, token = app_container.url, app_container.env["METRICS_TOKEN"]
    labels = {"method": "POST", "route": "/api/v1/tasks", "status": "201"}
    before = metric(url, token, "taskgate_http_requests_total", labels)
    headers = bearer(make_token(f"metrics-{uuid.uuid4().hex[:8]}"))
    for number in range(6):  # new connections each time: the kernel spreads them over both workers
        response = requests.post(f"{url}/api/v1/tasks", json={"title": f"t{number}"}, headers=headers, timeout=5)
        assert response.status_code == 201
    assert metric(url, token, "taskgate_http_requests_total", labels) == before + 6


def test_every_process_runs_as_uid_10001(app_container):
    assert app_container.dockerd.inspect(app_container.id, "{{.Config.User}}") == "10001:10001"
    rows = [row.split(None, 2)[1:] for row in
            app_container.dockerd.docker("top", app_container.id, "-eo", "pid,uid,args").stdout.splitlines()[1:]]
    assert {uid for uid, _ in rows} == {"10001"}  # also a HEALTHCHECK probe, if one is running
    assert len([args for _, args in rows if "gunicorn" in args]) == 3  # the master and two workers


def test_the_root_file_system_is_read_only(app_container):
    assert app_container.dockerd.inspect(app_container.id, "{{.HostConfig.ReadonlyRootfs}}") == "true"
    attempt = app_container.dockerd.docker("exec", app_container.id, "python", "-c",
                                           "open('/app/instance/x', 'w')", check=False)
    assert attempt.returncode != 0 and "Read-only file system" in attempt.stderr


def test_the_output_is_json_lines_without_a_secret(app_container):
    output = app_container.logs()
    entries = [json.loads(line) for line in output.splitlines() if line.strip()]  # one format, every line
    messages = {(entry["logger"], entry["message"]) for entry in entries}
    assert ("taskgate.entrypoint", "migrations done") in messages
    assert any(logger == "gunicorn.error" and message.startswith("Booting worker") for logger, message in messages)
    assert any(entry["logger"] == "taskgate.access" for entry in entries)
    assert SECRET not in output and app_container.env["METRICS_TOKEN"] not in output


def test_sigterm_drains_the_request_in_flight_then_exits_0(dockerd, image, container_env, make_token):
    container = start(dockerd, image, container_env)
    try:
        response, title = post_across_a_sigterm(
            container.url, make_token("drain-user"),
            terminate=lambda: dockerd.docker("kill", "--signal", "TERM", container.id),
            running=lambda: container.state("Running") == "true")
        assert response.startswith(b"HTTP/1.1 201 "), response[:200]
        exit_code = dockerd.docker("wait", container.id, timeout=40).stdout.strip()
        logs = container.logs()
    finally:
        dockerd.docker("rm", "--force", container.id, check=False)
    assert exit_code == "0", logs[-3000:]
    assert tasks_titled(container_env["DATABASE_URL"], title) == 1
    assert any(json.loads(line)["message"] == "Handling signal: term" for line in logs.splitlines() if line)


def test_the_image_serves_under_granian_with_server_granian(dockerd, image, container_env, make_token):
    container = start(dockerd, image, {**container_env, "SERVER": "granian"})
    try:
        headers = bearer(make_token(f"granian-{uuid.uuid4().hex[:8]}"))
        created = requests.post(f"{container.url}/api/v1/tasks", json={"title": "under granian"}, headers=headers,
                                timeout=5)
        assert created.status_code == 201, created.text
        assert requests.post(f"{container.url}/api/v1/auth/logout", headers=headers, timeout=5).status_code == 204
        assert requests.get(f"{container.url}/api/v1/tasks", headers=headers, timeout=5).status_code == 401
        token = container.env["METRICS_TOKEN"]
        assert metric(container.url, token, "taskgate_http_requests_total",
                      {"method": "POST", "route": "/api/v1/tasks", "status": "201"}) >= 1
        rows = [row.split(None, 2)[1:] for row in
                dockerd.docker("top", container.id, "-eo", "pid,uid,args").stdout.splitlines()[1:]]
        assert {uid for uid, _ in rows} == {"10001"}
        dockerd.docker("kill", "--signal", "TERM", container.id)
        exit_code = dockerd.docker("wait", container.id, timeout=40).stdout.strip()
        logs = container.logs()
    finally:
        dockerd.docker("rm", "--force", container.id, check=False)
    assert exit_code == "0", logs[-3000:]
    entries = [json.loads(line) for line in logs.splitlines() if line.strip()]  # one format, every line
    assert any(entry["logger"].startswith("_granian") for entry in entries)
    assert any(entry["logger"] == "taskgate.access" for entry in entries)


def proxy_ca_lines(dockerd: Dockerd, image: str) -> list[str]:
    """One distinctive line of each certificate in PIP_CERT that the image's own CA bundle
    lacks: the proxy's CA, which the build used and the image must not hold."""
    ca = os.environ.get("PIP_CERT")
    if not ca:
        return []
    pem = re.compile(r"-----BEGIN CERTIFICATE-----\n(.*?)-----END CERTIFICATE-----", re.S)
    image_bundle = dockerd.docker("run", "--rm", "--network", "none", "--entrypoint", "cat", image,
                                  "/etc/ssl/certs/ca-certificates.crt", check=False).stdout
    known = set(pem.findall(image_bundle))
    extra = [body for body in pem.findall(Path(ca).read_text()) if body not in known]
    return [body.splitlines()[len(body.splitlines()) // 2] for body in extra]


INSPECT_IMAGE = r"""
import importlib.util, json, os, shutil, sys
from pathlib import Path
markers = [line.encode() for line in json.loads(os.environ["CA_LINES"])]
holding_ca = []
for top in ("/app", "/opt", "/etc", "/usr", "/root", "/home", "/tmp", "/var", "/run"):
    for directory, _dirs, files in os.walk(top):
        for name in files:
            path = os.path.join(directory, name)
            if os.path.islink(path) or not os.path.isfile(path):
                continue
            try:
                data = open(path, "rb").read()
            except OSError:
                continue
            if any(marker in data for marker in markers):
                holding_ca.append(path)
print(json.dumps({
    "uid": os.getuid(),
    "compilers": [n for n in ("gcc", "cc", "c++", "g++", "clang", "tcc", "make", "as", "ld") if shutil.which(n)],
    "app": sorted(os.listdir("/app")),
    "env_files": [str(p) for p in Path("/app").rglob(".env*")],
    "tests": [str(p) for p in Path("/app").rglob("*") if p.name.startswith("test")],
    "fakeredis": importlib.util.find_spec("fakeredis") is not None,
    "secret_mount": os.path.exists("/run/secrets/ca"),
    "holding_ca": holding_ca,
}))
"""


def test_the_image_holds_no_compiler_no_tests_no_env_and_no_fakeredis(dockerd, image):
    ca_lines = proxy_ca_lines(dockerd, image)
    result = dockerd.docker("run", "--rm", "--network", "none", "--env", "CA_LINES", "--entrypoint", "python", image,
                            "-c", INSPECT_IMAGE, env={"CA_LINES": json.dumps(ca_lines)})
    found = json.loads(result.stdout)
    assert found["uid"] == 10001
    assert found["compilers"] == []
    assert {"app", "blueprints", "migrations", "wsgi.py", "gunicorn.conf.py", "docker"} <= set(found["app"])
    assert "tests" not in found["app"] and found["tests"] == []
    assert found["env_files"] == []
    assert not {"requirements-dev.txt", "bench", ".git"} & set(found["app"])
    assert found["fakeredis"] is False
    assert found["secret_mount"] is False and found["holding_ca"] == []
