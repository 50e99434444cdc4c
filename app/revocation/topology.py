"""Which Redis REDIS_URL names, checked at start, and the redis-py client for it."""

from __future__ import annotations

from urllib.parse import urlsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from app.config import ConfigError, Settings

SCHEMES = ("redis", "rediss", "unix")


def check_redis_url(url: str) -> None:
    """A one-line ConfigError for a REDIS_URL that cannot work (never a traceback per worker)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as error:
        raise ConfigError(f"REDIS_URL is not a valid URL ({error})") from None
    if parts.scheme not in SCHEMES:
        raise ConfigError(f"REDIS_URL must start with {', '.join(s + '://' for s in SCHEMES)}; "
                          f"got {parts.scheme or 'no'} scheme")
    if parts.scheme == "unix":
        if not parts.path:
            raise ConfigError("REDIS_URL unix:// needs a socket path")
        return
    if not parts.hostname:
        raise ConfigError("REDIS_URL needs a host")
    database = parts.path.lstrip("/")
    if database and not database.isdigit():
        raise ConfigError(f"REDIS_URL database must be a number, got {database!r}")
    del port  # parsed for its check only


def connect(settings: Settings) -> redis.Redis:
    if settings.redis_url is None:
        try:
            import fakeredis
        except ImportError:  # the production image has no fakeredis: REDIS_URL is required there
            raise ConfigError("REDIS_URL is not set and fakeredis (the in-process development store) "
                              "is not installed") from None
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
