"""Real Redis topologies for the tests: a persistent standalone server, a Sentinel set and a
three-master Cluster, each started on 127.0.0.1 on free ports in its own temporary directory
and stopped by PID on exit, even when the test fails. All waits are bounded.

Plain context managers; fixtures that wrap them belong in a conftest.py.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Self

import redis

from tests.support.servers import free_port
from tests.support.services import unavailable

Address = tuple[str, int]
HOST = "127.0.0.1"
START_TIMEOUT = 15.0
STOP_TIMEOUT = 10.0


def _binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        unavailable(f"{name} is not installed")
    return path


def _wait(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll `check` until it returns something truthy; its last error goes into the timeout message."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while True:
        try:
            result = check()
            if result:
                return result
        except (redis.RedisError, OSError) as exc:  # not up yet, or mid-switch
            last = exc
        if time.monotonic() >= deadline:
            detail = f" (last error: {last!r})" if last else ""
            raise TimeoutError(f"{what} not reached within {timeout} s{detail}")
        time.sleep(interval)


class RedisNode:
    """One redis-server (or sentinel) process, configured by a file in its own directory, so a
    restart comes back with the same port, data directory and settings."""

    def __init__(self, directory: Path, config: dict[str, str | list[str]], sentinel: bool = False,
                 port: int | None = None) -> None:
        self.binary = _binary("redis-server")
        self.port = port or free_port()
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.sentinel = sentinel
        self.config_file = directory / ("sentinel.conf" if sentinel else "redis.conf")
        self.log_file = directory / "redis.log"
        base: dict[str, str | list[str]] = {"port": str(self.port), "bind": HOST, "dir": str(directory),
                                            "logfile": str(self.log_file), "daemonize": "no"}
        self._write_config({**base, **config})
        self.process: subprocess.Popen | None = None

    def _write_config(self, config: dict[str, str | list[str]]) -> None:
        lines = []
        for key, value in config.items():
            for item in value if isinstance(value, list) else [value]:
                lines.append(f"{key} {item}" if item != "" else f'{key} ""')
        self.config_file.write_text("\n".join(lines) + "\n")

    @property
    def address(self) -> Address:
        return HOST, self.port

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.running else None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def client(self, **kwargs: Any) -> redis.Redis:
        """A fresh client for this node only (the caller closes it)."""
        kwargs.setdefault("socket_timeout", 2)
        kwargs.setdefault("socket_connect_timeout", 2)
        return redis.Redis(host=HOST, port=self.port, **kwargs)

    def call(self, *args: Any, **kwargs: Any) -> Any:
        """One command on a short-lived connection to this node."""
        with self.client(**kwargs) as client:
            return client.execute_command(*args)

    def start(self, extra_args: list[str] | None = None) -> RedisNode:
        if self.running:
            raise RuntimeError(f"redis-server on port {self.port} is already running")
        command = [self.binary, str(self.config_file), *(["--sentinel"] if self.sentinel else []),
                   *(extra_args or [])]
        self.process = subprocess.Popen(command, cwd=self.directory, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
        try:
            _wait(self._ready, START_TIMEOUT, f"redis-server on port {self.port}")
        except TimeoutError:
            log = self.log_tail()
            self.kill()
            raise RuntimeError(f"redis-server on port {self.port} failed to start:\n{log}") from None
        return self

    def _ready(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(f"redis-server exited with {self.process.returncode}:\n{self.log_tail()}")
        if self.sentinel:
            return bool(self.call("PING"))
        # PING answers while an RDB or AOF is still loading; INFO persistence says when it is done.
        return self.call("INFO", "persistence").get("loading") == 0

    def kill(self) -> None:
        """SIGKILL: no shutdown save, no AOF flush, no goodbye to clients."""
        if self.running:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=STOP_TIMEOUT)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it does not exit in time."""
        if self.running:
            self.process.terminate()
            try:
                self.process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.kill()

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


