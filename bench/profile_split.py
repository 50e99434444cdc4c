"""Where a worker's CPU goes per request, from a py-spy profile of bench/run.py --profile.

    .venv/bin/python bench/profile_split.py bench/results/<stamp>/profile-<...>.txt MS_PER_REQUEST

MS_PER_REQUEST is the "workers' CPU per ok request" the profile run prints. Each sample (a
stack of the thread holding the GIL) goes to the innermost frame that names a part of the
request path; what is left is the server's own work (accept, parse, write) and its threads.
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

# (part, what a frame's location contains), innermost match wins; checked in this order.
PARTS = (
    ("query (SQLAlchemy + psycopg)", ("app/db.py", "app/tasks.py")),
    ("store round trip (Redis)", ("app/revocation", "app/redis_client.py")),
    ("authentication", ("app/security", "app/gate.py", "app/rate_limits")),
    ("taskgate hooks (request id, access log, metrics, headers, CORS)",
     ("app/observability", "app/logs.py", "app/metrics.py", "app/cors.py")),
    ("serialisation (orjson)", ("orjson",)),
    ("route: validation, view", ("app/api.py", "blueprints/", "app/schemas", "pydantic")),
    ("Flask, Werkzeug", ("flask/", "werkzeug/")),
)
SERVER = "server (accept, parse, write) and its threads"


def part_of(frames: list[str]) -> str:
    for frame in reversed(frames):
        where = frame[frame.rfind("(") + 1:]
        if frame.startswith("json_response "):
            return "serialisation (orjson)"
        for part, needles in PARTS:
            if any(needle in where for needle in needles):
                return part
    return SERVER


def split(collapsed: Path) -> tuple[Counter[str], int]:
    counts: Counter[str] = Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        frames = [frame for frame in stack.split(";") if not frame.startswith(("process ", "thread "))]
        counts[part_of(frames)] += int(count)
        total += int(count)
    return counts, total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("collapsed", type=Path)
    parser.add_argument("ms_per_request", type=float)
    args = parser.parse_args()
    counts, total = split(args.collapsed)
    for part, count in counts.most_common():
        print(f"{part:<60} {100 * count / total:5.1f}%  {args.ms_per_request * 1000 * count / total:5.0f} µs")
    print(f"{'total':<60} 100.0%  {args.ms_per_request * 1000:5.0f} µs")


if __name__ == "__main__":
    main()
