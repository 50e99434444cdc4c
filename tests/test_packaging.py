"""The project as a package: pyproject.toml declares what the code needs, requirements.txt pins
exactly that (the image installs it), and `pip install .` gives a working install."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from importlib.metadata import PackageNotFoundError, distribution

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.conftest import SECRET
from tests.support.servers import ROOT


def declared() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [Requirement(line) for line in project["dependencies"]]


def pinned(path: str = "requirements.txt") -> dict[str, Version]:
    pins = {}
    for line in (ROOT / path).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            requirement = Requirement(line)
            (specifier,) = requirement.specifier
            assert specifier.operator == "==", f"{path}: {line} is not pinned"
            pins[canonicalize_name(requirement.name)] = Version(specifier.version)
    return pins


def closure(roots: list[Requirement]) -> set[str]:
    """Every distribution the roots need on this platform, read from the installed metadata."""
    seen: set[tuple[str, str]] = set()  # (distribution, extra); "" is the distribution itself
    queue = list(roots)
    while queue:
        requirement = queue.pop()
        name = canonicalize_name(requirement.name)
        new = {(name, extra) for extra in {"", *requirement.extras}} - seen
        if not new:
            continue
        seen |= new
        try:
            metadata = distribution(name)
        except PackageNotFoundError:
            raise AssertionError(f"{name} is required but not installed") from None
        for line in metadata.requires or []:
            child = Requirement(line)
            if child.marker is None or any(child.marker.evaluate({"extra": extra}) for _, extra in new):
                queue.append(child)
    return {name for name, _ in seen}


def test_every_declared_dependency_is_pinned_in_the_lock_within_its_range():
    pins = pinned()
    for requirement in declared():
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{requirement.name} is declared in pyproject.toml but not pinned in requirements.txt"
        assert requirement.specifier.contains(pins[name]), \
            f"requirements.txt pins {name}=={pins[name]}, outside pyproject.toml's {requirement.specifier}"


def test_the_lock_is_exactly_what_the_declared_dependencies_pull_in():
    pins = pinned()
    for name, version in pins.items():  # the metadata read below is that of the pinned versions
        assert Version(distribution(name).version) == version, f"the venv has another {name} than the lock"
    needed = closure(declared())
    assert set(pins) - needed == set(), "requirements.txt pins packages nothing declared needs"
    assert needed - set(pins) == set(), "declared dependencies pull in packages requirements.txt does not pin"


def test_test_only_packages_stay_out_of_the_runtime_lock():
    assert "fakeredis" not in pinned()
    assert "fakeredis" in pinned("requirements-dev.txt")


def test_pip_install_dot_gives_a_working_service(tmp_path):
    # A copy of the sources, so the build leaves nothing in the checkout.
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for name in ("app", "blueprints", "migrations"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    target = tmp_path / "site"
    # --no-deps: the dependencies are this venv's (pip still fetches setuptools to build with).
    build = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target),
                            str(source)], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stdout + build.stderr
    assert (target / "migrations" / "script.py.mako").is_file()
    assert not (target / "tests").exists()

    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    env = {**os.environ, "PYTHONPATH": str(target), "APP_ENV": "testing", "BETTER_AUTH_SECRET": SECRET,
           "DATABASE_URL": f"sqlite:///{workdir / 'installed.db'}", "REDIS_URL": ""}
    upgrade = subprocess.run([sys.executable, "-m", "flask", "--app", "app", "db", "upgrade"], cwd=workdir,
                             env=env, capture_output=True, text=True, timeout=120)
    assert upgrade.returncode == 0, upgrade.stderr
    check = ("import os, app, sqlalchemy as sa\n"
             "client = app.create_app().test_client()\n"
             "print(app.__file__)\n"
             "print(client.get('/healthz').status_code, client.get('/api/v1/tasks').status_code)\n"
             "print(sorted(sa.inspect(sa.create_engine(os.environ['DATABASE_URL'])).get_table_names()))\n")
    result = subprocess.run([sys.executable, "-c", check], cwd=workdir, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    location, statuses, tables = result.stdout.splitlines()
    assert location.startswith(str(target))
    assert statuses == "200 401"  # the app answers, and the API still wants a token
    assert "tasks" in tables and "revocations" in tables
