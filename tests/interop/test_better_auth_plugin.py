"""The @taskgate/better-auth plugin's own tests (integrations/better-auth/test/, node:test) run
against the real, pinned better-auth package and a stub receiver that verifies every logout
token with jose against Better Auth's JWKS; and its hand-written types checked by tsc."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def run(args: list[str], cwd: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def test_the_plugin_node_tests_pass(plugin_dev_ready):
    files = sorted(str(p.relative_to(plugin_dev_ready)) for p in Path(plugin_dev_ready, "test").glob("*.test.js"))
    assert files, "no node tests found"
    proc = run([shutil.which("node") or "node", "--test", *files], plugin_dev_ready, timeout=600)
    summary = dict(re.findall(r"^# (tests|pass|fail|cancelled|skipped|todo) (\d+)$", proc.stdout, re.M))
    failed = re.findall(r"^not ok \d+ - (.*)$", proc.stdout, re.M)
    assert proc.returncode == 0 and not failed, f"failed: {failed}\n{proc.stdout[-6000:]}\n{proc.stderr[-2000:]}"
    # The suite ran for real: every test of the files passed, none skipped.
    declared = sum(len(re.findall(r"^test\(", Path(plugin_dev_ready, f).read_text(), re.M)) for f in files)
    assert int(summary["tests"]) == int(summary["pass"]) == declared, summary


def test_the_plugin_types_compile_against_better_auths(plugin_dev_ready):
    tsc = Path(plugin_dev_ready, "node_modules", ".bin", "tsc")
    proc = run([str(tsc), "-p", "test/types"], plugin_dev_ready, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
