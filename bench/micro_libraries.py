"""What the two libraries on the request path cost through the public APIs taskgate uses,
against the lowest-level path each offers, on the same work (in-process, no server):

    .venv/bin/python bench/micro_libraries.py [--operations 1000] [--rounds 9]

- the 20-task list statement (the list route's, built by `owned()`) on PostgreSQL: through
  `Database.rows` (SQLAlchemy Core: pool checkout, execution context, rows), through
  `Connection.exec_driver_sql` with the same compiled SQL, and on one DBAPI cursor;
- the per-request `CHECK` script (the `EVALSHA` a `/auth/me` sends): through redis-py's
  `Redis.execute_command`, through a pooled `Connection`'s `send_command`/`read_response`,
  and written and read with hiredis on a plain socket.

CPU µs per operation (time.process_time), median of rounds that alternate between the kinds,
each shown against its raw baseline measured in the same rounds.
"""

from __future__ import annotations

import argparse
import hashlib
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
from app.revocation.scripts import SCRIPTS  # noqa: E402
from app.services import services  # noqa: E402
from app.tasks import _list_statement  # noqa: E402
from bench.micro_routes import REDIS_URL, call, environ, production_app  # noqa: E402
from bench.run import seed_postgresql, user_id  # noqa: E402


def measure(kinds: dict[str, Callable[[], object]], operations: int, rounds: int) -> dict[str, float]:
    for operation in kinds.values():  # warm up: prepared statements, loaded scripts, caches
        for _ in range(200):
            operation()
    results: dict[str, list[float]] = {kind: [] for kind in kinds}
    for _ in range(rounds):
        for kind, operation in kinds.items():
            started = time.process_time()
            for _ in range(operations):
                operation()
            results[kind].append((time.process_time() - started) / operations * 1e6)
    return {kind: statistics.median(values) for kind, values in results.items()}


def report(title: str, medians: dict[str, float], baseline: str) -> None:
    print(f"\n{title}")
    for kind, value in medians.items():
        print(f"  {kind:44} {value:7.1f} µs  {value / medians[baseline]:5.2f}x  {value - medians[baseline]:+7.1f}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--operations", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()

    with production_app() as (app, secret, plain_url):
        seed_postgresql(plain_url, 50, 20)
        found = services(app)
        engine = found.database.engine

        page, _counted = _list_statement("all", False, False, "created_at", "desc")
        sql = str(page.compile(dialect=engine.dialect))
        params = {"limit": 20, "offset": 0, "owner": user_id(3)}
        dbapi = engine.raw_connection()

        def driver_sql() -> object:
            with engine.connect() as connection:
                return connection.exec_driver_sql(sql, params).all()

        def dbapi_cursor() -> object:
            cursor = dbapi.cursor()
            cursor.execute(sql, params)
            rows = cursor.fetchall()
            cursor.close()
            return rows

        kinds = {"Database.rows (SQLAlchemy Core)": lambda: found.database.rows(page, params),
                 "Connection.exec_driver_sql, same SQL": driver_sql,
                 "one DBAPI cursor (psycopg), same SQL": dbapi_cursor}
        assert len({len(operation()) for operation in kinds.values()}) == 1  # the same 20 rows each way
        report("the 20-task list statement, PostgreSQL", measure(kinds, args.operations, args.rounds),
               "one DBAPI cursor (psycopg), same SQL")
        dbapi.close()

        # The CHECK script exactly as a /auth/me request sends it, captured from one request.
        token = mint_token(secret, "bench-user", ttl=3600)
        sent: list = []
        send = found.store.client.run_together
        found.store.client.run_together = lambda calls: sent.append(calls[0]) or send(calls)
        call(app, environ("GET", "/api/v1/auth/me", token), 200)
        del found.store.client.run_together
        check = sent[0]
        command = ("EVALSHA", hashlib.sha1(SCRIPTS["check"].encode()).hexdigest(),  # noqa: S324 - Redis's name
                   len(check.keys), *check.keys, *check.args)
        client = found.store.client.client
        pool = client.connection_pool

        def pooled_connection() -> object:
            connection = pool.get_connection()
            try:
                connection.send_command(*command)
                return connection.read_response()
            except BaseException:
                connection.disconnect()
                raise
            finally:
                pool.release(connection)

        at = urlparse(REDIS_URL)
        raw = socket.create_connection((at.hostname, at.port or 6379))
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        raw.sendall(hiredis.pack_command(("SELECT", (at.path or "/0").strip("/") or "0")))
        raw.recv(64)
        packed, buffer = hiredis.pack_command(command), bytearray(65536)

        def plain_socket() -> object:
            reader = hiredis.Reader(encoding="utf-8")  # text replies, as decode_responses=True gives
            raw.sendall(packed)
            while (reply := reader.gets()) is False:
                reader.feed(buffer, 0, raw.recv_into(buffer))
            return reply

        kinds = {"Redis.execute_command (redis-py)": lambda: client.execute_command(*command),
                 "pooled Connection send_command/read_response": pooled_connection,
                 "hiredis on a plain socket": plain_socket}
        # The same answer each way (the rate-limit count aside, which each call moves on).
        replies = [operation() for operation in kinds.values()]
        assert len({repr([reply[:2], reply[3:]]) for reply in replies}) == 1
        report("the CHECK script of /auth/me, Redis", measure(kinds, args.operations, args.rounds),
               "hiredis on a plain socket")
        raw.close()


if __name__ == "__main__":
    main()
