"""Revocations that hold whatever Redis does, against real servers started here: a Redis that
comes back older than the database (a snapshot, a lost AOF tail), a Redis write that fails after
the commit, a Sentinel failover, and a three-master Cluster losing each shard's data in turn.
Several instances each time, gunicorn and granian mixed; not one revoked token is ever accepted."""

from __future__ import annotations

import threading
import time
import uuid
from urllib.parse import quote

import pytest
import requests

from tests.conftest import bearer, me_at
from tests.support.redis_topologies import ClusterSet, PersistentRedis, SentinelSet
from tests.support.servers import AppServer, RedisServer, instances, wait_until

pytestmark = pytest.mark.integration
SERVED_AGAIN_WITHIN = 15.0






class Revoked:
    """One token revoked in each way taskgate knows, and a good token that must keep working."""

    def __init__(self, make_token) -> None:
        now, run = int(time.time()), uuid.uuid4().hex[:8]  # the database outlives one test
        self.user, self.sid = f"t-user-{run}", f"t-session-{run}/1"
        self.tokens = {
            "logout (jti)": make_token(f"t-jti-{run}"),
            "logout (no jti: the digest)": make_token(f"t-digest-{run}", drop=("jti",)),
            "user": make_token(self.user, iat=now - 5),
            "session": make_token(f"t-session-{run}", sid=self.sid),
            "admin, by token": make_token(f"t-admin-token-{run}", drop=("jti",)),
        }
        self.good = make_token(f"t-good-{run}", sid=f"t-good-{run}")
        self.admin = bearer(make_token("root", role="admin"))

    def revoke_through(self, server: AppServer) -> None:
        post = lambda path, **kw: requests.post(f"{server.url}{path}", timeout=10, **kw)  # noqa: E731
        t = self.tokens
        assert post("/api/v1/auth/logout", headers=bearer(t["logout (jti)"])).status_code == 204
        assert post("/api/v1/auth/logout", headers=bearer(t["logout (no jti: the digest)"])).status_code == 204
        assert post(f"/api/v1/admin/users/{self.user}/revoke", headers=self.admin).status_code == 200
        assert post(f"/api/v1/admin/sessions/{quote(self.sid, safe='')}/revoke", headers=self.admin).status_code == 200
        assert post("/api/v1/admin/tokens/revoke", json={"token": t["admin, by token"]},
                    headers=self.admin).status_code == 200

    def assert_all_revoked(self, servers: list[AppServer]) -> None:
        for server in servers:
            for how, token in self.tokens.items():
                assert me_at(server, token) == "token_revoked", (server.url, how)

    def never_accepted(self, server: AppServer) -> list[tuple[str, int | str]]:
        """One request per revoked token; what each got (never 200)."""
        answers = [(how, me_at(server, token)) for how, token in self.tokens.items()]
        assert all(answer in ("token_revoked", "service_unavailable") for _, answer in answers), answers
        return answers


def late_sid(token: str) -> str:
    import jwt as pyjwt

    return pyjwt.decode(token, options={"verify_signature": False})["sid"]


# --- Redis older than the database ---------------------------------------------------------


@pytest.mark.parametrize("appendfsync", [None, "everysec"], ids=["rdb", "aof-everysec"])
def test_a_redis_restored_from_an_older_snapshot_never_lets_a_revoked_token_back(production_env, make_token,
                                                                                  appendfsync):
    revoked = Revoked(make_token)
    with PersistentRedis(appendfsync=appendfsync) as redis_node, \
            instances({**production_env, "REDIS_URL": redis_node.url}, 2) as servers:
        for server in servers:
            assert me_at(server, revoked.good) == 200
            assert all(me_at(server, token) == 200 for token in revoked.tokens.values())
        snapshot = redis_node.snapshot()  # Redis before any revocation
        revoked.revoke_through(servers[0])
        revoked.assert_all_revoked(servers)

        redis_node.restart_from(snapshot)  # the marker-era bug: every revocation forgotten, the state present
        for server in reversed(servers):  # the first request after the restart, on every instance
            revoked.never_accepted(server)
        for server in servers:
            wait_until(lambda s=server: me_at(s, revoked.good) == 200, 10, "the good token works again")
        revoked.assert_all_revoked(servers)


def test_a_lost_aof_tail_never_lets_a_revoked_token_back(production_env, make_token):
    revoked = Revoked(make_token)
    with PersistentRedis(appendfsync="everysec") as redis_node, \
            instances({**production_env, "REDIS_URL": redis_node.url}, 2) as servers:
        assert me_at(servers[0], revoked.good) == 200 and me_at(servers[1], revoked.good) == 200
        mark = redis_node.aof_mark()
        revoked.revoke_through(servers[1])
        redis_node.crash_to(mark)  # a crash loses what everysec had not yet written
        for server in servers:
            revoked.never_accepted(server)
        for server in servers:
            wait_until(lambda s=server: me_at(s, revoked.good) == 200, 10, "the good token works again")
        revoked.assert_all_revoked(servers)


