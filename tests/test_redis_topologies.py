"""The Redis topology harness does what the stale-Redis, Sentinel and Cluster tests rely on:
a restart really brings back an older Redis, a SIGKILLed master really fails over, and a
cluster's shards really are separate (a FLUSHALL or a snapshot restore touches one only)."""

from __future__ import annotations

import hashlib
import time

import pytest
import redis
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster
from redis.retry import Retry

from tests.support.redis_topologies import ClusterSet, PersistentRedis, SentinelSet
from tests.support.servers import pid_alive, wait_until

pytestmark = pytest.mark.integration


def test_a_restart_from_a_snapshot_brings_back_exactly_the_snapshot():
    with PersistentRedis() as server:
        client = server.client(decode_responses=True)
        client.set("before", "1")
        snapshot = server.snapshot()
        client.set("after", "1")
        old_pid, port = server.pid, server.port

        server.restart_from(snapshot)

        assert (server.port, server.url) == (port, f"redis://127.0.0.1:{port}/0")
        assert server.pid != old_pid and not pid_alive(old_pid)
        client = server.client(decode_responses=True)
        assert client.get("before") == "1"
        assert client.get("after") is None
        client.close()
    assert not pid_alive(server.node.process.pid)


def test_aof_always_survives_a_sigkill_and_a_snapshot_restore_ignores_the_aof():
    with PersistentRedis(appendfsync="always") as server:
        client = server.client(decode_responses=True)
        client.set("before", "1")
        snapshot = server.snapshot()
        client.set("written", "1")
        server.kill()
        server.start()
        client = server.client(decode_responses=True)
        assert (client.get("before"), client.get("written")) == ("1", "1")

        server.restart_from(snapshot)
        client = server.client(decode_responses=True)
        assert (client.get("before"), client.get("written")) == ("1", None)
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        assert client.config_get("appendfsync") == {"appendfsync": "always"}

        client.set("after-restore", "1")  # the AOF is live again: a crash now keeps this write
        server.kill()
        server.start()
        client = server.client(decode_responses=True)
        assert (client.get("before"), client.get("after-restore")) == ("1", "1")


def test_an_aof_cut_back_to_a_mark_loses_exactly_the_writes_after_it():
    with PersistentRedis(appendfsync="everysec") as server:
        client = server.client(decode_responses=True)
        client.set("kept", "1")
        time.sleep(1.2)  # everysec: let the write reach the file before marking where it ends
        mark = server.aof_mark()
        client.incr("lost")
        client.incr("lost")

        server.crash_to(mark)

        client = server.client(decode_responses=True)
        assert (client.get("kept"), client.get("lost")) == ("1", None)


def test_a_killed_master_fails_over_to_the_replica_and_rejoins_the_pair_with_its_data():
    with SentinelSet(service="topo-test") as topology:
        assert topology.url == "redis+sentinel://" + ",".join(
            f"127.0.0.1:{s.port}" for s in topology.sentinels) + "/topo-test"
        old_master, replica = topology.data_nodes
        assert topology.master_address() == old_master.address
        sentinel = topology.sentinel_client()
        client = sentinel.master_for("topo-test", socket_timeout=0.5, decode_responses=True)
        client.set("k", "v")
        old_pid = old_master.pid
        topology.master.call("WAIT", 1, 2000)

        killed_at = time.monotonic()
        assert topology.kill_master() == old_master.address
        assert not pid_alive(old_pid)
        new_master = topology.wait_for_failover(timeout=30)
        took = time.monotonic() - killed_at

        assert new_master == replica.address
        assert took > topology.down_after_ms / 1000
        assert replica.call("ROLE")[0] == b"master"
        assert sentinel.discover_master("topo-test") == new_master
        assert client.get("k") == "v"  # the client found the new master by itself

        topology.restart_killed()

        def one_master_and_its_replica() -> bool:
            # Sentinel names the master; the other node replicates it. On a busy machine Sentinel may
            # fail over once more (a stall past down-after-milliseconds): either node may be master.
            master = sentinel.discover_master("topo-test")
            roles = {node.address: node.call("ROLE") for node in (old_master, replica)}
            if master not in roles or roles[master][0] != b"master":
                return False
            other = next(role for address, role in roles.items() if address != master)
            return other[0] == b"slave" and (other[1].decode(), other[2]) == master

        try:
            wait_until(one_master_and_its_replica, 10, "the restarted old master and the replica: master and replica")
        except TimeoutError:
            pytest.fail(f"the old master's ROLE {old_master.call('ROLE')[:3]}, the replica's "
                        f"{replica.call('ROLE')[:3]}, Sentinel's master now {sentinel.discover_master('topo-test')} "
                        f"(after the failover: {new_master})")
        assert old_master.client(decode_responses=True).get("k") == "v"
        assert client.get("k") == "v"
        client.close()


