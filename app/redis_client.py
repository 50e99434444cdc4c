"""The Redis that `REDIS_URL` names, whatever its topology, through redis-py's public clients:
named Lua scripts, plain commands, a pub/sub channel (ARCHITECTURE.md, "Redis")."""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import hiredis
import redis
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisClusterException, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry
from redis.sentinel import Sentinel

from app.errors import ServiceUnavailable
from app.metrics import BACKEND_ERRORS, labelled
from app.redis_url import RedisTarget

log = logging.getLogger(__name__)

# What a Redis that cannot answer raises (RedisCluster's own exceptions are not RedisErrors).
REDIS_ERRORS = (RedisError, RedisClusterException)


class NoRedis(Exception):
    """No REDIS_URL and no in-process stand-in (fakeredis) to use instead."""


@dataclass(frozen=True)
class ScriptCall:
    """One script run: on Cluster its keys must share a slot."""

    script: str  # a name in the client's scripts
    keys: Sequence[str]
    args: Sequence[Any]


def _in_process() -> Any:
    """fakeredis, for development without REDIS_URL and the fast unit tests; the production
    image does not install it (a documented optional dependency, imported only here)."""
    try:
        import fakeredis
    except ImportError:
        raise NoRedis("REDIS_URL is not set and fakeredis (the in-process development store) "
                      "is not installed") from None
    return fakeredis.FakeRedis(decode_responses=True)


