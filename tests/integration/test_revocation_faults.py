"""The faults an outside review used to let revoked tokens back in, reproduced against
production-mode instances on PostgreSQL (gunicorn and granian together): the database coming
back older than Redis, Redis evicting keys where CONFIG is disabled or after its policy changed
at run time, and Redis rolling back under live connections while the instances are busy."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import redis
import requests
import sqlalchemy as sa

from app.revocation.layout import bucket_of
from tests.conftest import me_at
from tests.support.redis_topologies import RedisNode
from tests.support.servers import ROOT, AppServer, free_port, instances, wait_until

pytestmark = pytest.mark.integration


def logout(server: AppServer, token: str) -> int:
    return requests.post(f"{server.url}/api/v1/auth/logout", headers={"Authorization": f"Bearer {token}"},
                         timeout=10).status_code


@contextmanager
def private_redis(tmp_path, **config: str | list[str]) -> Iterator[RedisNode]:
    node = RedisNode(tmp_path / f"redis-{uuid.uuid4().hex[:6]}",
                     {"save": "", "appendonly": "no", "maxmemory-policy": "noeviction",
                      "enable-debug-command": "local", **config})
    node.start()
    try:
        yield node
    finally:
        node.stop()


def sql(database_url: str, statement: str) -> list[sa.Row]:
    engine = sa.create_engine(database_url)
    with engine.begin() as connection:
        rows = connection.execute(sa.text(statement)).all()
    engine.dispose()
    return rows


# --- the database comes back older than Redis ------------------------------------------------


def test_a_database_that_lost_its_newest_rows_reuses_no_sequence_and_gets_them_back(production_env, make_token,
                                                                                   tmp_path):
    jti = uuid.uuid4().hex
    same_bucket = next(f"{jti}-{n}" for n in range(1000) if bucket_of(f"{jti}-{n}") == bucket_of(jti))
    first, second = make_token("older-db-1", jti=jti), make_token("older-db-2", jti=same_bucket)
    with private_redis(tmp_path) as node, instances({**production_env, "REDIS_URL": node.url}, 2) as servers:
        assert logout(servers[0], first) == 204
        lost = sql(production_env["DATABASE_URL"], "DELETE FROM revocations WHERE user_id = 'older-db-1' "
                                                   "RETURNING bucket, seq")
        assert len(lost) == 1, lost  # a lost replication tail: the row is gone, Redis still holds it
        time.sleep(3)  # past REVOCATION_SYNC_SECONDS
        assert logout(servers[1], second) == 204

        answers = [(server.server, me_at(server, token)) for server in servers for token in (first, second)
                   for _ in range(6)]
        assert {answer for _, answer in answers} == {"token_revoked"}, answers
        rows = sql(production_env["DATABASE_URL"], "SELECT user_id, bucket, seq FROM revocations ORDER BY id")
        assert sorted(row.user_id for row in rows) == ["older-db-1", "older-db-2"], rows  # written back
        seqs = [(row.bucket, row.seq) for row in rows]
        assert len(set(seqs)) == len(seqs), seqs  # no sequence handed out twice


# --- eviction ----------------------------------------------------------------------------------


def test_an_evicting_policy_is_refused_at_start_where_config_is_disabled(production_env, tmp_path):
    with private_redis(tmp_path, **{"maxmemory": "20mb", "maxmemory-policy": "volatile-lru",
                                    "rename-command": 'CONFIG ""'}) as node:
        with pytest.raises(redis.ResponseError):
            node.call("CONFIG", "GET", "maxmemory-policy")  # as on a managed Redis
        for server in ("gunicorn", "granian"):
            env = {**os.environ, **production_env, "REDIS_URL": node.url, "SERVER": server,
                   "GUNICORN_BIND": f"127.0.0.1:{free_port()}"}
            result = subprocess.run([sys.executable, "serve.py"], cwd=ROOT, env=env, capture_output=True,
                                    text=True, timeout=60)
            assert result.returncode == 78, (server, result.stderr[-2000:])
            assert result.stderr.strip().splitlines()[-1] == (
                "taskgate: configuration error: Redis maxmemory-policy is volatile-lru: revocations need noeviction"
            ), result.stderr[-2000:]


def test_a_policy_switched_at_run_time_and_real_evictions_never_let_a_revoked_token_back(production_env,
                                                                                          make_token, tmp_path):
    tokens = [make_token(f"evicted-{n}") for n in range(20)]
    env = {**production_env, "REVOCATION_SYNC_SECONDS": "0.5"}
    with private_redis(tmp_path, maxmemory="20mb") as node, \
            instances({**env, "REDIS_URL": node.url}, 2) as servers:
        for token in tokens:
            assert logout(servers[0], token) == 204
        node.call("CONFIG", "SET", "maxmemory-policy", "allkeys-lru")  # after the start's check
        node.call("DEBUG", "POPULATE", "400000", "filler", "100")  # far past maxmemory
        evicted = int(node.call("INFO", "stats", decode_responses=True)["evicted_keys"])
        assert evicted > 0
        answers = [(server.server, me_at(server, token)) for token in tokens for server in servers]
        assert 200 not in {answer for _, answer in answers}, answers
        time.sleep(1)  # a periodic look at Redis's INFO: the policy and the evictions are logged
        logs = "".join(server.output() for server in servers)
        assert "Redis maxmemory-policy is allkeys-lru" in logs and "Redis evicted keys" in logs, logs[-3000:]
        node.call("FLUSHDB")  # room again: the denylist is rebuilt from the table
        node.call("CONFIG", "SET", "maxmemory-policy", "noeviction")
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and any(me_at(s, tokens[0]) != "token_revoked" for s in servers):
            time.sleep(0.2)
        answers = [(server.server, me_at(server, token)) for token in tokens for server in servers]
        assert {answer for _, answer in answers} == {"token_revoked"}, answers


# --- Redis rolls back under live connections ---------------------------------------------------


def test_ten_rollbacks_under_load_on_two_instances_never_accept_a_revoked_token(production_env, make_token,
                                                                                 tmp_path):
    revoked: list[tuple[str, float]] = []  # (token, when its logout returned)
    seen: list[tuple[str, str, float, int | str]] = []  # (server, token, sent at, answer)
    stop = threading.Event()
    with private_redis(tmp_path) as node, instances({**production_env, "REDIS_URL": node.url}, 2) as servers:
        good = make_token("rollback-good")

        def hammer(server: AppServer) -> None:
            while not stop.is_set():
                for token, _ in [*revoked, (good, 0.0)]:
                    sent = time.monotonic()
                    seen.append((server.server, token, sent, me_at(server, token)))

        threads = [threading.Thread(target=hammer, args=(server,)) for server in servers for _ in range(2)]
        for thread in threads:
            thread.start()
        try:
            for round_ in range(10):
                token = make_token(f"rollback-{round_}")
                # A rollback may bring back a repair lock released since: its bucket answers 503
                # (fail closed) for one lease at most (app/revocation/replica.py, LOCK_MS).
                wait_until(lambda: me_at(servers[round_ % 2], token) == 200, 5,  # noqa: B023 - called at once
                           f"round {round_}: a token no revocation covers accepted")
                node.call("SAVE")
                assert logout(servers[round_ % 2], token) == 204
                revoked.append((token, time.monotonic()))
                node.call("DEBUG", "RELOAD", "NOSAVE")  # Redis forgets the logout, every connection stays
                time.sleep(0.5)
            for server in servers:  # the faults stopped: a token no revocation covers is accepted again
                wait_until(lambda: me_at(server, good) == 200, 5, f"{server.server}: the good token accepted")  # noqa: B023
        finally:
            stop.set()
            for thread in threads:
                thread.join(timeout=30)
    returned = dict(revoked)
    accepted = [(server, token[-12:], round(sent - returned[token], 3)) for server, token, sent, answer in seen
                if token in returned and sent > returned[token] and answer == 200]
    assert not accepted, f"revoked tokens accepted (server, token, seconds after its logout returned): {accepted}"
    assert sum(1 for _, token, _, _ in seen if token in returned) > 200, len(seen)
