"""Which Redis REDIS_URL names, checked at start, and running commands and scripts on it.

    redis://[user:password@]host:port[/db]              one Redis   (rediss:// for TLS)
    unix://[user:password@]/path/to/socket[?db=N]        one Redis on a unix socket
    redis+sentinel://[user:password@]host:port[,host:port...]/service_name[/db]
    redis+cluster://[user:password@]host:port[,host:port...]
                                                        (rediss+sentinel://, rediss+cluster:// for TLS)

The forms are the `limits` library's. The credentials are the data nodes' (sentinels are
asked without). Through redis-py's public clients: `redis.Redis`, `redis.sentinel.Sentinel`
(which finds the master by itself after a failover) and `redis.cluster.RedisCluster`.
`on_connect` is called for every new connection to a data node (redis-py's
`redis_connect_func`): a new connection is how a restarted Redis, a restored snapshot or a
failover shows itself, and the revocation store then verifies Redis against the database.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

import redis
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.exceptions import NoScriptError, RedisError
from redis.retry import Retry
from redis.sentinel import Sentinel

from app.config import ConfigError, Settings
from app.revocation.scripts import SCRIPTS

SCHEMES = ("redis", "rediss", "unix", "redis+sentinel", "rediss+sentinel", "redis+cluster", "rediss+cluster")
HOST_PORT = re.compile(r"^(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[^:\[\]/]+)):(?P<port>\d{1,5})$")


@dataclass(frozen=True)
class RedisTarget:
    kind: str  # standalone, sentinel or cluster
    url: str = ""  # standalone: as given (redis-py parses it)
    hosts: tuple[tuple[str, int], ...] = ()
    service: str | None = None
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: bool = False


def _hosts(netloc: str) -> tuple[tuple[str, int], ...]:
    hosts = []
    for part in netloc.split(","):
        match = HOST_PORT.match(part.strip())
        if match is None or not 0 < int(match["port"]) < 65536:
            raise ConfigError(f"REDIS_URL hosts must be host:port, comma-separated; got {part.strip()!r}")
        hosts.append((match["v6"] or match["host"], int(match["port"])))
    return tuple(hosts)


def parse_redis_url(url: str) -> RedisTarget:
    """The Redis REDIS_URL names, or a one-line ConfigError (never a traceback per worker)."""
    scheme, separator, rest = url.partition("://")
    if not separator or scheme not in SCHEMES:
        raise ConfigError(f"REDIS_URL must start with one of {', '.join(s + '://' for s in SCHEMES)}; "
                          f"got {scheme + '://' if separator else repr(url[:20])}")
    if scheme in ("redis", "rediss", "unix"):
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018 - parsed for its check
        except ValueError as error:
            raise ConfigError(f"REDIS_URL is not a valid URL ({error})") from None
        if scheme == "unix":
            if not parts.path:
                raise ConfigError("REDIS_URL unix:// needs a socket path")
        elif not parts.hostname:
            raise ConfigError("REDIS_URL needs a host")
        else:
            database = parts.path.lstrip("/")
            if database and not database.isdigit():
                raise ConfigError(f"REDIS_URL database must be a number, got {database!r}")
        return RedisTarget("standalone", url=url)
    credentials, _, location = rest.rpartition("@")
    username, _, password = credentials.partition(":") if credentials else ("", "", "")
    netloc, _, path = location.partition("/")
    target = {"hosts": _hosts(netloc), "username": unquote(username) or None, "password": unquote(password) or None,
              "tls": scheme.startswith("rediss")}
    segments = [segment for segment in path.split("/") if segment]
    if scheme.endswith("sentinel"):
        if not segments or len(segments) > 2:
            raise ConfigError("REDIS_URL redis+sentinel:// needs /service_name (and optionally /db) after the hosts")
        if len(segments) == 2 and not segments[1].isdigit():
            raise ConfigError(f"REDIS_URL database must be a number, got {segments[1]!r}")
        return RedisTarget("sentinel", service=segments[0], db=int(segments[1]) if len(segments) == 2 else 0,
                           **target)
    if segments:
        raise ConfigError("REDIS_URL redis+cluster:// takes no path (a cluster has one database)")
    return RedisTarget("cluster", **target)


def check_redis_url(url: str) -> None:
    parse_redis_url(url)


@dataclass(frozen=True)
class ScriptCall:
    """One script run: on Cluster its keys must share a slot (one bucket)."""

    script: str  # a name in app.revocation.scripts.SCRIPTS
    keys: Sequence[str]
    args: Sequence[Any]


class RedisStore:
    """The revocation store's Redis, whatever its topology."""

    def __init__(self, settings: Settings, on_connect: Callable[[], None]) -> None:
        self._on_connect = on_connect
        timeout = settings.redis_socket_timeout
        common: dict[str, Any] = {
            "socket_timeout": timeout,
            "socket_connect_timeout": timeout,
            # One immediate retry hides a pooled connection that died with a Redis restart or
            # a failover; more would stretch an outage past the bounded time a request may wait.
            "retry": Retry(NoBackoff(), 1),
            "decode_responses": True,
        }
        self.clustered = False
        if settings.redis_url is None:
            try:
                import fakeredis
            except ImportError:  # the production image has no fakeredis: REDIS_URL is required there
                raise ConfigError("REDIS_URL is not set and fakeredis (the in-process development store) "
                                  "is not installed") from None
            self.client: Any = fakeredis.FakeRedis(decode_responses=True)
        else:
            target = parse_redis_url(settings.redis_url)
            auth = {"username": target.username, "password": target.password}
            if target.kind == "standalone":
                self.client = redis.Redis.from_url(settings.redis_url, redis_connect_func=self._handshake, **common)
            elif target.kind == "sentinel":
                sentinel = Sentinel(list(target.hosts), socket_timeout=timeout, socket_connect_timeout=timeout,
                                    sentinel_kwargs={"socket_timeout": timeout, "socket_connect_timeout": timeout})
                self.client = sentinel.master_for(target.service, db=target.db, ssl=target.tls,
                                                  redis_connect_func=self._handshake, **auth, **common)
            else:
                self.clustered = True
                # RedisCluster runs each connection's handshake itself, then ours.
                self.client = RedisCluster(startup_nodes=[ClusterNode(h, p) for h, p in target.hosts],
                                           ssl=target.tls, redis_connect_func=lambda _connection: self._on_connect(),
                                           **auth, **common)
        self._sources = SCRIPTS
        self._shas = {name: hashlib.sha1(source.encode()).hexdigest()  # noqa: S324 - Redis names scripts so
                      for name, source in SCRIPTS.items()}

    def _handshake(self, connection: Any) -> None:
        connection.on_connect()  # redis-py's own: AUTH, HELLO, SELECT
        self._on_connect()

    # --- scripts ----------------------------------------------------------------------

    def run(self, call: ScriptCall) -> Any:
        """One script, loading it where Redis does not know it (a new Redis, a new shard)."""
        sha = self._shas[call.script]
        node = self._node(call.keys[0]) if self.clustered else None
        try:
            return self._evalsha(sha, call, node)
        except NoScriptError:
            self._load(call.script, node)
            return self._evalsha(sha, call, node)

    def run_together(self, calls: Sequence[ScriptCall]) -> list[Any]:
        """Several scripts in one exchange: on Cluster, one pipelined write to every shard
        concerned, then the replies (redis-py's ClusterPipeline)."""
        if len(calls) == 1:
            return [self.run(calls[0])]
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

    def _evalsha(self, sha: str, call: ScriptCall, node: Any) -> Any:
        args = ("EVALSHA", sha, len(call.keys), *call.keys, *call.args)
        if node is not None:
            return self.client.execute_command(*args, target_nodes=node)
        return self.client.execute_command(*args)

    def _load(self, script: str, node: Any) -> None:
        if node is not None:
            self.client.execute_command("SCRIPT", "LOAD", self._sources[script], target_nodes=node)
        else:
            self.client.script_load(self._sources[script])

    def _node(self, key: str) -> Any:
        return self.client.get_node_from_key(key)

    # --- plain commands ----------------------------------------------------------------

    def get_many(self, keys: Sequence[str]) -> list[str | None]:
        """GET of keys that may live on different shards, in one exchange."""
        if not self.clustered:
            return self.client.mget(keys)
        pipe = self.client.pipeline(transaction=False)
        for key in keys:
            pipe.get(key)
        return pipe.execute()

    def primaries(self) -> list[Any]:
        """A client for each primary (one, unless clustered)."""
        if not self.clustered:
            return [self.client]
        return [self.client.get_redis_connection(node) for node in self.client.get_primaries()]

    def ping(self) -> None:
        for client in self.primaries():
            client.ping()

    def close(self) -> None:
        self.client.close()

