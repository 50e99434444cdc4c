"""The "Running in production" commands of docs/DEPLOY.md are the ones the tests run."""

from __future__ import annotations

import re

from tests.support.containers import BASE_MIRROR, BASE_PACKAGES, BASE_SUITE, RUN_OPTIONS
from tests.support.nginx import SUBSTITUTED
from tests.support.servers import ROOT

DEPLOY = ROOT / "docs" / "DEPLOY.md"


def production_commands() -> str:
    document = DEPLOY.read_text()
    assert "\n## Running in production\n" in document, f"{DEPLOY} has no 'Running in production' section"
    section = document.split("\n## Running in production\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```sh\n(.*?)```", section, re.S)
    return " ".join(" ".join(blocks).replace("\\\n", " ").split())


def test_the_deploy_guide_runs_the_image_with_the_tests_flags():
    commands = production_commands()
    assert " ".join(RUN_OPTIONS) in commands
    assert 'docker build --secret id=ca,src="$PIP_CERT"' in commands


def test_the_deploy_guide_makes_the_base_image_as_the_tests_do():
    recipe = f"debootstrap --variant=minbase --include={','.join(BASE_PACKAGES)} {BASE_SUITE} rootfs {BASE_MIRROR}"
    assert recipe in production_commands()
    assert "--build-arg PYTHON_IMAGE=taskgate-base/" in production_commands()


def test_the_deploy_guide_renders_the_nginx_template_as_the_tests_do():
    assert f"envsubst '{SUBSTITUTED}' < deploy/nginx/templates/default.conf.template" in production_commands()
    assert "docker compose config" in production_commands()


def test_the_readme_leaves_production_to_the_deploy_guide():
    readme = (ROOT / "README.md").read_text()
    assert "## Running in production" not in readme
    assert "(docs/DEPLOY.md)" in readme
