"""What Python's cycle collector costs a request, in process, with the app's objects left in the
collector's generations and with them frozen (`gc.freeze()`; tried in `wsgi.py` and not kept,
bench/RESULTS.md):

    .venv/bin/python bench/micro_gc.py [--requests 3000]

For each route, the collector's time per request, its longest pause and the collections by
generation, measured with `gc.callbacks` against real PostgreSQL and Redis in production mode.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.cli import mint_token  # noqa: E402
from bench.micro_routes import production_app, send  # noqa: E402
from bench.run import seed_postgresql, user_id  # noqa: E402

USERS = 200


class Collections:
    """The collector's time, longest pause and count by generation, from gc.callbacks."""

    def __init__(self) -> None:
        self.reset()
        self._started = 0.0
        gc.callbacks.append(self._callback)

    def reset(self) -> None:
        self.seconds, self.longest, self.counts = 0.0, 0.0, [0, 0, 0]

    def _callback(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        took = time.perf_counter() - self._started
        self.seconds += took
        self.longest = max(self.longest, took)
        self.counts[info["generation"]] += 1


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=3000)
    args = parser.parse_args()
    collections = Collections()
    with production_app() as (app, secret, plain_url):
        seed_postgresql(plain_url, USERS, 20)
        tokens = [mint_token(secret, user_id(u), ttl=3600) for u in range(USERS)]
        routes = ("healthz", "list", "me")
        for name in routes:  # warm up: every token seen once, pools filled
            for i in range(2 * USERS):
                send(app, name, tokens[i % USERS], i % USERS, i)
        print(f"{'objects':8} {'route':8} {'CPU µs/req':>10} {'GC µs/req':>10} {'longest ms':>11}  collections 0/1/2")
        for frozen in (False, True):
            if frozen:
                gc.collect()
                gc.freeze()
            for name in routes:
                collections.reset()
                started = time.process_time()
                for i in range(args.requests):
                    send(app, name, tokens[i % USERS], i % USERS, i)
                cpu = (time.process_time() - started) / args.requests * 1e6
                print(f"{'frozen' if frozen else 'tracked':8} {name:8} {cpu:10.0f} "
                      f"{collections.seconds / args.requests * 1e6:10.1f} {collections.longest * 1000:11.1f}  "
                      f"{'/'.join(map(str, collections.counts))}")


if __name__ == "__main__":
    main()
