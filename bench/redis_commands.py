#!/usr/bin/env python3
"""The Redis commands of one authenticated request on each topology, as MONITOR shows them.

    .venv/bin/python bench/redis_commands.py

Starts a standalone Redis, a Sentinel set and a three-master Cluster on loopback (the test
harness, tests/support/redis_topologies.py), and for each one prints what a warmed-up app sends for
one GET /api/v1/auth/me: a Better Auth token (no jti, no sid), one with a jti, and one with a
jti and a sid. Needs PostgreSQL on 127.0.0.1:5432 (a fresh database, dropped at the end).
"""

from __future__ import annotations

import secrets
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from alembic import command  # noqa: E402

from app.cli import alembic_config  # noqa: E402
from app.factory import create_app  # noqa: E402
from app.services import services  # noqa: E402
from tests.conftest import encode  # noqa: E402
from tests.support.redis_topologies import ClusterSet, PersistentRedis, SentinelSet  # noqa: E402
from tests.support.servers import RedisMonitor  # noqa: E402
from tests.support.services import create_postgres_database  # noqa: E402


def tokens(secret: str) -> dict[str, str]:
    now = int(time.time())
    base = {"sub": "monitor-user", "iat": now, "exp": now + 600}
    return {"Better Auth default (no jti, no sid)": encode(base, secret),
            "with jti": encode({**base, "jti": "monitor-jti"}, secret),
            "with jti and sid": encode({**base, "jti": "monitor-jti-2", "sid": "monitor-sid"}, secret)}


def show(name: str, url: str, data_nodes: list[str], database_url: str) -> None:
    secret = secrets.token_urlsafe(48)
    app = create_app({"APP_ENV": "production", "DATABASE_URL": database_url, "REDIS_URL": url,
                      "BETTER_AUTH_SECRET": secret, "METRICS_TOKEN": secrets.token_urlsafe(24), "LOG_LEVEL": "ERROR",
                      "RATE_LIMIT_USER": "1000/minute"})
    client = app.test_client()
    print(f"\n== {name} ({url})")
    for label, token in tokens(secret).items():
        headers = {"Authorization": f"Bearer {token}"}
        assert client.get("/api/v1/auth/me", headers=headers).status_code == 200  # warm: verified, scripts loaded
        monitors = [RedisMonitor(node).__enter__() for node in data_nodes]
        try:
            for monitor in monitors:
                monitor.clear()
            assert client.get("/api/v1/auth/me", headers=headers).status_code == 200
            print(f"  {label}:")
            for node, monitor in zip(data_nodes, monitors, strict=True):
                for words in monitor.commands():
                    shown = [w if len(w) <= 48 else w[:45] + "..." for w in words]
                    print(f"    {node.rsplit(':', 1)[-1].rstrip('/0')}: {' '.join(shown)}")
        finally:
            for monitor in monitors:
                monitor.__exit__()
    services(app).database.dispose()


def main() -> None:
    database_url, drop = create_postgres_database()
    try:
        command.upgrade(alembic_config(database_url), "head")
        with PersistentRedis() as standalone:
            show("standalone", standalone.url, [standalone.url], database_url)
        with SentinelSet() as sentinels:
            host, port = sentinels.master_address()
            master = f"redis://{host}:{port}/0"
            show("Sentinel", sentinels.url, [master], database_url)
        with ClusterSet(masters=3) as cluster:
            show("Cluster, three masters", cluster.url, [node.url for node in cluster.masters], database_url)
    finally:
        drop()


if __name__ == "__main__":
    main()
