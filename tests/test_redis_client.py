"""The Redis client's kept connections under broken connections (ARCHITECTURE.md, "Redis"): each
reply reaches the thread whose command it answers, whatever breaks and whatever runs at once."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator

import pytest
import redis

from app.redis_client import REDIS_ERRORS, RedisClient, ScriptCall
from app.redis_url import parse_redis_url

ECHO = {"echo": "return ARGV[1]"}


@pytest.fixture
def fast_switching() -> Iterator[None]:
    """Threads switch every few microseconds, so that interleavings a real server meets
    once in a long while happen many times in a few seconds."""
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(interval)


def test_replies_never_cross_between_threads_while_connections_are_killed(private_redis, fast_switching):
    client = RedisClient(parse_redis_url(private_redis.url), timeout=2.0, scripts=ECHO)
    killer = redis.Redis.from_url(private_redis.url)
    stop = threading.Event()
    crossed: list[tuple[str, object]] = []
    answered, failed = [0], [0]

    def ask(name: str) -> None:
        n = 0
        while not stop.is_set():
            n += 1
            mine = f"{name}-{n}"
            try:
                reply = client.run(ScriptCall("echo", [], [mine]))
            except REDIS_ERRORS:
                failed[0] += 1  # a connection killed twice in a row: an error, never another's reply
                continue
            answered[0] += 1
            if reply != mine:
                crossed.append((mine, reply))

    threads = [threading.Thread(target=ask, args=(f"t{i}",)) for i in range(8)]
    for thread in threads:
        thread.start()
    # Until enough happened (a busy machine answers fewer commands between kills), within 30 s.
    deadline = time.monotonic() + 30
    kills = 0
    while time.monotonic() < deadline and not crossed and (kills <= 1000 or answered[0] <= 2000):
        kills += killer.client_kill_filter(_type="normal", skipme=True)
        time.sleep(0.002)
    stop.set()
    for thread in threads:
        thread.join(timeout=10)
    killer.close()
    assert not crossed, f"replies read by the wrong thread (sent, read), after {kills} kills: {crossed[:5]}"
    assert kills > 100 and answered[0] > 1000, f"too little happened: {kills} kills, {answered[0]} replies"
