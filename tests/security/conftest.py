"""Fixtures of the security suites: a guard that no attack test writes anything or opens a
socket, on top of the project's fixtures in tests/conftest.py."""

from __future__ import annotations

import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.attacks import rows


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "writes: the test legitimately creates rows (skips the nothing-written guard)")
    # Hypothesis keeps caches (constants, unicode data) in ./.hypothesis even without an example
    # database; keep the work tree clean.
    from hypothesis.configuration import set_hypothesis_home_dir

    set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "taskgate-hypothesis")


@pytest.fixture
def nothing_written(request: pytest.FixtureRequest, app):
    """After the test: no task and no revocation exists (an attack never writes)."""
    yield
    if request.node.get_closest_marker("writes") is None:
        assert rows(app, "tasks") == 0, "an attack created a task"
        assert rows(app, "revocations") == 0, "an attack recorded a revocation"


class Outbound:
    """Every connection attempted through `socket.socket` while the guard is on."""

    def __init__(self) -> None:
        self.attempts: list[tuple] = []
        self.allowed: set[tuple] = set()


@pytest.fixture
def outbound(monkeypatch: pytest.MonkeyPatch) -> Iterator[Outbound]:
    """Records (and refuses) every outbound connection the app tries; `allowed` addresses
    (a local server a test started on purpose) are recorded and let through."""
    seen = Outbound()
    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex

    def connect(self, address):
        seen.attempts.append(address)
        if tuple(address[:2]) not in seen.allowed:
            raise ConnectionRefusedError(f"outbound connection to {address!r} during an attack test")
        return real_connect(self, address)

    def connect_ex(self, address):
        seen.attempts.append(address)
        if tuple(address[:2]) not in seen.allowed:
            return 111
        return real_connect_ex(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    yield seen
    refused = [a for a in seen.attempts if tuple(a[:2]) not in seen.allowed]
    assert refused == [], f"the app tried to connect to {refused}"
