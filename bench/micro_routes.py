"""In-process cost of each route of the mixed workload, in µs per request, with the app
called straight through WSGI (no server, no client) against real PostgreSQL and Redis in
production mode (rate limits on, raised so they never answer 429):

    .venv/bin/python bench/micro_routes.py [--requests 2000] [--profile list]

`/healthz` is measured in the same rounds as the baseline; rounds alternate between kinds
so machine noise hits all alike, and medians are reported. `--profile KIND` prints the
cProfile of that kind (`--sort tottime` for self time), for finding what to make leaner.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import secrets
import statistics
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg  # noqa: E402
from flask import Flask  # noqa: E402

from app.cli import mint_token  # noqa: E402
from app.factory import create_app  # noqa: E402
from bench.run import PG_ADMIN_URL, seed_postgresql, user_id  # noqa: E402

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")


def environ(method: str, path: str, token: str, body: bytes = b"", query: str = "") -> dict:
    env = {
        "REQUEST_METHOD": method, "PATH_INFO": path, "QUERY_STRING": query, "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8000", "SERVER_PROTOCOL": "HTTP/1.1", "REMOTE_ADDR": "127.0.0.1",
        "wsgi.url_scheme": "http", "wsgi.input": io.BytesIO(body), "wsgi.errors": sys.stderr,
        "wsgi.multithread": True, "wsgi.multiprocess": True, "wsgi.run_once": False,
        "HTTP_HOST": "127.0.0.1:8000", "HTTP_AUTHORIZATION": f"Bearer {token}",
    }
    if body:
        env["CONTENT_TYPE"] = "application/json"
        env["CONTENT_LENGTH"] = str(len(body))
    return env


def call(app, env: dict, expected: int) -> None:
    status: list[str] = []
    result = app(env, lambda s, _h, _e=None: status.append(s))
    try:
        b"".join(result)
    finally:
        if hasattr(result, "close"):
            result.close()
    if int(status[0][:3]) != expected:
        raise SystemExit(f"{env['REQUEST_METHOD']} {env['PATH_INFO']}: {status[0]}")


def send(app: Flask, kind: str, token: str, u: int, i: int) -> None:
    """One request of `kind` as user `u` (the i-th sent), checked for its expected status."""
    if kind == "healthz":
        call(app, environ("GET", "/healthz", token), 200)
    elif kind == "list":
        call(app, environ("GET", "/api/v1/tasks", token, query="limit=20"), 200)
    elif kind == "create":
        call(app, environ("POST", "/api/v1/tasks", token, b'{"title":"bench","priority":"high"}'), 201)
    elif kind == "toggle":
        call(app, environ("PATCH", f"/api/v1/tasks/{u * 20 + 1 + i % 20}/complete", token), 200)
    else:
        call(app, environ("GET", "/api/v1/auth/me", token), 200)


@contextmanager
def production_app() -> Iterator[tuple[Flask, str, str]]:
    """The app in production mode on a fresh, migrated PostgreSQL database (dropped after)
    and real Redis: (app, its HS256 secret, the database's plain URL for seeding)."""
    stamp = f"{int(time.time())}_{os.getpid()}"
    db_name = f"taskgate_micro_{stamp}"
    plain_url = f"{PG_ADMIN_URL.rsplit('/', 1)[0]}/{db_name}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{db_name}"')
    try:
        from alembic import command

        from app.cli import alembic_config

        url = plain_url.replace("postgresql://", "postgresql+psycopg://", 1)
        command.upgrade(alembic_config(url), "head")
        secret = secrets.token_urlsafe(48)
        yield create_app({"APP_ENV": "production", "DATABASE_URL": url, "BETTER_AUTH_SECRET": secret,
                          "REDIS_URL": REDIS_URL, "REDIS_KEY_PREFIX": f"taskgate-micro-{stamp}:",
                          "RATE_LIMIT_IP": "1000000/minute", "RATE_LIMIT_USER": "1000000/minute",
                          "LOG_LEVEL": "WARNING"}), secret, plain_url
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--users", type=int, default=500)
    parser.add_argument("--profile", choices=("healthz", "list", "create", "toggle", "me"))
    parser.add_argument("--sort", default="cumulative", help="profile order: cumulative or tottime")
    parser.add_argument("--top", type=int, default=45, help="profile lines to print")
    args = parser.parse_args()

    with production_app() as (app, secret, plain_url):
        seed_postgresql(plain_url, args.users, 20)
        tokens = [mint_token(secret, user_id(u), ttl=3600) for u in range(args.users)]
        counter = iter(range(10**9))

        def request(kind: str) -> None:
            i = next(counter)
            send(app, kind, tokens[i % args.users], i % args.users, i)

        kinds = ("healthz", "list", "create", "toggle", "me")
        for kind in kinds:  # warm up: every token seen once, pools filled
            for _ in range(args.users):
                request(kind)
        if args.profile:
            profiler = cProfile.Profile()
            profiler.enable()
            for _ in range(args.requests):
                request(args.profile)
            profiler.disable()
            pstats.Stats(profiler).sort_stats(args.sort).print_stats(args.top)
            return
        results: dict[str, list[float]] = {kind: [] for kind in kinds}
        for _ in range(args.rounds):
            for kind in kinds:
                started = time.process_time()
                for _ in range(args.requests):
                    request(kind)
                results[kind].append((time.process_time() - started) / args.requests * 1e6)
        base_us = statistics.median(results["healthz"])
        print(f"{'route':10} {'CPU µs/request':>15} {'over healthz':>13}")
        for kind, values in results.items():
            median = statistics.median(values)
            print(f"{kind:10} {median:15.0f} {median - base_us:+13.0f}")
        mixed = sum(statistics.median(results[k]) * w for k, w in
                    (("list", 0.7), ("create", 0.1), ("toggle", 0.1), ("me", 0.1)))
        print(f"{'mixed':10} {mixed:15.0f} {mixed - base_us:+13.0f}   (70% list, 10% create/toggle/me)")


if __name__ == "__main__":
    main()
