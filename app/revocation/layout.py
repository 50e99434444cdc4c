"""Where revocations live in Redis: buckets, each one hash, and the names of its fields
(ARCHITECTURE.md, "The data")."""

from __future__ import annotations

import zlib
from dataclasses import dataclass

BUCKETS = 16
SEP = "\t"
STATE = "state"  # the last sequence applied; missing: Redis lost the bucket
SWEEP = "sweep"  # the sweeper's HSCAN cursor
REBUILD = "rebuild"  # a rebuild under way: its holder and pages written (scripts.APPLY)
META_FIELDS = (STATE, SWEEP, REBUILD)
NO_FIELD = "-"  # a field no revocation writes (USER_CUTOFF with it: Redis's clock alone)


def bucket_of(value: str) -> int:
    return zlib.crc32(value.encode("utf-8", "surrogatepass")) % BUCKETS


# The fields of a bucket's hash. Each value starts with the time after which it can deny nothing.
def jti_field(jti: str) -> str:
    return f"j:{jti}"


def session_field(sid: str) -> str:
    return f"s:{sid}"


def token_field(user_id: str, digest: str) -> str:
    """A jti-less token, by the digest of its signed claims (in its user's bucket)."""
    return f"t:{user_id}{SEP}{digest}"


def cutoff_field(user_id: str) -> str:
    """Every token of the user issued up to a time (value: expiry, cutoff)."""
    return f"u:{user_id}"


def sidless_field(user_id: str) -> str:
    """Every token of the user without a sid issued up to a time (a back-channel logout of a session)."""
    return f"n:{user_id}"


def grant_field(user_id: str, client_id: str) -> str:
    """Every token of the user for one OAuth client issued up to a time (value: expiry, cutoff)."""
    return f"g:{user_id}{SEP}{client_id}"


def client_field(client_id: str) -> str:
    """Every token of one OAuth client issued up to a time, whoever it acts for (expiry, cutoff)."""
    return f"c:{client_id}"


def covered_field(user_id: str, name: str) -> str:
    """A token a user revocation covers by name (accepted with an `iat` ahead of Redis's clock)."""
    return f"k:{user_id}{SEP}{name}"


def ahead_field(user_id: str) -> str:
    """The user's tokens accepted with an `iat` ahead of Redis's clock, one per line."""
    return f"a:{user_id}"


def rebuild_marker(holder: str, pages: int) -> str:
    """The `rebuild` field's value once `pages` pages of `holder`'s rebuild are written."""
    return f"{holder}#{pages}"


def log_field(seq: int) -> str:
    """Revocation `seq` of the bucket as the table holds it (written back if the table loses it)."""
    return f"l:{seq}"


@dataclass(frozen=True)
class Layout:
    """Key names under one prefix. Every key of a bucket carries its hash tag, so on Redis
    Cluster a bucket lives in one slot and a script reads and writes it atomically."""

    prefix: str

    def tag(self, bucket: int) -> str:
        return f"{self.prefix}{{r{bucket}}}"

    def bucket(self, bucket: int) -> str:
        """The bucket's hash: its state, its denials and its log, evicted or lost together."""
        return self.tag(bucket)

    def repair_lock(self, bucket: int) -> str:
        return f"{self.tag(bucket)}:repair"

    def user_counter(self, user_id: str, window: str) -> str:
        """The user's rate-limit counter for one window, in the user's bucket (the check counts it)."""
        return f"{self.tag(bucket_of(user_id))}:rl:{window}:{user_id}"

    def logout_seen(self, issuer_digest: str, jti: str) -> str:
        """A back-channel logout token already acted on (its replay does nothing more)."""
        return f"{self.prefix}bcl:{issuer_digest}:{jti}"

    @property
    def floor_channel(self) -> str:
        """Pub/sub channel on which every instance hears the sequences revocations reach."""
        return f"{self.prefix}floors"
