"""What one revocation check costs this process, and each of its parts, in-process against real
PostgreSQL and Redis in production mode (no server, no client):

    .venv/bin/python bench/micro_check.py [--checks 3000] [--rounds 7]

CPU µs per operation (time.process_time, so the kernel's share of the socket calls is in),
median of rounds that alternate between the operations (micro_libraries.measure). The whole
check, then its parts: the question asked (`Checks.ask`), the fields and the script's arguments
built from the token, the one command on a kept connection, the same command on a bare
connection (redis-py's `send_command`, or packed by hiredis and sent with
`send_packed_command`), and the pub/sub drain.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import hiredis  # noqa: E402

from app.cli import mint_token  # noqa: E402
from app.redis_client import ScriptCall  # noqa: E402
from app.revocation.checks import fields_of  # noqa: E402
from app.security import policy  # noqa: E402
from app.services import services  # noqa: E402
from bench.micro_libraries import measure  # noqa: E402
from bench.micro_routes import production_app  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--checks", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()

    with production_app() as (app, secret, _url), app.app_context():
        found = services(app)
        principal = policy.verify(mint_token(secret, "bench-user", ttl=3600), found.settings, found.keys,
                                  time.time())
        store, window = found.store, found.rate_limits.user_window(principal.user_id)

        def fields_and_arguments() -> ScriptCall:
            fields = fields_of(principal)
            return store.checks._call(principal, window, sorted(fields), fields, 0)

        call = fields_and_arguments()
        command = ("EVALSHA", store.client._shas[call.script], len(call.keys), *call.keys, *call.args)
        store.check(principal, window)  # loads the script, verifies Redis
        bare = store.client.client.connection_pool.get_connection()

        def send_command() -> None:
            bare.send_command(*command)
            bare.read_response()

        def send_packed() -> None:
            bare.send_packed_command([hiredis.pack_command(command)])
            bare.read_response()

        operations: dict[str, Callable[[], object]] = {
            "the whole check": lambda: store.check(principal, window),
            "Checks.ask": lambda: store.checks.ask(principal, window),
            "fields and arguments": fields_and_arguments,
            "the command, kept connection": lambda: store.client._command(*command),
            "bare: send_command": send_command,
            "bare: hiredis + send_packed": send_packed,
            "pub/sub drain": store.channel.drain,
        }
        print(f"{'operation':32} {'CPU µs':>8}")
        for name, value in measure(operations, args.checks, args.rounds).items():
            print(f"{name:32} {value:8.1f}")
        store.client.client.connection_pool.release(bare)


if __name__ == "__main__":
    main()
