"""What this process knows that Redis cannot undo (ARCHITECTURE.md, "Knowing Redis is current"):
per bucket, the highest revocation sequence known to exist (its floor), and whether Redis has
been verified since the last event that could have replaced it (its epoch). Both behind a lock.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence

from app.revocation.layout import BUCKETS


class Floors:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values = [0] * BUCKETS

    def __getitem__(self, bucket: int) -> int:
        return self._values[bucket]

    def snapshot(self) -> list[int]:
        with self._lock:
            return list(self._values)

    def raise_to(self, bucket: int, seq: int) -> None:
        with self._lock:
            if seq > self._values[bucket]:
                self._values[bucket] = seq

    def raise_all(self, seqs: Sequence[int]) -> None:
        with self._lock:
            for bucket, seq in enumerate(seqs):
                if seq > self._values[bucket]:
                    self._values[bucket] = seq

    def first_behind(self, states: Iterable[tuple[int, int]]) -> int | None:
        """The first bucket whose state (bucket, state) is below its floor, or None."""
        for bucket, state in states:
            if state < self._values[bucket]:
                return bucket
        return None


class Epochs:
    """Counts the events after which Redis may be another, older Redis: a new data connection, a
    floor channel lost or renewed, evictions. Redis is trusted only when verified since the last."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._current = 0
        self._verified = -1

    def bump(self) -> None:
        with self._lock:
            self._current += 1

    def start(self) -> int:
        """The epoch a verification starting now covers (read before it reads Redis)."""
        with self._lock:
            return self._current

    def verified(self, epoch: int) -> None:
        with self._lock:
            self._verified = max(self._verified, epoch)

    @property
    def trusted(self) -> bool:
        with self._lock:
            return self._verified == self._current
