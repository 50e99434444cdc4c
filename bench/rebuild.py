#!/usr/bin/env python3
"""How long Redis takes to be rebuilt from the audit table, and what a revocation costs in Redis.

    .venv/bin/python bench/rebuild.py [--rows 1000000]

Seeds a fresh PostgreSQL database with ROWS unexpired revocations (70% by jti, 20% jti-less
tokens by digest, 5% sessions, 5% users, spread over every bucket with their sequences), starts
a private redis-server, and times the app's verification of an empty Redis: every bucket is
rebuilt from the table. Meanwhile another thread keeps checking a revoked token: it must never
pass (503 while the rebuild runs). Prints the rebuild time, Redis's memory per entry, and the
checks' answers. Everything it creates is removed at the end.
"""

from __future__ import annotations

import argparse
import io
import os
import secrets
import sys
import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg  # noqa: E402

from app.errors import ApiError  # noqa: E402
from app.factory import create_app  # noqa: E402
from app.revocation.layout import BUCKETS, bucket_of  # noqa: E402
from app.security.tokens import principal_from_claims  # noqa: E402
from app.services import services  # noqa: E402
from bench.run import PG_ADMIN_URL  # noqa: E402
from tests.support.servers import RedisServer  # noqa: E402


def seed(plain_url: str, rows: int) -> str:
    """ROWS unexpired revocations; returns a jti among them."""
    now = datetime.now(UTC)
    sequences = [0] * BUCKETS
    buffer = io.StringIO()
    sample = None
    for n in range(rows):
        kind = "jti" if n % 20 < 14 else "token" if n % 20 < 18 else "session" if n % 20 == 18 else "user"
        user = f"user-{n % 50_000}"
        target = secrets.token_hex(16) if kind in ("jti", "session") else secrets.token_hex(32) if kind == "token" \
            else user
        bucket = bucket_of(user if kind == "token" else target)
        sequences[bucket] += 1
        cutoff = now.isoformat() if kind == "user" else r"\N"
        expires = (now + timedelta(days=6, seconds=n % 86400)).isoformat()
        buffer.write(f"{kind}\t{target}\t{user}\tbench\t{now.isoformat()}\t{expires}\t{cutoff}\t{bucket}\t"
                     f"{sequences[bucket]}\n")
        if kind == "jti" and sample is None:
            sample = target
    buffer.seek(0)
    with psycopg.connect(plain_url, autocommit=True) as connection, connection.cursor() as cursor:
        with cursor.copy("COPY revocations (kind, target, user_id, actor, created_at, expires_at, cutoff, bucket, seq) "
                         "FROM STDIN") as copy:
            while chunk := buffer.read(1 << 20):
                copy.write(chunk)
        cursor.execute("VACUUM ANALYZE revocations")
    return sample


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args()
    stamp = f"{int(time.time())}_{os.getpid()}"
    db_name = f"taskgate_rebuild_{stamp}"
    plain_url = f"{PG_ADMIN_URL.rsplit('/', 1)[0]}/{db_name}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{db_name}"')
    try:
        from alembic import command

        from app.cli import alembic_config

        url = plain_url.replace("postgresql://", "postgresql+psycopg://", 1)
        command.upgrade(alembic_config(url), "head")
        started = time.monotonic()
        revoked_jti = seed(plain_url, args.rows)
        print(f"seeded {args.rows:,} unexpired revocations in {time.monotonic() - started:.1f} s")
        with RedisServer() as redis_server:
            app = create_app({"APP_ENV": "production", "DATABASE_URL": url, "REDIS_URL": redis_server.url,
                              "BETTER_AUTH_SECRET": secrets.token_urlsafe(48), "LOG_LEVEL": "WARNING",
                              "METRICS_TOKEN": secrets.token_urlsafe(24)})
            found = services(app)
            store, client = found.store, found.store.client.client
            now = int(time.time())
            claims = {"sub": "someone", "iat": now, "exp": now + 600, "jti": revoked_jti}
            principal = principal_from_claims(claims, found.settings)
            before = client.info("memory")["used_memory"]

            answers: Counter[str] = Counter()
            done = threading.Event()

            def keep_checking() -> None:
                while not done.is_set():
                    with app.app_context():
                        try:
                            answers["revoked" if store.check(principal).revoked else "PASSED"] += 1
                        except ApiError as error:
                            answers[str(error.status)] += 1

            def cpu_seconds(pid: int) -> float:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

            redis_pid = redis_server.process.pid
            with app.app_context():
                rebuilding = threading.Thread(target=store.verify)  # an empty Redis: every bucket is rebuilt
                started, cpu, redis_cpu = time.monotonic(), time.process_time(), cpu_seconds(redis_pid)
                rebuilding.start()
                time.sleep(0.2)
                checkers = [threading.Thread(target=keep_checking) for _ in range(2)]
                for checker in checkers:
                    checker.start()
                rebuilding.join()
                rebuild, cpu = time.monotonic() - started, time.process_time() - cpu
                redis_cpu = cpu_seconds(redis_pid) - redis_cpu
                time.sleep(0.5)
                done.set()
                for checker in checkers:
                    checker.join()
                used = client.info("memory")["used_memory"] - before
                entries = client.dbsize()
            found.database.dispose()
            print(f"rebuild of {args.rows:,} rows into an empty Redis: {rebuild:.2f} s "
                  f"({args.rows / rebuild:,.0f} rows/s); CPU: this process {cpu:.1f} s, Redis {redis_cpu:.1f} s "
                  "(the rest: PostgreSQL, the checks)")
            print(f"Redis: {entries:,} keys, {used / 1e6:.1f} MB: {used / args.rows:.0f} bytes per revocation")
            print(f"a revoked token checked meanwhile, answers: {dict(answers)}")
            if answers["PASSED"]:
                raise SystemExit("a revoked token passed during the rebuild")
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')



if __name__ == "__main__":
    main()
