"""The floor channel: every instance hears each revocation's sequence on Redis pub/sub before the
call that made it returns (ARCHITECTURE.md, "Knowing Redis is current")."""

from __future__ import annotations

import threading
import time
from typing import Any

from redis.exceptions import TimeoutError as RedisTimeoutError

from app.redis_client import REDIS_ERRORS, RedisClient
from app.revocation.floors import Epochs, Floors

SUBSCRIBED = ("subscribe", "ssubscribe")


class FloorChannel:
    def __init__(self, client: RedisClient, channel: str, floors: Floors, epochs: Epochs, timeout: float) -> None:
        self.client, self.channel = client, channel
        self.floors, self.epochs = floors, epochs
        self.timeout = timeout
        self._lock = threading.Lock()
        self._pubsub: Any = None

    def publish(self, bucket: int, seq: int) -> None:
        """Tell every instance that revocation `seq` of `bucket` exists."""
        message = f"{bucket} {seq}"
        if self.client.clustered:  # sharded: published and heard on the shard that owns the channel
            self.client.client.spublish(self.channel, message)
        else:
            self.client.client.publish(self.channel, message)

    def drain(self) -> None:
        """Read every message already delivered to this process (never waits for one)."""
        with self._lock:
            try:
                self._drain()
            except REDIS_ERRORS:
                self._drop()
                raise

    def _drain(self) -> None:
        if self._pubsub is None:
            self._subscribe()
        while (message := self._next(0.0)) is not None:
            self._take(message)

    def _subscribe(self) -> None:
        """A new subscription, confirmed before anything is trusted; Redis is verified after it."""
        self._pubsub = self.client.pubsub()
        if self.client.clustered:
            self._pubsub.ssubscribe(self.channel)
        else:
            self._pubsub.subscribe(self.channel)
        deadline = time.monotonic() + self.timeout
        while (message := self._next(max(0.0, deadline - time.monotonic()))) is not None:
            self._take(message)
            if message["type"] in SUBSCRIBED:
                return
        raise RedisTimeoutError("the revocation floor channel was not confirmed in time")

    def _take(self, message: dict[str, Any]) -> None:
        if message["type"] in SUBSCRIBED:
            # A first subscription, or redis-py's own after a reconnection: messages may have
            # been missed meanwhile, so Redis is verified before it is trusted again.
            self.epochs.bump()
        elif message["type"] in ("message", "smessage"):
            bucket, _, seq = message["data"].partition(" ")
            self.floors.raise_to(int(bucket), int(seq))

    def _next(self, timeout: float) -> Any:
        if self.client.clustered:
            return self._pubsub.get_sharded_message(timeout=timeout)
        return self._pubsub.get_message(timeout=timeout)

    def _drop(self) -> None:
        """The channel is lost: start a new one next time, and trust Redis only once verified."""
        self.epochs.bump()
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            try:
                pubsub.close()
            except REDIS_ERRORS:
                pass

    def close(self) -> None:
        with self._lock:
            if self._pubsub is not None:
                self._pubsub.close()
                self._pubsub = None
