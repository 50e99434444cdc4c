"""Time as taskgate's tokens and cutoffs count it: whole seconds."""

from __future__ import annotations

import time


def now() -> int:
    """The current time as a token's `iat` and `exp` count it."""
    return int(time.time())


def next_second() -> None:
    """Sleep into the next whole second. taskgate's cutoffs are whole seconds, so a token minted
    in a revocation's own second is covered by it; one minted after this has an `iat` past it."""
    time.sleep(1.05 - time.time() % 1)
