"""Revocation (DESIGN §3): a Redis denylist, made durable by an audit log in the database.

Keys (all under REDIS_KEY_PREFIX):
    rev:loaded          marker: the denylist has been loaded since Redis last lost its data
    rev:jti:<jti>       a token, by its `jti`
    rev:tok:<digest>    a token without `jti`, by the digest of its claims (app.auth.token_digest)
    rev:sid:<sid>       every token of a session
    rev:user:<user_id>  a cutoff (epoch seconds): every token of the user with `iat` <= it

Every request costs one round trip: MGET, plus the caller's rate-limit count (app.ratelimit),
written at once on a connection its thread keeps (`_round_trip`). Every write goes to the
audit table first (same transaction as the request), then to Redis; a Redis failure is
a 503 and the request's transaction rolls back. When the marker is missing (Redis
restarted empty, FLUSHALL, failover), the denylist is rebuilt from the audit table
before any token is accepted.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import hiredis
import redis
from flask import Flask, current_app
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.auth import token_digest
from app.config import ConfigError, Settings
from app.errors import ServiceUnavailable
from app.models import Revocation
from app.observability import BACKEND_ERRORS, REVOCATION_CHECKS, labelled

log = logging.getLogger(__name__)
EXTENSION_KEY = "taskgate.revocations"
EVICTING_POLICIES = ("allkeys-", "volatile-")
KEY_NAMES = {"session": "sid", "token": "tok"}  # revocation kind -> key segment (see above)
NOT_ENOUGH_DATA = object()  # what the hiredis reader returns until a whole reply has arrived


@dataclass(frozen=True)
class RevocationTarget:
    """What to deny: `kind` is jti, token, session or user; `value` names it."""

    kind: str
    value: str
    expires_at: float
    user_id: str | None = None
    cutoff: float | None = None  # user revocations: tokens with iat <= cutoff are denied


def connect(settings: Settings) -> redis.Redis:
    if settings.redis_url is None:
        import fakeredis

        return fakeredis.FakeRedis(decode_responses=True)
    return redis.Redis.from_url(
        settings.redis_url,
        socket_timeout=settings.redis_socket_timeout,
        socket_connect_timeout=settings.redis_socket_timeout,
        # One immediate retry hides a pooled connection that died with a Redis restart;
        # more would stretch an outage past the bounded time a request may wait.
        retry=Retry(NoBackoff(), 1),
        health_check_interval=30,
        decode_responses=True,
    )


class _Link:
    """One thread's Redis connection for the per-request round trip (RevocationStore._round_trip).
    `direct`: read the replies off the socket with our own hiredis reader; otherwise (an
    in-process fake Redis, which has no socket) through redis-py's connection API."""

    def __init__(self, connection: Any, direct: bool) -> None:
        self.connection, self.direct = connection, direct
        self.reader: hiredis.Reader | None = None
        self.buffer = bytearray(16384)

    def exchange(self, packed: bytes, replies: int) -> list[Any]:
        connection = self.connection
        if not self.direct:
            try:
                connection.send_packed_command([packed])
                return [connection.read_response() for _ in range(replies)]
            except BaseException:
                self.close()
                raise
        try:
            if connection._sock is None or self.reader is None:
                connection.connect()  # redis-py's handshake: AUTH, SELECT, HELLO
                encoder = connection.encoder
                self.reader = hiredis.Reader(replyError=ResponseError, notEnoughData=NOT_ENOUGH_DATA,
                                             encoding=encoder.encoding, errors=encoder.encoding_errors)
            else:
                connection.check_health()  # a PING when idle past health_check_interval
            sock, reader, buffer = connection._sock, self.reader, self.buffer
            sock.sendall(packed)
            results: list[Any] = []
            while len(results) < replies:
                reply = reader.gets()
                if reply is NOT_ENOUGH_DATA:
                    received = sock.recv_into(buffer)
                    if not received:
                        raise RedisConnectionError("Redis closed the connection.")
                    reader.feed(buffer, 0, received)
                elif isinstance(reply, RedisError):
                    raise reply
                else:
                    results.append(reply)
            if connection.health_check_interval:
                connection.next_health_check = time.monotonic() + connection.health_check_interval
            return results
        except TimeoutError:  # socket.timeout
            self.close()
            raise RedisTimeoutError("Timeout talking to Redis.") from None
        except OSError as error:
            self.close()
            raise RedisConnectionError(f"Error talking to Redis: {type(error).__name__}.") from None
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        self.reader = None
        self.connection.disconnect()


