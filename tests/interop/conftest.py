"""Fixtures for interop tests against a real Better Auth server (Node, pinned better-auth)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from app.factory import create_app
from app.services import services
from tests.interop.issuer import PLUGIN_DIR, BetterAuthIssuer, ensure_plugin_dev_installed

pytestmark = pytest.mark.integration


@pytest.fixture(scope="session")
def issuers(node_ready) -> Iterator[dict]:
    """Started on demand, one per (algorithm, definePayload), stopped at the end."""
    started: dict[tuple[str, bool], BetterAuthIssuer] = {}

    def get(alg: str = "EdDSA", define_payload: bool = False) -> BetterAuthIssuer:
        key = (alg, define_payload)
        if key not in started:
            started[key] = BetterAuthIssuer(alg=alg, define_payload=define_payload).start()
        return started[key]

    yield get
    for issuer in started.values():
        issuer.stop()


@pytest.fixture(scope="session")
def plugin_dev_ready(node_ready) -> str:
    """integrations/better-auth with its dev dependencies (``npm ci`` from its lockfile); its path."""
    ensure_plugin_dev_installed()
    return str(PLUGIN_DIR)


def new_email() -> str:
    return f"user-{uuid.uuid4().hex[:12]}@example.com"


@pytest.fixture
def taskgate(database_url: str):
    """taskgate configured as the README says for a Better Auth frontend: BETTER_AUTH_URL
    alone (JWKS URL, issuer and audience default from it), plus the secret if given."""
    apps = []

    def build(issuer: BetterAuthIssuer, secret: str | None = None, **extra: str):
        app = create_app({"APP_ENV": "testing", "DATABASE_URL": database_url, "REDIS_URL": "",
                          "BETTER_AUTH_URL": issuer.url, "BETTER_AUTH_SECRET": secret or "",
                          # None: not set, so the defaults derived from BETTER_AUTH_URL apply
                          "JWKS_URL": None, "JWT_ISSUER": None, "JWT_AUDIENCE": None, "JWT_ALGORITHMS": None,
                          **extra})
        apps.append(app)
        return app.test_client()

    yield build
    for app in apps:
        services(app).database.dispose()
