"""Rate limits, as fixed windows counted in the same Redis as revocations so every instance
shares them: per user for the API, and per client IP for anonymous calls and for failed or
missing authentication. Off in tests unless turned on.

Limits are written like "600/minute" (parsed by the `limits` library). A window is one Redis
counter, `<prefix>rl:<scope>:<id>:<window number>`, incremented and given a lifetime in one
round trip. The per-user count rides in the same round trip as the revocation check
(`RevocationStore.check`), so an authenticated request costs one Redis round trip in all.
Redis unreachable means 503, as for revocations: fail closed.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

from flask import Flask, current_app, request
from limits import RateLimitItem, parse

from app.config import Settings
from app.errors import ApiError

EXTENSION_KEY = "taskgate.ratelimits"


class RateLimited(ApiError):
    def __init__(self, retry_after: int) -> None:
        super().__init__(429, "rate_limited", "Too many requests; slow down and retry later.",
                         headers={"Retry-After": str(retry_after)})


@dataclass(frozen=True)
class Window:
    """The current window of one limit for one caller: its counter key and bounds."""

    key: str
    limit: int
    seconds: int
    ends_at: float

    def commands(self) -> list[tuple[str, ...]]:
        """The Redis commands that count this request (two replies: the count, then 1)."""
        # The window's number is in the key: the expiry only cleans up.
        return [("INCR", self.key), ("EXPIRE", self.key, str(self.seconds + 1))]

    def enforce(self, count: int, now: float | None = None) -> None:
        if count > self.limit:
            now = time.time() if now is None else now
            raise RateLimited(max(1, math.ceil(self.ends_at - now)))


class RateLimits:
    def __init__(self, settings: Settings, store: Any) -> None:
        self.store = store  # the RevocationStore: its client and its fail-closed error handling
        self.user = parse(settings.rate_limit_user)
        self.ip = parse(settings.rate_limit_ip)
        self.auth_failures = parse(settings.rate_limit_auth_failures)
        self.namespace = f"{settings.redis_key_prefix}rl"

    def window(self, item: RateLimitItem, scope: str, identifier: str, now: float | None = None) -> Window:
        seconds = item.get_expiry()
        number = int((time.time() if now is None else now) // seconds)
        return Window(f"{self.namespace}:{scope}:{item.amount}/{seconds}:{identifier}:{number}", item.amount,
                      seconds, (number + 1) * seconds)

    def user_window(self, user_id: str) -> Window:
        return self.window(self.user, "user", user_id)

    def hit(self, window: Window) -> None:
        """Count one request in its own round trip, and refuse it past the limit."""
        window.enforce(self.store.count(window))

    def anonymous_request(self) -> None:
        self.hit(self.window(self.ip, "ip", request.remote_addr or "unknown"))

    def authentication_failed(self) -> None:
        """Counted when it happens (a valid request pays nothing for it): past the limit, an
        IP's failed or missing authentications are answered 429 instead of 401, so
        guessing tokens or hammering without one stops paying off."""
        self.hit(self.window(self.auth_failures, "authfail", request.remote_addr or "unknown"))


def init_rate_limits(app: Flask) -> None:
    settings: Settings = app.extensions["taskgate.settings"]
    if settings.rate_limits_enabled:
        app.extensions[EXTENSION_KEY] = RateLimits(settings, app.extensions["taskgate.revocations"])


def rate_limits() -> RateLimits | None:
    return current_app.extensions.get(EXTENSION_KEY)