# --- a Redis write that fails after the commit --------------------------------------------


def test_a_redis_write_refused_after_the_commit_is_a_503_and_is_repaired_on_every_instance(production_env,
                                                                                           make_token):
    token = make_token(f"refused-write-{uuid.uuid4().hex[:8]}")
    with RedisServer() as private_redis, \
            instances({**production_env, "REDIS_URL": private_redis.url, "REVOCATION_SYNC_SECONDS": "1"}, 2) as servers:
        import redis

        admin = redis.Redis.from_url(private_redis.url)
        assert me_at(servers[0], token) == 200 and me_at(servers[1], token) == 200
        admin.execute_command("ACL", "SETUSER", "default", "-hset")  # checks still run; writing a denial fails
        try:
            response = requests.post(f"{servers[0].url}/api/v1/auth/logout", headers=bearer(token), timeout=10)
            assert response.status_code == 503 and response.json()["code"] == "service_unavailable"
        finally:
            admin.execute_command("ACL", "SETUSER", "default", "+hset")
        # The worker that committed it applies it again within 0.2 s; any other worker or
        # instance learns of it from the table within REVOCATION_SYNC_SECONDS anyway.
        time.sleep(0.5)
        assert me_at(servers[0], token) == "token_revoked"
        assert me_at(servers[1], token) == "token_revoked"
        admin.close()


# --- Sentinel ----------------------------------------------------------------------------


def test_sentinel_failover_under_load(production_env, make_token):
    revoked = Revoked(make_token)
    with SentinelSet(down_after_ms=1000) as sentinels, \
            instances({**production_env, "REDIS_URL": sentinels.url}, 3) as servers:
        for server in servers:
            assert me_at(server, revoked.good) == 200
        revoked.revoke_through(servers[0])
        revoked.assert_all_revoked(servers)

        seen: dict[str, list[tuple[float, int | str]]] = {server.url: [] for server in servers}
        accepted_revoked: list[tuple[str, str]] = []
        stop = threading.Event()

        def hammer(server: AppServer) -> None:
            while not stop.is_set():
                try:
                    seen[server.url].append((time.monotonic(), me_at(server, revoked.good)))
                    for how, token in revoked.tokens.items():
                        if me_at(server, token) == 200:
                            accepted_revoked.append((server.url, how))
                except requests.RequestException as error:
                    seen[server.url].append((time.monotonic(), type(error).__name__))

        threads = [threading.Thread(target=hammer, args=(server,)) for server in servers]
        for thread in threads:
            thread.start()
        time.sleep(1)
        killed_at = time.monotonic()
        sentinels.kill_master()
        sentinels.wait_for_failover(timeout=SERVED_AGAIN_WITHIN)
        time.sleep(SERVED_AGAIN_WITHIN - (time.monotonic() - killed_at) + 1)
        stop.set()
        for thread in threads:
            thread.join(timeout=30)

        assert accepted_revoked == []
        for url, answers in seen.items():
            after = [(at, answer) for at, answer in answers if at > killed_at]
            assert all(answer in (200, "service_unavailable") for _, answer in after), (url, set(after))
            served_again = next(at for at, answer in after if answer == 200 and all(
                later == 200 for at2, later in after if at2 >= at))
            assert served_again - killed_at < SERVED_AGAIN_WITHIN, (url, served_again - killed_at)

        # A logout after the failover holds on all three at once.
        late = make_token(f"after-failover-{uuid.uuid4().hex[:8]}")
        assert all(me_at(server, late) == 200 for server in servers)
        logout = requests.post(f"{servers[2].url}/api/v1/auth/logout", headers=bearer(late), timeout=10)
        assert logout.status_code == 204
        assert [me_at(server, late) for server in servers] == ["token_revoked"] * 3
        revoked.assert_all_revoked(servers)


# --- Cluster -----------------------------------------------------------------------------


def test_cluster_every_revocation_holds_and_each_shard_losing_its_data_is_repaired(production_env, make_token):
    revoked = Revoked(make_token)
    with ClusterSet(masters=3) as cluster, instances({**production_env, "REDIS_URL": cluster.url}, 3) as servers:
        for server in servers:
            assert me_at(server, revoked.good) == 200
        revoked.revoke_through(servers[1])
        revoked.assert_all_revoked(servers)
        for node in cluster.masters:
            cluster.flushall(node)
            for server in servers:
                revoked.never_accepted(server)
            for server in servers:
                wait_until(lambda s=server: me_at(s, revoked.good) == 200, 10, "the good token works again")
            revoked.assert_all_revoked(servers)
        late = make_token("after-flushes", sid=f"late-{uuid.uuid4().hex}")
        assert requests.post(f"{servers[0].url}/api/v1/admin/sessions/{late_sid(late)}/revoke", headers=revoked.admin,
                             timeout=10).status_code == 200
        assert [me_at(server, late) for server in servers] == ["token_revoked"] * 3
