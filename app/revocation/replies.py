"""Each script's reply (app.revocation.scripts) as a typed value, read in one place
(ARCHITECTURE.md, "The data")."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any


@dataclass(frozen=True)
class CheckReply:
    """CHECK over some buckets: their states in the order asked, or which one has none."""

    states: tuple[int, ...]
    missing: int | None  # position of a bucket without state (Redis lost it), else None
    revoked: bool
    count: int  # the rate-limit count (0 when nothing was counted)


def check_reply(raw: Any) -> CheckReply:
    if raw[0] == 0:
        return CheckReply((), int(raw[1]) - 1, True, 0)
    return CheckReply(tuple(int(state) for state in raw[3:]), None, raw[1] == 1, int(raw[2]))


class Applied(Enum):
    APPLIED = 0  # the state reached `to` (or was there already)
    MISSING = 1  # the bucket has no state: Redis lost it (the entries were written anyway)
    BEHIND = 2  # the state is behind `from`: an earlier revocation is not in Redis yet


@dataclass(frozen=True)
class ApplyReply:
    outcome: Applied
    state: int | None = None
    # Redis's own log entry under a sequence the table gave to another revocation (the table
    # lost it, then handed its sequence out again), or None.
    displaced: str | None = None


def apply_reply(raw: Any) -> ApplyReply:
    outcome = Applied(int(raw[0]))
    state = int(raw[1]) if len(raw) > 1 and raw[1] not in ("", None) else None
    return ApplyReply(outcome, state, raw[3] if len(raw) > 3 else None)


@dataclass(frozen=True)
class UserCutoff:
    """USER_CUTOFF: the cutoff, and the tokens accepted ahead of it, by name, with their last valid time."""

    cutoff: float
    covers: tuple[tuple[str, float], ...]


def user_cutoff_reply(raw: Any) -> UserCutoff:
    cutoff, *ahead = raw
    return UserCutoff(float(cutoff), tuple((name, float(last_valid))
                                           for name, last_valid in zip(ahead[::2], ahead[1::2], strict=True)))
