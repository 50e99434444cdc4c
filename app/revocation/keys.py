"""Where each revocation lives in Redis.

Revocations are spread over BUCKETS buckets. Every key of a bucket carries the bucket's
hash tag (`{r<n>}`), so on Redis Cluster a bucket lives in one slot, on one shard, and a
script can read and write all of it atomically. Each bucket has its own state key: the
sequence number of the last revocation of that bucket it has applied (app.revocation.store).

A revocation belongs to the bucket of what names it:
    user        the user id (its cutoff, its tokens accepted ahead of the clock, its rate counter,
                and its jti-less tokens' digests: a logout of one always knows the user)
    jti         the jti (an admin revoking a jti does not know the user)
    session     the sid

so a Better Auth token without jti or sid is checked in one bucket, one slot.

The bucket function is part of the stored data (the `bucket` column): changing BUCKETS or
bucket_of needs a migration that re-buckets every row.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

BUCKETS = 16


def bucket_of(value: str) -> int:
    return zlib.crc32(value.encode("utf-8", "surrogatepass")) % BUCKETS


@dataclass(frozen=True)
class KeyLayout:
    prefix: str

    def tag(self, bucket: int) -> str:
        return f"{self.prefix}{{r{bucket}}}:"

    def state(self, bucket: int) -> str:
        """The bucket's state: the last revocation sequence applied (missing: Redis lost it)."""
        return f"{self.tag(bucket)}state"

    def repair_lock(self, bucket: int) -> str:
        return f"{self.tag(bucket)}repair"

    def jti(self, jti: str) -> str:
        return f"{self.tag(bucket_of(jti))}jti:{jti}"

    def session(self, sid: str) -> str:
        return f"{self.tag(bucket_of(sid))}sid:{sid}"

    def token(self, user_id: str, digest: str) -> str:
        """A jti-less token, by the digest of its signed claims, in its user's bucket."""
        return f"{self.tag(bucket_of(user_id))}tok:{user_id}:{digest}"

    def cutoff(self, user_id: str) -> str:
        return f"{self.tag(bucket_of(user_id))}user:{user_id}"

    def ahead(self, user_id: str) -> str:
        """The user's tokens accepted with an `iat` ahead of Redis's clock (a sorted set)."""
        return f"{self.tag(bucket_of(user_id))}ahead:{user_id}"

    def skewed(self, user_id: str) -> str:
        """Those of them a user revocation covered by name (a sorted set)."""
        return f"{self.tag(bucket_of(user_id))}skewed:{user_id}"

    def user_counter(self, user_id: str, window: str) -> str:
        """The user's rate-limit counter for one window, in the user's bucket (the check counts it)."""
        return f"{self.tag(bucket_of(user_id))}rl:{window}:{user_id}"