class _Topology:
    """Owns a temporary directory and the nodes started in it; stops them all on exit."""

    def __init__(self, prefix: str) -> None:
        self._prefix = prefix
        self.root: Path | None = None
        self.nodes: list[RedisNode] = []

    def _node(self, name: str, config: dict[str, str | list[str]], sentinel: bool = False) -> RedisNode:
        assert self.root is not None
        node = RedisNode(self.root / name, config, sentinel=sentinel)
        self.nodes.append(node)
        return node

    def __enter__(self) -> Self:
        self.root = Path(tempfile.mkdtemp(prefix=f"taskgate-{self._prefix}-"))
        try:
            self._start()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _start(self) -> None:
        raise NotImplementedError

    def __exit__(self, *_exc: object) -> None:
        for node in reversed(self.nodes):
            with contextlib.suppress(Exception):
                node.stop()
        for node in self.nodes:  # last resort: whatever survived SIGTERM and the fallback
            with contextlib.suppress(Exception):
                node.kill()
        if self.root is not None and os.environ.get("KEEP_REDIS_TOPOLOGY_DIRS") != "1":
            shutil.rmtree(self.root, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------------
# Standalone with persistence


class PersistentRedis(_Topology):
    """A standalone redis-server with RDB, and optionally AOF (appendfsync everysec or always).

    `snapshot()` saves and keeps a copy of the dump; `restart_from(snapshot)` SIGKILLs the server,
    puts that dump back (replacing any AOF, which Redis would otherwise load instead) and starts it
    on the same port: Redis comes back exactly as old as the snapshot, with its AOF setting intact."""

    def __init__(self, appendfsync: str | None = None, config: dict[str, str | list[str]] | None = None) -> None:
        if appendfsync not in (None, "everysec", "always", "no"):
            raise ValueError(f"appendfsync must be everysec, always or no, not {appendfsync!r}")
        super().__init__("persistent")
        self.appendfsync = appendfsync
        self.extra_config = config or {}
        self.node: RedisNode | None = None
        self._snapshots = 0

    def _start(self) -> None:
        config: dict[str, str | list[str]] = {
            # Only explicit SAVEs write the dump, so a snapshot is exactly what the test asked for.
            "save": "", "dbfilename": "dump.rdb", "maxmemory-policy": "noeviction",
            "appendonly": "yes" if self.appendfsync else "no", "appenddirname": "appendonlydir",
            # DEBUG RELOAD: a rollback to the last SAVE under live connections.
            "enable-debug-command": "local", **self.extra_config,
        }
        if self.appendfsync:
            config["appendfsync"] = self.appendfsync
        self.node = self._node("redis", config)
        self.node.start()

    @property
    def port(self) -> int:
        return self.node.port

    @property
    def url(self) -> str:
        return self.node.url

    @property
    def pid(self) -> int | None:
        return self.node.pid

    @property
    def dump_file(self) -> Path:
        return self.node.directory / "dump.rdb"

    @property
    def aof_dir(self) -> Path:
        return self.node.directory / "appendonlydir"

    def client(self, **kwargs: Any) -> redis.Redis:
        return self.node.client(**kwargs)

    def snapshot(self) -> Path:
        """SAVE now and keep a copy of the dump; returns the copy's path."""
        self.node.call("SAVE")
        self._snapshots += 1
        copy = self.root / f"snapshot-{self._snapshots}.rdb"
        shutil.copyfile(self.dump_file, copy)
        return copy

    def roll_back(self) -> None:
        """Back to the last SAVE in place (DEBUG RELOAD NOSAVE): every client keeps its
        connection, as behind a proxy that hides a failover to an older replica."""
        self.node.call("DEBUG", "RELOAD", "NOSAVE")

    def restart_from(self, snapshot: Path) -> None:
        """SIGKILL the server, put `snapshot` back as its dump, start it again on the same port."""
        self.node.kill()
        shutil.rmtree(self.aof_dir, ignore_errors=True)
        shutil.copyfile(snapshot, self.dump_file)
        if not self.appendfsync:
            self.node.start()
            return
        # Redis 7.0 with appendonly yes and no AOF starts empty, ignoring the dump: load the dump with
        # AOF off, then turn AOF on, which writes a new AOF base from the loaded data.
        self.node.start(["--appendonly", "no"])
        self.node.call("CONFIG", "SET", "appendonly", "yes")
        _wait(self._aof_rewritten, START_TIMEOUT, "AOF base written from the snapshot")

    def _aof_rewritten(self) -> bool:
        info = self.node.call("INFO", "persistence")
        return (info["aof_enabled"] == 1 and info["aof_rewrite_in_progress"] == 0
                and info["aof_rewrite_scheduled"] == 0 and info["aof_last_bgrewrite_status"] == "ok")

    def kill(self) -> None:
        """SIGKILL. The AOF survives it whole (what was written but not yet fsynced is still in the
        page cache); to model a machine crash losing the unsynced tail, use aof_mark()/crash_to()."""
        self.node.kill()

    def _incr_aof(self) -> Path:
        manifest = (self.aof_dir / "appendonly.aof.manifest").read_text().split("\n")
        incr = [line.split()[1] for line in manifest if line.endswith(" type i")]
        if not incr:
            raise RuntimeError("no incremental AOF file in the manifest")
        return self.aof_dir / incr[-1]

    def aof_mark(self) -> tuple[Path, int]:
        """Where the AOF ends now (file and size), for crash_to()."""
        if not self.appendfsync:
            raise RuntimeError("AOF is off")
        path = self._incr_aof()
        return path, path.stat().st_size

    def crash_to(self, mark: tuple[Path, int]) -> None:
        """SIGKILL, cut the AOF back to `mark` (every write since is lost, as after an OS crash with
        appendfsync everysec), and start again from it."""
        path, size = mark
        self.node.kill()
        if self._incr_aof() != path:
            raise RuntimeError("the AOF was rewritten since the mark; take a new mark")
        with path.open("r+b") as aof:
            aof.truncate(size)
        self.node.start()

    def stop(self) -> None:
        self.node.stop()

    def start(self) -> None:
        """Start again from what is on disk (the AOF when it is on, otherwise the dump)."""
        self.node.start()


# ---------------------------------------------------------------------------------------------------------
# Sentinel


class SentinelSet(_Topology):
    """One master, one replica and three sentinels (quorum 2, down-after-milliseconds 1000).

    Ready on entry: the replica is in sync and every sentinel sees the master, the replica and
    the two other sentinels, so a failover can start as soon as the master dies."""

    def __init__(self, service: str = "taskgate", down_after_ms: int = 1000, failover_timeout_ms: int = 5000,
                 data_nodes: int = 2) -> None:
        super().__init__("sentinel")
        self.service = service
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self.data_nodes: list[RedisNode] = []
        self.sentinels: list[RedisNode] = []
        self.killed: RedisNode | None = None
        self._data_node_count = data_nodes

    def _start(self) -> None:
        data_config: dict[str, str | list[str]] = {
            "save": "", "appendonly": "no", "maxmemory-policy": "noeviction",
            # The default 5 s wait for more replicas before a diskless full sync only slows the tests.
            "repl-diskless-sync-delay": "0",
        }
        master = self._node("node-0", data_config)
        master.start()
        for index in range(1, self._data_node_count):
            replica = self._node(f"node-{index}", {**data_config, "replicaof": f"{HOST} {master.port}"})
            replica.start()
            self.data_nodes.append(replica)
        self.data_nodes.insert(0, master)
        for replica in self.data_nodes[1:]:
            _wait(lambda r=replica: r.call("INFO", "replication").get("master_link_status") == "up",
                  START_TIMEOUT, f"replica {replica.port} in sync")
        for index in range(3):
            sentinel = self._node(f"sentinel-{index}", {
                "sentinel": [f"monitor {self.service} {HOST} {master.port} 2",
                             f"down-after-milliseconds {self.service} {self.down_after_ms}",
                             f"failover-timeout {self.service} {self.failover_timeout_ms}",
                             f"parallel-syncs {self.service} 1"],
            }, sentinel=True)
            sentinel.start()
            self.sentinels.append(sentinel)
        self.wait_until_ready(START_TIMEOUT)

    def wait_until_ready(self, timeout: float = START_TIMEOUT) -> None:
        replicas = self._data_node_count - 1

        def everyone_seen() -> bool:
            for sentinel in self.sentinels:
                with sentinel.client(decode_responses=True) as client:
                    peers = client.sentinel_sentinels(self.service)
                    if len([p for p in peers if not p["is_disconnected"]]) != 2:
                        return False
                    seen = client.sentinel_slaves(self.service)
                healthy = [r for r in seen if not r["is_disconnected"] and not r["is_sdown"]]
                if len(healthy) != replicas:
                    return False
            return True

        _wait(everyone_seen, timeout, "sentinels seeing each other and the replicas", interval=0.2)

    @property
    def sentinel_addresses(self) -> list[Address]:
        return [s.address for s in self.sentinels]

    @property
    def url(self) -> str:
        hosts = ",".join(f"{host}:{port}" for host, port in self.sentinel_addresses)
        return f"redis+sentinel://{hosts}/{self.service}"

    def master_address(self) -> Address:
        """The master as the sentinels agree on it (a majority answer; raises if they disagree)."""
        answers: dict[Address, int] = {}
        for sentinel in self.sentinels:
            if not sentinel.running:
                continue
            with contextlib.suppress(redis.RedisError):
                host, port = sentinel.call("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service, decode_responses=True)
                answers[(host, int(port))] = answers.get((host, int(port)), 0) + 1
        for address, votes in answers.items():
            if votes >= 2:
                return address
        raise RuntimeError(f"sentinels do not agree on the master: {answers}")

    def node_at(self, address: Address) -> RedisNode:
        for node in self.data_nodes:
            if node.address == tuple(address):
                return node
        raise KeyError(address)

    @property
    def master(self) -> RedisNode:
        return self.node_at(self.master_address())

    def kill_master(self) -> Address:
        """SIGKILL the current master; returns its address."""
        node = self.master
        node.kill()
        self.killed = node
        return node.address

    def wait_for_failover(self, timeout: float = 30.0, old: Address | None = None) -> Address:
        """Wait until all live sentinels name a new master other than `old` (default: the node
        last killed) and that node answers as a master; returns the new master's address."""
        old = tuple(old) if old else (self.killed.address if self.killed else None)
        if old is None:
            raise ValueError("no old master: pass old= or call kill_master() first")

        def promoted() -> Address | None:
            addresses = set()
            for sentinel in self.sentinels:
                if sentinel.running:
                    host, port = sentinel.call("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service,
                                               decode_responses=True)
                    addresses.add((host, int(port)))
            if len(addresses) != 1 or old in addresses:
                return None
            address = addresses.pop()
            role = self.node_at(address).call("ROLE")[0]
            return address if role == b"master" else None

        return _wait(promoted, timeout, f"failover of {self.service} away from {old}", interval=0.1)

    def restart_killed(self, timeout: float = 30.0) -> RedisNode:
        """Start the node `kill_master()` killed, as a replica of the current master (as Sentinel
        would make it anyway; starting it as a replica leaves no window where it says it is master)."""
        if self.killed is None:
            raise RuntimeError("no killed node to restart")
        node, self.killed = self.killed, None
        host, port = self.master_address()
        node.start(["--replicaof", host, str(port)])
        self.wait_for_replica(node, timeout)
        self.wait_until_ready(timeout)
        return node

    def wait_for_replica(self, node: RedisNode, timeout: float = 30.0) -> None:
        """Wait until `node` is a replica of the current master, in sync."""
        def in_sync() -> bool:
            info = node.call("INFO", "replication")
            return (info.get("role") == "slave" and info.get("master_link_status") == "up"
                    and (info.get("master_host"), info.get("master_port")) == self.master_address())

        _wait(in_sync, timeout, f"node {node.port} replicating the master", interval=0.1)

    def manual_failover(self, timeout: float = 30.0) -> tuple[Address, RedisNode]:
        """SENTINEL FAILOVER with the master alive; returns the new master's address and the old master,
        which Sentinel demotes to a replica some seconds later (see wait_for_replica)."""
        old = self.master
        self.sentinels[0].call("SENTINEL", "FAILOVER", self.service)
        return self.wait_for_failover(timeout, old=old.address), old

    def sentinel_client(self, **connection_kwargs: Any) -> redis.sentinel.Sentinel:
        import redis.sentinel

        return redis.sentinel.Sentinel(self.sentinel_addresses, socket_timeout=1, **connection_kwargs)


# ---------------------------------------------------------------------------------------------------------
# Cluster

CLUSTER_SLOTS = 16384


class ClusterSet(_Topology):
    """Three masters (cluster-enabled yes), joined with `redis-cli --cluster create ...
    --cluster-replicas 0 --cluster-yes`. Ready on entry: every node reports cluster_state:ok and
    the same slot map. Each node has RDB on explicit SAVE only, so a node can be put back to a snapshot."""

    def __init__(self, masters: int = 3, node_timeout_ms: int = 2000) -> None:
        super().__init__("cluster")
        self.redis_cli = _binary("redis-cli")
        self.masters: list[RedisNode] = []
        self._count = masters
        self.node_timeout_ms = node_timeout_ms
        self._snapshots: dict[int, Path] = {}

    def _start(self) -> None:
        for index in range(self._count):
            node = self._node(f"node-{index}", {
                "cluster-enabled": "yes", "cluster-config-file": "nodes.conf",
                "cluster-node-timeout": str(self.node_timeout_ms),
                # The bus port defaults to port + 10000, which may be taken or past 65535.
                "cluster-port": str(free_port()),
                "save": "", "appendonly": "no", "dbfilename": "dump.rdb", "maxmemory-policy": "noeviction",
            })
            node.start()
            self.masters.append(node)
        result = subprocess.run(
            [self.redis_cli, "--cluster", "create", *(f"{HOST}:{n.port}" for n in self.masters),
             "--cluster-replicas", "0", "--cluster-yes"],
            capture_output=True, text=True, timeout=60)
        if result.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed:\n{result.stdout}\n{result.stderr}")
        self.wait_until_healthy(START_TIMEOUT)

    def wait_until_healthy(self, timeout: float = START_TIMEOUT) -> None:
        """Every node says cluster_state:ok and reports the same map covering all slots."""
        def healthy() -> bool:
            maps = []
            for node in self.masters:
                info = node.call("CLUSTER", "INFO", decode_responses=True)
                if "cluster_state:ok" not in info:
                    return False
                maps.append(self._slot_map(node))
            return all(m == maps[0] for m in maps) and len(maps[0]) == CLUSTER_SLOTS

        _wait(healthy, timeout, "cluster_state:ok with one slot map on every node", interval=0.1)

    @staticmethod
    def _slot_map(node: RedisNode) -> dict[int, int]:
        slots = {}
        for start, end, primary, *_replicas in node.call("CLUSTER", "SLOTS"):
            for slot in range(start, end + 1):
                slots[slot] = int(primary[1])
        return slots

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"{HOST}:{n.port}" for n in self.masters)

    @property
    def startup_nodes(self) -> list[Address]:
        return [n.address for n in self.masters]

    def node_at(self, address: Address) -> RedisNode:
        for node in self.masters:
            if node.address == tuple(address):
                return node
        raise KeyError(address)

    def slot_for_key(self, key: str | bytes) -> int:
        return int(self.masters[0].call("CLUSTER", "KEYSLOT", key))

    def node_for_key(self, key: str | bytes) -> RedisNode:
        """The master serving `key`'s slot, as the cluster itself says (CLUSTER KEYSLOT + CLUSTER SLOTS)."""
        slot = self.slot_for_key(key)
        for node in self.masters:
            if node.running:
                return self.node_at((HOST, self._slot_map(node)[slot]))
        raise RuntimeError("no cluster node is running")

    def flushall(self, node: RedisNode) -> None:
        """Wipe one shard's data (the others keep theirs)."""
        node.call("FLUSHALL")

    def snapshot(self, node: RedisNode) -> Path:
        """SAVE one node and keep a copy of its dump."""
        node.call("SAVE")
        copy = self.root / f"snapshot-{node.port}-{time.monotonic_ns()}.rdb"
        shutil.copyfile(node.directory / "dump.rdb", copy)
        self._snapshots[node.port] = copy
        return copy

    def restart_from_snapshot(self, node: RedisNode, snapshot: Path | None = None,
                              timeout: float = 30.0) -> None:
        """SIGKILL one node, put its dump back (the last `snapshot(node)` unless given), start it with
        its own nodes.conf so it rejoins with the same id and slots, and wait for the cluster to be ok."""
        snapshot = snapshot or self._snapshots.get(node.port)
        if snapshot is None:
            raise RuntimeError(f"no snapshot of node {node.port}: call snapshot(node) first")
        node.kill()
        shutil.copyfile(snapshot, node.directory / "dump.rdb")
        node.start()
        self.wait_until_healthy(timeout)

    def cluster_client(self, **kwargs: Any) -> redis.cluster.RedisCluster:
        from redis.cluster import ClusterNode, RedisCluster

        kwargs.setdefault("socket_timeout", 2)
        return RedisCluster(startup_nodes=[ClusterNode(h, p) for h, p in self.startup_nodes], **kwargs)


@contextlib.contextmanager
def topology(kind: str, **kwargs: Any) -> Iterator[PersistentRedis | SentinelSet | ClusterSet]:
    """`topology("persistent" | "sentinel" | "cluster", ...)`, for a parametrised fixture."""
    classes = {"persistent": PersistentRedis, "sentinel": SentinelSet, "cluster": ClusterSet}
    with classes[kind](**kwargs) as started:
        yield started