def test_the_cluster_has_three_masters_and_each_shard_can_be_flushed_or_restored_alone():
    with ClusterSet() as cluster:
        assert cluster.url == "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in cluster.masters)
        assert len(cluster.masters) == 3
        client = cluster.cluster_client(decode_responses=True)
        keys = {f"{{bucket{i}}}:marker": str(i) for i in range(30)}
        for key, value in keys.items():
            client.set(key, value)
        owners = {key: cluster.node_for_key(key) for key in keys}
        assert {node.port for node in owners.values()} == {n.port for n in cluster.masters}
        for key, value in keys.items():  # node_for_key agrees with where redis-py put it
            assert owners[key].client(decode_responses=True).get(key) == value

        victim = cluster.masters[1]
        snapshot = cluster.snapshot(victim)
        cluster.flushall(victim)
        for key in keys:
            assert (owners[key].call("GET", key, decode_responses=True) is None) == (owners[key] is victim)

        old_pid = victim.pid
        cluster.restart_from_snapshot(victim, snapshot)
        assert victim.pid != old_pid
        client = RedisCluster.from_url(f"redis://127.0.0.1:{cluster.masters[0].port}", decode_responses=True)
        assert {key: client.get(key) for key in keys} == keys
        client.close()


def test_a_restart_and_a_promotion_both_forget_loaded_scripts():
    """Scripts live in memory only: not in the RDB, not in the AOF, not replicated (Redis 7)."""
    script = "return 1"
    with PersistentRedis(appendfsync="always") as server:
        sha = server.client().script_load(script)
        assert server.client().script_exists(sha) == [True]
        server.kill()
        server.start()
        assert server.client().script_exists(sha) == [False]
    with SentinelSet(service="scripts") as topology:
        master, replica = topology.data_nodes
        with master.client() as client:
            client.script_load(script)
            client.eval("return 2", 0)
        evaluated = hashlib.sha1(b"return 2").hexdigest()
        assert master.call("SCRIPT", "EXISTS", sha, evaluated) == [1, 1]
        topology.kill_master()
        assert topology.wait_for_failover() == replica.address
        assert replica.call("SCRIPT", "EXISTS", sha, evaluated) == [0, 0]


def test_sentinel_closes_client_connections_on_both_sides_of_a_failover():
    """Sentinel sends CLIENT KILL TYPE normal to the replica it promotes and to the master it demotes,
    so every client of either reconnects and sees a new connection."""
    def held(node):
        connection = redis.Connection(host="127.0.0.1", port=node.port, socket_timeout=2, retry=Retry(NoBackoff(), 0))
        connection.connect()
        return connection

    def closed(connection) -> bool:
        try:
            connection.send_command("PING")
            connection.read_response()
        except redis.ConnectionError:
            return True
        return False

    with SentinelSet(service="kills") as topology:
        old_master, replica = topology.data_nodes
        on_master, on_replica = held(old_master), held(replica)
        new_master, demoted = topology.manual_failover()
        assert (new_master, demoted) == (replica.address, old_master)
        topology.wait_for_replica(old_master)
        assert closed(on_replica)
        assert closed(on_master)
        control = held(replica)
        assert not closed(control)
        control.disconnect()


def test_a_topology_that_fails_to_start_leaves_no_process_behind(monkeypatch):
    started = []

    def fail(self, timeout):
        started.extend(n.pid for n in self.nodes)
        raise TimeoutError("simulated")

    monkeypatch.setattr(SentinelSet, "wait_until_ready", fail)
    with pytest.raises(TimeoutError, match="simulated"), SentinelSet():
        pass
    assert len(started) == 5 and not any(pid_alive(pid) for pid in started)

