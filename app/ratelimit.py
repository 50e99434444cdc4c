"""Rate limits (the `limits` library, the engine behind flask-limiter), stored in the same
Redis as revocations so every instance shares them: per user for the API, and per client
IP for failed or missing authentication. Off in tests unless turned on.
"""

from __future__ import annotations

import math
import time

from flask import Flask, current_app, request
from limits import RateLimitItem, parse
from limits.storage import storage_from_string
from limits.strategies import FixedWindowRateLimiter

from app.config import Settings
from app.errors import ApiError

EXTENSION_KEY = "taskgate.ratelimits"


class RateLimited(ApiError):
    def __init__(self, retry_after: int) -> None:
        super().__init__(429, "rate_limited", "Too many requests; slow down and retry later.",
                         headers={"Retry-After": str(retry_after)})


class RateLimits:
    def __init__(self, settings: Settings) -> None:
        if settings.redis_url:
            uri = settings.redis_url
            options = {"socket_timeout": settings.redis_socket_timeout,
                       "socket_connect_timeout": settings.redis_socket_timeout}
        else:
            uri, options = "memory://", {}
        self.limiter = FixedWindowRateLimiter(storage_from_string(uri, **options))
        self.user = parse(settings.rate_limit_user)
        self.ip = parse(settings.rate_limit_ip)
        self.auth_failures = parse(settings.rate_limit_auth_failures)
        self.namespace = f"{settings.redis_key_prefix}rl"

    def _enforce(self, item: RateLimitItem, *identifiers: str) -> None:
        allowed = self.limiter.hit(item, self.namespace, *identifiers)
        if not allowed:
            reset = self.limiter.get_window_stats(item, self.namespace, *identifiers).reset_time
            raise RateLimited(max(1, math.ceil(reset - time.time())))

    def user_request(self, user_id: str) -> None:
        self._enforce(self.user, "user", user_id)

    def anonymous_request(self) -> None:
        self._enforce(self.ip, "ip", request.remote_addr or "unknown")

    def authentication_failed(self) -> None:
        """Counted when it happens (a valid request pays nothing for it): past the limit, an
        IP's failed or missing authentications are answered 429 instead of 401, so
        guessing tokens or hammering without one stops paying off."""
        self._enforce(self.auth_failures, "authfail", request.remote_addr or "unknown")


def init_rate_limits(app: Flask) -> None:
    settings: Settings = app.extensions["taskgate.settings"]
    if settings.rate_limits_enabled:
        app.extensions[EXTENSION_KEY] = RateLimits(settings)


def rate_limits() -> RateLimits | None:
    return current_app.extensions.get(EXTENSION_KEY)
