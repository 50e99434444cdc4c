"""In-process cost of authentication, measured against a private redis-server:

- Redis commands per authenticated request (server-side INFO commandstats delta);
- the revocation check's cost per request (real Redis vs. the check switched off);
- an EdDSA/ES256/RS256 JWKS token vs. an HS256 token on the same route.

    .venv/bin/python bench/micro_auth.py [--requests 3000]

Rounds alternate between variants so machine noise hits both alike; medians are reported.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import redis  # noqa: E402

from app.factory import create_app  # noqa: E402
from tests.conftest import SECRET, bearer, encode  # noqa: E402
from tests.support.jwks_server import JwksServer, SigningKey  # noqa: E402
from tests.support.servers import free_port, wait_until  # noqa: E402


def per_request_us(client, headers, n: int) -> float:
    started = time.perf_counter()
    for _ in range(n):
        response = client.get("/api/v1/auth/me", headers=headers)
        assert response.status_code == 200, response.get_json()
    return (time.perf_counter() - started) / n * 1e6


def first_use_us(client, tokens: list[str]) -> float:
    """Each token once: the full verification (signature, claims), nothing cached."""
    started = time.perf_counter()
    for token in tokens:
        response = client.get("/api/v1/auth/me", headers=bearer(token))
        assert response.status_code == 200, response.get_json()
    return (time.perf_counter() - started) / len(tokens) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    port = free_port()
    redis_proc = subprocess.Popen([shutil.which("redis-server"), "--port", str(port), "--save", "", "--appendonly",
                                   "no"], stdout=subprocess.DEVNULL)
    tmp = Path(tempfile.mkdtemp())
    try:
        wait_until(lambda: redis.Redis(port=port).ping(), 10, "redis")
        client_redis = redis.Redis(port=port, decode_responses=True)
        with JwksServer() as jwks:
            keys = {alg: jwks.publish(SigningKey(alg, f"k-{alg}")) for alg in ("EdDSA", "ES256", "RS256")}
            db = tmp / "micro.db"
            from alembic import command

            from app.cli import alembic_config

            command.upgrade(alembic_config(f"sqlite:///{db}"), "head")
            app = create_app({"APP_ENV": "testing", "DATABASE_URL": f"sqlite:///{db}", "BETTER_AUTH_SECRET": SECRET,
                              "REDIS_URL": f"redis://127.0.0.1:{port}/0", "JWKS_URL": jwks.url,
                              "JWT_ALGORITHMS": "HS256,EdDSA,ES256,RS256",
                              "JWT_ISSUER": "", "JWT_AUDIENCE": "", "LOG_LEVEL": "ERROR"})
            client = app.test_client()
            now = int(time.time())
            claims = {"sub": "alice", "iat": now, "exp": now + 3600, "sid": "s-1"}
            tokens = {"HS256": encode(claims, SECRET)} | {alg: k.sign(claims) for alg, k in keys.items()}
            for token in tokens.values():
                per_request_us(client, bearer(token), 50)  # warm up (JWKS fetch, marker)

            before = client_redis.info("commandstats")
            per_request_us(client, bearer(tokens["HS256"]), 1000)
            after = client_redis.info("commandstats")
            delta = {name.removeprefix("cmdstat_"): after[name]["calls"] - before.get(name, {}).get("calls", 0)
                     for name in after if after[name]["calls"] != before.get(name, {}).get("calls", 0)}
            delta.pop("info", None)
            print(f"Redis commands for 1000 authenticated requests: {delta}")

            signers = {"HS256": lambda c: encode(c, SECRET)} | {alg: k.sign for alg, k in keys.items()}
            fresh = {alg: [sign({**claims, "jti": f"{alg}-{r}-{i}"}) for r in range(args.rounds)
                           for i in range(args.requests // 4)] for alg, sign in signers.items()}
            first: dict[str, list[float]] = {}
            for r in range(args.rounds):
                for alg, batch in fresh.items():
                    size = args.requests // 4
                    first.setdefault(alg, []).append(first_use_us(client, batch[r * size:(r + 1) * size]))
            base_first = statistics.median(first["HS256"])
            print("\nfirst use of a token (full verification), median µs/request")
            for alg, values in first.items():
                print(f"{alg:32} {statistics.median(values):18.1f} {statistics.median(values) - base_first:+10.1f}")
            print("\nrepeat use of a token (verified-token cache)")

            from app.revocation.store import Verdict
            from app.services import services

            store = services(app).store
            real_check = store.check
            results: dict[str, list[float]] = {}
            for _ in range(args.rounds):
                for name, token in tokens.items():
                    results.setdefault(name, []).append(per_request_us(client, bearer(token), args.requests))
                store.check = lambda principal, window=None: Verdict(False, 0)  # not revoked, nothing counted
                results.setdefault("HS256, revocation check off", []).append(
                    per_request_us(client, bearer(tokens["HS256"]), args.requests))
                store.check = real_check
            base = statistics.median(results["HS256"])
            print(f"\n{'variant':32} {'median µs/request':>18} {'vs HS256':>10}")
            for name, values in results.items():
                median = statistics.median(values)
                print(f"{name:32} {median:18.1f} {median - base:+10.1f}")
    finally:
        redis_proc.terminate()
        redis_proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
