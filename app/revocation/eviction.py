"""Redis must not evict the denylist: its policy and eviction count, read from INFO at start and
at run time (ARCHITECTURE.md, "Eviction")."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException
from redis.exceptions import TimeoutError as RedisTimeoutError

from app.config import ConfigError
from app.metrics import REDIS_EVICTING
from app.redis_client import REDIS_ERRORS, RedisClient

log = logging.getLogger(__name__)
EVICTING_POLICIES = ("allkeys-", "volatile-")


class EvictingRedis(ConfigError):
    """Redis's maxmemory-policy evicts keys: revoked tokens would be let back in."""


@dataclass(frozen=True)
class Memory:
    policies: tuple[str, ...]  # each primary's maxmemory_policy
    evicted: int  # keys evicted, summed over the primaries

    @property
    def evicting(self) -> str | None:
        return next((policy for policy in self.policies if policy.startswith(EVICTING_POLICIES)), None)


def read_memory(client: RedisClient) -> Memory:
    """The policies and eviction counts, from `INFO memory` and `INFO stats` of each primary."""
    policies, evicted = [], 0
    for primary in client.primaries():
        info: dict[str, Any] = primary.info("memory")
        policies.append(str(info.get("maxmemory_policy", "")))
        evicted += int(primary.info("stats").get("evicted_keys", 0))
    return Memory(tuple(policies), evicted)


def refuse_evicting(memory: Memory) -> None:
    if memory.evicting is not None:
        raise EvictingRedis(f"Redis maxmemory-policy is {memory.evicting}: revocations need noeviction")


def check_at_start(client: RedisClient) -> Memory | None:
    """A production start: a Redis that evicts keys, or whose policy cannot be read, is refused
    (EvictingRedis); one that cannot be reached yet is not (requests fail closed until it answers,
    and the policy is read again at run time). Returns what was read."""
    try:
        memory = read_memory(client)
    except (RedisConnectionError, RedisTimeoutError, RedisClusterException) as error:
        log.warning("could not read Redis's maxmemory_policy at start (%s); it is read again at run time",
                    type(error).__name__)
        return None
    except REDIS_ERRORS as error:
        raise EvictingRedis(f"Redis's maxmemory_policy cannot be read (INFO answered {type(error).__name__}): "
                            "revocations need a Redis known not to evict keys") from None
    refuse_evicting(memory)
    return memory


class EvictionWatch:
    """Remembers the last reading; `changed` says whether Redis may have evicted since."""

    def __init__(self) -> None:
        self._last: Memory | None = None

    def changed(self, memory: Memory) -> bool:
        last, self._last = self._last, memory
        if last is not None and last.evicting and last.evicting != memory.evicting:
            REDIS_EVICTING.labels(last.evicting).set(0)
        if memory.evicting:
            REDIS_EVICTING.labels(memory.evicting).set(1)
        if memory.evicting and (last is None or last.evicting != memory.evicting):
            log.error("Redis maxmemory-policy is %s: revocations need noeviction; every eviction makes "
                      "the store verify Redis against the database", memory.evicting)
        if last is not None and memory.evicted > last.evicted:
            log.error("Redis evicted keys; verifying every revocation bucket",
                      extra={"fields": {"evicted": memory.evicted - last.evicted}})
            return True
        return False
