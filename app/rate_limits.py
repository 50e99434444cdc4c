"""Fixed-window rate limits per user and per client IP, counted in the Redis that holds the
revocations (ARCHITECTURE.md, "Rate limits")."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from limits import RateLimitItem, parse

from app.config import Settings
from app.errors import ApiError
from app.redis_client import RedisClient, ScriptCall, fail_closed
from app.revocation.layout import Layout

# One request counted in a fixed window.  KEYS: counter.  ARGV: ttl.  Returns the count.
COUNT = """
local count = redis.call('INCR', KEYS[1])
if count == 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
return count
"""
SCRIPTS = {"count": COUNT}


class RateLimited(ApiError):
    def __init__(self, retry_after: int, headers: dict[str, str]) -> None:
        super().__init__(429, "rate_limited", "Too many requests; slow down and retry later.",
                         headers={"Retry-After": str(retry_after), **headers})


@dataclass(frozen=True)
class Window:
    """The current window of one limit for one caller: its counter key and bounds."""

    key: str
    limit: int
    seconds: int
    ends_at: float
    policy: str  # its name in the RateLimit headers

    @property
    def ttl(self) -> int:
        # The window's number is in the key: the expiry only cleans up.
        return self.seconds + 1

    def headers(self, count: int, now: float | None = None) -> dict[str, str]:
        """RateLimit-Policy and RateLimit (IETF httpapi draft, draft-ietf-httpapi-ratelimit-headers):
        the quota and window, and what is left of it and when it resets."""
        reset = max(1, math.ceil(self.ends_at - (time.time() if now is None else now)))
        return {"RateLimit-Policy": f'"{self.policy}";q={self.limit};w={self.seconds}',
                "RateLimit": f'"{self.policy}";r={max(0, self.limit - count)};t={reset}'}

    def enforce(self, count: int, now: float | None = None) -> dict[str, str]:
        """The response headers of this count, or a 429 past the limit."""
        now = time.time() if now is None else now
        headers = self.headers(count, now)
        if count > self.limit:
            raise RateLimited(max(1, math.ceil(self.ends_at - now)), headers)
        return headers


class RateLimits:
    def __init__(self, settings: Settings, client: RedisClient, layout: Layout) -> None:
        self.client, self.layout = client, layout
        self.user = parse(settings.rate_limit_user)
        self.ip = parse(settings.rate_limit_ip)
        self.auth_failures = parse(settings.rate_limit_auth_failures)
        self.namespace = f"{settings.redis_key_prefix}rl"

    def window(self, item: RateLimitItem, scope: str, identifier: str, now: float | None = None) -> Window:
        seconds = item.get_expiry()
        number = int((time.time() if now is None else now) // seconds)
        return Window(f"{self.namespace}:{scope}:{item.amount}/{seconds}:{identifier}:{number}", item.amount,
                      seconds, (number + 1) * seconds, scope)

    def user_window(self, user_id: str, now: float | None = None) -> Window:
        """In the user's revocation bucket: the revocation check counts it (app.revocation.layout)."""
        seconds = self.user.get_expiry()
        number = int((time.time() if now is None else now) // seconds)
        return Window(self.layout.user_counter(user_id, f"{self.user.amount}/{seconds}:{number}"),
                      self.user.amount, seconds, (number + 1) * seconds, "user")

    def hit(self, window: Window) -> dict[str, str]:
        """Count one request on its own, and refuse it past the limit; its RateLimit headers."""
        with fail_closed():
            count = int(self.client.run(ScriptCall("count", [window.key], [window.ttl])))
        return window.enforce(count)

    def anonymous_request(self, address: str | None) -> dict[str, str]:
        return self.hit(self.window(self.ip, "ip", address or "unknown"))

    def authentication_failed(self, address: str | None) -> None:
        """Counted when it happens (a valid request pays nothing for it): past the limit, an
        IP's failed or missing authentications are answered 429 instead of 401, so guessing
        tokens or hammering without one stops paying off."""
        self.hit(self.window(self.auth_failures, "authfail", address or "unknown"))