class RevocationStore:
    def __init__(self, client: redis.Redis, settings: Settings, session_factory: Any) -> None:
        self.client = client
        self.prefix = settings.redis_key_prefix
        self.max_age = settings.max_age_seconds
        self.leeway = settings.leeway_seconds
        self.session_factory = session_factory
        self.marker = f"{self.prefix}rev:loaded"
        self._local = threading.local()  # this thread's connection for _round_trip

    # --- keys and lifetimes ------------------------------------------------------

    def key(self, kind: str, value: str) -> str:
        return f"{self.prefix}rev:{KEY_NAMES.get(kind, kind)}:{value}"

    def token_target(self, claims: dict[str, Any], digest: str) -> RevocationTarget:
        """The entry that denies this token; it lives as long as the token could."""
        last_valid = min(float(claims["exp"]), float(claims["iat"]) + self.max_age) + self.leeway
        user_id = claims.get("sub") if isinstance(claims.get("sub"), str) else None
        if claims.get("jti"):
            return RevocationTarget("jti", claims["jti"], last_valid, user_id)
        return RevocationTarget("token", digest, last_valid, user_id)

    def open_ended_target(self, kind: str, value: str, user_id: str | None = None,
                          now: float | None = None) -> RevocationTarget:
        """A jti, session or user cutoff: any token it can affect was issued by now, so
        none outlives now + the maximum token age."""
        now = time.time() if now is None else now
        cutoff = now if kind == "user" else None
        return RevocationTarget(kind, value, now + self.max_age + self.leeway, user_id, cutoff)

    # --- the per-request check ---------------------------------------------------

    def check(self, principal: Any, window: Any = None) -> tuple[bool, int]:
        """Is the token revoked; and, given a rate-limit `window` (app.ratelimit.Window),
        this request's count in it. One round trip: MGET, plus the window's increment."""
        token_key = self.key("jti", principal.jti) if principal.jti else self.key("token", principal.token_digest)
        keys = [self.marker, token_key, self.key("user", principal.user_id)]
        if principal.sid:
            keys.append(self.key("session", principal.sid))
        commands = [("MGET", *keys)]
        if window is not None:
            commands.extend(window.commands())
        try:  # not `with self._redis()`: a generator context manager costs µs on every request
            values, *replies = self._round_trip(commands)
            if values[0] is None:
                self.rebuild()
                values = self.client.mget(keys)
        except RedisError as error:
            raise _unavailable(error) from None
        marker, token, cutoff, *session = values
        if marker is None:
            raise ServiceUnavailable("The revocation list is being restored; try again shortly.")
        revoked = token is not None or any(v is not None for v in session) or (
            cutoff is not None and principal.iat <= float(cutoff))
        labelled(REVOCATION_CHECKS, "revoked" if revoked else "ok").inc()
        return revoked, replies[0] if replies else 0

    def count(self, window: Any) -> int:
        """One request counted in a rate-limit window (app.ratelimit.Window), on its own."""
        with self._redis():
            return self._round_trip(window.commands())[0]

    def _round_trip(self, commands: list[tuple[str, ...]]) -> list[Any]:
        """Send `commands` in one write and read their replies: a pipeline without redis-py's
        per-command, per-reply and pool bookkeeping, which cost more CPU than the round trip
        itself (the per-request path; bench/micro_routes.py). Each thread keeps its own
        connection: redis-py connects it (handshake, timeouts, health check), and the replies
        are read with the thread's own hiredis reader. A connection that fails is closed, and
        one fresh attempt made, as the client's Retry does; anything else closes it too, so
        no unread reply is ever left on it."""
        packed = b"".join([hiredis.pack_command(command) for command in commands])
        link = self._thread_link()
        try:
            return link.exchange(packed, len(commands))
        except (RedisConnectionError, RedisTimeoutError):
            return link.exchange(packed, len(commands))  # reconnects: it was closed

    def _thread_link(self) -> _Link:
        local = self._local
        if getattr(local, "pid", None) != os.getpid():  # first use in this thread, or a forked copy
            pool = self.client.connection_pool
            direct = not pool.connection_class.__module__.startswith("fakeredis")
            local.link, local.pid = _Link(pool.connection_class(**pool.connection_kwargs), direct), os.getpid()
        return local.link

    # --- writes --------------------------------------------------------------------

    def revoke(self, session: Session, target: RevocationTarget, actor: str, reason: str | None) -> Revocation:
        """Record the revocation in `session` (the caller commits) and deny it in Redis now."""
        record = Revocation(kind=target.kind, target=target.value, user_id=target.user_id, actor=actor,
                            reason=reason, expires_at=datetime.fromtimestamp(target.expires_at, UTC))
        if target.cutoff is not None:
            record.created_at = datetime.fromtimestamp(target.cutoff, UTC)
        session.add(record)
        session.flush()
        with self._redis():
            self._deny(target, record)
        return record

    def revoke_user(self, session: Session, user_id: str, actor: str, reason: str | None = None) -> Revocation:
        return self.revoke(session, self.open_ended_target("user", user_id, user_id), actor, reason)

    def revoke_session(self, session: Session, sid: str, actor: str, reason: str | None = None) -> Revocation:
        return self.revoke(session, self.open_ended_target("session", sid), actor, reason)

    def revoke_jti(self, session: Session, jti: str, actor: str, reason: str | None = None) -> Revocation:
        return self.revoke(session, self.open_ended_target("jti", jti), actor, reason)

    def revoke_token(self, session: Session, claims: dict[str, Any], actor: str,
                     reason: str | None = None) -> Revocation:
        """Deny one token, given its verified claims (by jti, else by its claims digest)."""
        return self.revoke(session, self.token_target(claims, token_digest(claims)), actor, reason)

    def _deny(self, target: RevocationTarget, record: Revocation) -> None:
        ttl = max(1, math.ceil(target.expires_at - time.time()))
        key = self.key(target.kind, target.value)
        if target.cutoff is None:
            self.client.set(key, "1", ex=ttl)
            return
        cutoff = target.cutoff

        def raise_cutoff(pipe: Any) -> None:
            # WATCH/MULTI: two admins revoking at once can never lower a cutoff.
            current = pipe.get(key)
            pipe.multi()
            if current is None or float(current) < cutoff:
                pipe.set(key, repr(cutoff), ex=ttl)

        self.client.transaction(raise_cutoff, key)

    def rebuild(self) -> int:
        """Load every unexpired revocation from the database into Redis, then set the marker."""
        now = datetime.now(UTC)
        with self.session_factory() as session:
            rows = session.execute(
                select(Revocation.kind, Revocation.target, Revocation.created_at, Revocation.expires_at)
                .where(Revocation.expires_at > now)
            ).all()
        cutoffs: dict[str, tuple[float, float]] = {}
        pipe = self.client.pipeline(transaction=True)
        for kind, value, created_at, expires_at in rows:
            if kind == "user":
                best = cutoffs.get(value)
                if best is None or created_at.timestamp() > best[0]:
                    cutoffs[value] = (created_at.timestamp(), expires_at.timestamp())
                continue
            ttl = max(1, math.ceil(expires_at.timestamp() - now.timestamp()))
            # NX: a key present now was written by a revocation after the loss; keep it.
            pipe.set(self.key(kind, value), "restored", ex=ttl, nx=True)
        for value, (cutoff, expires_at) in cutoffs.items():
            ttl = max(1, math.ceil(expires_at - now.timestamp()))
            pipe.set(self.key("user", value), repr(cutoff), ex=ttl, nx=True)
        pipe.set(self.marker, "1")
        pipe.execute()
        log.warning("revocation list restored from the database", extra={"fields": {"entries": len(rows)}})
        return len(rows)

    def ping(self) -> None:
        with self._redis():
            self.client.ping()

    @contextmanager
    def _redis(self) -> Iterator[None]:
        try:
            yield
        except RedisError as error:
            raise _unavailable(error) from None

    def check_eviction_policy(self) -> None:
        """Evicting denylist keys would let revoked tokens back in: refuse such a Redis."""
        try:
            policy = self.client.config_get("maxmemory-policy").get("maxmemory-policy", "")
        except RedisError as error:
            log.warning("could not read Redis maxmemory-policy (%s); make sure it is noeviction",
                        type(error).__name__)
            return
        if policy.startswith(EVICTING_POLICIES):
            raise ConfigError(f"Redis maxmemory-policy is {policy}: revocations need noeviction")


def _unavailable(error: RedisError) -> ServiceUnavailable:
    # Fail closed: no answer from Redis is never a pass.
    log.warning("redis unavailable", extra={"fields": {"error": type(error).__name__}})
    BACKEND_ERRORS.labels("redis").inc()
    return ServiceUnavailable("The revocation store is unavailable; try again shortly.")


def init_revocations(app: Flask) -> RevocationStore:
    settings: Settings = app.extensions["taskgate.settings"]
    store = RevocationStore(connect(settings), settings, app.extensions["taskgate.db"])
    if settings.is_production:
        store.check_eviction_policy()
    app.extensions[EXTENSION_KEY] = store
    return store


def revocations() -> RevocationStore:
    return current_app.extensions[EXTENSION_KEY]
