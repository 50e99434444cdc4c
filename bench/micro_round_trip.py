"""What the per-request Redis round trip costs the process, in-process (no server, no client):

    .venv/bin/python bench/micro_round_trip.py [--requests 2000] [--rounds 15]

Measured in one process, kinds alternating round by round, CPU µs per operation (median of
rounds; time.process_time, so kernel time included):

- `healthz`, `me`: the two routes, through WSGI, on real PostgreSQL and Redis;
- `me, exchange stubbed`: `/auth/me` with the Redis exchange replaced by its answer;
- `round trip`: the same three commands (MGET, INCR, EXPIRE) on a raw socket, alone;
- `healthz + round trip`, `loop + round trip`: each round trip after a `/healthz` request, or
  after a pure-arithmetic loop of similar length, so what the sleep in `recv` costs the
  work that follows it shows (subtract the same work measured alone).
"""

from __future__ import annotations

import argparse
import socket
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlparse

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import hiredis  # noqa: E402

from app.cli import mint_token  # noqa: E402
from app.revocation.store import Verdict  # noqa: E402
from app.services import services  # noqa: E402
from bench.micro_routes import REDIS_URL, call, environ, production_app  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()

    with production_app() as (app, secret, _url):
        token = mint_token(secret, "bench-user", ttl=3600)
        store = services(app).store
        redis_at = urlparse(REDIS_URL)
        raw = socket.create_connection((redis_at.hostname, redis_at.port or 6379))
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        packed = b"".join(hiredis.pack_command(c) for c in (
            ("MGET", "bench:rev:loaded", "bench:rev:jti:0123456789abcdef", "bench:rev:user:bench-user"),
            ("INCR", "bench:rl:round-trip"), ("EXPIRE", "bench:rl:round-trip", "61")))
        buffer = bytearray(65536)

        def healthz() -> None:
            call(app, environ("GET", "/healthz", token), 200)

        def me() -> None:
            call(app, environ("GET", "/api/v1/auth/me", token), 200)

        def round_trip() -> None:
            reader, replies = hiredis.Reader(), 0
            raw.sendall(packed)
            while replies < 3:
                reader.feed(buffer, 0, raw.recv_into(buffer))
                while reader.gets() is not False:
                    replies += 1

        loop_length = 2000  # about as long as a /healthz request on the machines measured

        def loop() -> None:
            total = 0
            for i in range(loop_length):
                total += i

        def stub_exchange() -> None:
            store.check = lambda principal, window=None: Verdict(False, 1)

        def real_exchange() -> None:
            store.__dict__.pop("check", None)

        kinds: dict[str, tuple[Callable[[], None], Callable[[], None]]] = {
            "healthz": (real_exchange, healthz),
            "me": (real_exchange, me),
            "me, exchange stubbed": (stub_exchange, me),
            "round trip": (real_exchange, round_trip),
            "healthz + round trip": (real_exchange, lambda: (healthz(), round_trip())),
            "loop": (real_exchange, loop),
            "loop + round trip": (real_exchange, lambda: (loop(), round_trip())),
        }
        results: dict[str, list[float]] = {kind: [] for kind in kinds}
        for setup, operation in kinds.values():  # warm up
            setup()
            for _ in range(200):
                operation()
        for _ in range(args.rounds):
            for kind, (setup, operation) in kinds.items():
                setup()
                started = time.process_time()
                for _ in range(args.requests):
                    operation()
                results[kind].append((time.process_time() - started) / args.requests * 1e6)
        real_exchange()
        raw.close()
        median = {kind: statistics.median(values) for kind, values in results.items()}
        print(f"{'operation':24} {'CPU µs':>8}")
        for kind, value in median.items():
            print(f"{kind:24} {value:8.1f}")
        print(f"a round trip alone costs {median['round trip']:.0f} µs; after a /healthz request "
              f"{median['healthz + round trip'] - median['healthz']:.0f} µs; after a loop "
              f"{median['loop + round trip'] - median['loop']:.0f} µs")


if __name__ == "__main__":
    main()