class RedisClient:
    def __init__(self, target: RedisTarget | None, timeout: float, scripts: Mapping[str, str],
                 on_connect: Callable[[], None] = lambda: None) -> None:
        self.on_connect = on_connect
        self.timeout = timeout
        self._scripts = dict(scripts)
        self._shas = {name: hashlib.sha1(source.encode()).hexdigest()  # noqa: S324 - Redis names scripts so
                      for name, source in self._scripts.items()}
        self.clustered = target is not None and target.kind == "cluster"
        self.in_process = target is None  # fakeredis: one process, never evicts, no INFO
        self._cluster: RedisCluster | None = None
        self._cluster_lock = threading.Lock()
        # Connections _command keeps between commands: at most one per thread that ran one at once.
        self._idle: list[Any] = []
        self._idle_pid = os.getpid()
        common: dict[str, Any] = {
            "socket_timeout": timeout,
            "socket_connect_timeout": timeout,
            # One immediate retry hides a pooled connection that died with a Redis restart or
            # a failover; more would stretch an outage past the bounded time a request may wait.
            "retry": Retry(NoBackoff(), 1),
            "decode_responses": True,
        }
        if target is None:
            self._client: Any = _in_process()
        elif target.kind == "standalone":
            self._client = redis.Redis.from_url(target.url, redis_connect_func=self._handshake, **common)
        elif target.kind == "sentinel":
            sentinel = Sentinel(list(target.hosts), socket_timeout=timeout, socket_connect_timeout=timeout,
                                sentinel_kwargs={"socket_timeout": timeout, "socket_connect_timeout": timeout})
            self._client = sentinel.master_for(target.service, db=target.db, ssl=target.tls,
                                               username=target.username, password=target.password,
                                               redis_connect_func=self._handshake, **common)
        else:
            # Made on first use, so that a cluster down at start is a 503 then, not a worker that
            # cannot start. RedisCluster runs each connection's handshake itself, then ours.
            self._cluster_options = {
                "startup_nodes": [ClusterNode(h, p) for h, p in target.hosts], "ssl": target.tls,
                "username": target.username, "password": target.password,
                "redis_connect_func": lambda _connection: self.on_connect(), **common}

    @property
    def client(self) -> Any:
        """redis-py's client for this topology (Redis, a Sentinel master, or RedisCluster)."""
        if not self.clustered:
            return self._client
        with self._cluster_lock:
            if self._cluster is None:
                self._cluster = RedisCluster(**self._cluster_options)
            return self._cluster

    def _handshake(self, connection: Any) -> None:
        connection.on_connect()  # redis-py's own: AUTH, HELLO, SELECT
        self.on_connect()

    # --- scripts ----------------------------------------------------------------------

    def run(self, call: ScriptCall) -> Any:
        """One script, loaded first where Redis does not know it (a new Redis, a new shard)."""
        node = self._node(call.keys[0]) if self.clustered and call.keys else None
        try:
            return self._evalsha(call, node)
        except NoScriptError:
            self._load(call.script, node)
            return self._evalsha(call, node)

    def _command(self, *args: Any) -> Any:
        """One command, packed once by hiredis, through redis-py's public connection API
        (`get_connection`, `send_packed_command`, `read_response`), on a connection kept out of the
        pool between commands: the command's cost without the client's per-call machinery (bench/RESULTS.md).
        As the client's one immediate retry: a connection that broke or timed out is closed and
        given back with every other kept one (no late reply can answer a later command), and the
        command goes once more on a fresh one from the pool."""
        packed = [hiredis.pack_command(args)]
        for attempt in (1, 2):
            connection = self._borrow()
            try:
                connection.send_packed_command(packed)
                reply = connection.read_response()
            except ResponseError:
                self._idle.append(connection)  # Redis answered (NOSCRIPT, a script error): in step
                raise
            except (RedisConnectionError, RedisTimeoutError):
                # A restart or a failover broke every kept connection, not just this one.
                for broken in (connection, *self._take_idle()):
                    self._give_back(broken)
                if attempt == 2:
                    raise
            except BaseException:
                self._give_back(connection)  # interrupted mid-exchange: its state is unknown
                raise
            else:
                self._idle.append(connection)
                return reply
        raise AssertionError("unreachable")

    def _borrow(self) -> Any:
        """An idle kept connection, or a new one from the pool (none kept across a fork)."""
        if self._idle_pid != os.getpid():
            self._idle_pid, self._idle = os.getpid(), []
        try:
            return self._idle.pop()  # atomic: two threads never get the same connection
        except IndexError:
            return self._client.connection_pool.get_connection()

    def _take_idle(self) -> list[Any]:
        """Every kept connection, each by one atomic pop of the list `_borrow` pops from: a
        connection another thread borrows meanwhile is its own, never also taken here."""
        taken = []
        while True:
            try:
                taken.append(self._idle.pop())
            except IndexError:
                return taken

    def _give_back(self, connection: Any) -> None:
        connection.disconnect()
        self._client.connection_pool.release(connection)

    def run_together(self, calls: Sequence[ScriptCall]) -> list[Any]:
        """Several scripts in one exchange: on Cluster, one pipelined write to every shard
        concerned, then the replies (redis-py's ClusterPipeline)."""
        if len(calls) == 1:
            return [self.run(calls[0])]
        replies: list[Any] = []
        for attempt in (1, 2):
            pipe = self.client.pipeline(transaction=False)
            for call in calls:
                args = ("EVALSHA", self._shas[call.script], len(call.keys), *call.keys, *call.args)
                if self.clustered:
                    pipe.execute_command(*args, target_nodes=self._node(call.keys[0]))
                else:
                    pipe.execute_command(*args)
            replies = pipe.execute(raise_on_error=False)
            missing = [call for call, reply in zip(calls, replies, strict=True) if isinstance(reply, NoScriptError)]
            if not missing or attempt == 2:
                break
            for call in missing:
                self._load(call.script, self._node(call.keys[0]) if self.clustered else None)
        for reply in replies:
            if isinstance(reply, RedisError):
                raise reply
        return replies

    def _evalsha(self, call: ScriptCall, node: Any) -> Any:
        args = ("EVALSHA", self._shas[call.script], len(call.keys), *call.keys, *call.args)
        if node is not None:
            return self.client.execute_command(*args, target_nodes=node)
        if self.in_process:
            return self.client.execute_command(*args)
        return self._command(*args)

    def _load(self, script: str, node: Any) -> None:
        if node is not None:
            self.client.execute_command("SCRIPT", "LOAD", self._scripts[script], target_nodes=node)
        else:
            self.client.script_load(self._scripts[script])

    def _node(self, key: str) -> Any:
        return self.client.get_node_from_key(key)

    # --- plain commands ----------------------------------------------------------------

    def hget_many(self, keys: Sequence[str], field_name: str) -> list[str | None]:
        """HGET of one field of keys that may live on different shards, in one exchange."""
        pipe = self.client.pipeline(transaction=False)
        for key in keys:
            pipe.hget(key, field_name)
        return pipe.execute()

    def primaries(self) -> list[Any]:
        """A client for each primary (one, unless clustered)."""
        if not self.clustered:
            return [self.client]
        return [self.client.get_redis_connection(node) for node in self.client.get_primaries()]

    def ping(self) -> None:
        for client in self.primaries():
            client.ping()

    def pubsub(self) -> Any:
        """A pub/sub connection of its own (redis-py resubscribes it after a reconnection)."""
        return self.client.pubsub()

    def close(self) -> None:
        if not self.clustered or self._cluster is not None:
            self.client.close()


@contextmanager
def fail_closed() -> Iterator[None]:
    """Any Redis error or timeout is a 503: no answer from Redis is ever a pass."""
    try:
        yield
    except REDIS_ERRORS as error:
        log.warning("redis unavailable", extra={"fields": {"error": type(error).__name__}})
        labelled(BACKEND_ERRORS, "redis").inc()
        raise ServiceUnavailable("The revocation store is unavailable; try again shortly.") from None
