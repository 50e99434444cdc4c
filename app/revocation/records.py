"""The audit table `revocations`: the durable truth Redis is a copy of (ARCHITECTURE.md, "The
revocation model"). Inserts take the next sequence of their bucket, never one already known to
exist; rows are read a page at a time, written back from Redis, and pruned.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import BigInteger, bindparam, case, delete, func, insert, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError

from app.db import Database
from app.models import Revocation
from app.revocation.layout import BUCKETS
from app.revocation.targets import RevocationTarget

PAGE = 5000  # rows read and applied at a time when repairing
INSERT_ATTEMPTS = 20  # concurrent revocations of one bucket take turns for its next sequence
COLUMNS = ("id", "kind", "target", "user_id", "actor", "reason", "created_at", "expires_at", "cutoff", "covers",
           "bucket", "seq", "client_id")
_COLUMNS = tuple(getattr(Revocation, name) for name in COLUMNS)
_TOP = select(func.coalesce(func.max(Revocation.seq), 0)).where(Revocation.bucket == bindparam("of_bucket"))
_TOPS = select(*[select(func.max(Revocation.seq)).where(Revocation.bucket == b).scalar_subquery()
                 for b in range(BUCKETS)])


@dataclass(frozen=True)
class Record:
    """One row of the audit table."""

    id: int | None
    kind: str
    target: str
    user_id: str | None
    actor: str
    reason: str | None
    created_at: datetime
    expires_at: datetime
    cutoff: datetime | None
    covers: list | None
    bucket: int
    seq: int
    client_id: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def timestamp(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, UTC)


def _record(row: Any) -> Record:
    return Record(*row)


# The bucket's next sequence: after its top in the table and after the highest known elsewhere
# (`at_least`: a table that came back older must not hand out a sequence again).
_AT_LEAST = bindparam("at_least", type_=BigInteger)
_NEXT_SEQ = case((_TOP.scalar_subquery() > _AT_LEAST, _TOP.scalar_subquery()), else_=_AT_LEAST) + 1


class Records:
    def __init__(self, database: Database) -> None:
        self.database = database

    def tops(self) -> list[int]:
        """Each bucket's highest sequence in the table."""
        return [top or 0 for top in self.database.rows(_TOPS)[0]]

    def top(self, bucket: int) -> int:
        return self.database.rows(_TOP, {"of_bucket": bucket})[0][0]

    def insert(self, target: RevocationTarget, actor: str, reason: str | None, at_least: int = 0) -> Record:
        """One INSERT, committed: the revocation with its bucket's next sequence."""
        statement = insert(Revocation).values(
            kind=target.kind, target=target.value, user_id=target.user_id, actor=actor, reason=reason,
            created_at=datetime.now(UTC), expires_at=timestamp(target.expires_at), cutoff=timestamp(target.cutoff),
            covers=[list(pair) for pair in target.covers] or None, bucket=target.bucket, seq=_NEXT_SEQ,
            client_id=target.client_id,
        ).returning(*_COLUMNS)
        for attempt in range(INSERT_ATTEMPTS):
            try:
                return _record(self.database.rows(statement, {"of_bucket": target.bucket, "at_least": at_least})[0])
            except IntegrityError:  # another revocation of the bucket took that sequence first
                if attempt == INSERT_ATTEMPTS - 1:
                    raise
                time.sleep(0.001 * attempt)
        raise AssertionError("unreachable")

    def pages(self, bucket: int, after: int, upto: int, live_only: bool) -> Iterator[list[Record]]:
        """The bucket's revocations with a sequence in (after, upto], in order, a page at a time."""
        statement = select(*_COLUMNS).where(Revocation.bucket == bucket, Revocation.seq > bindparam("after"),
                                            Revocation.seq <= upto)
        if live_only:
            statement = statement.where(Revocation.expires_at > timestamp(time.time()))
        statement = statement.order_by(Revocation.seq).limit(PAGE)
        while True:
            page = [_record(row) for row in self.database.rows(statement, {"after": after})]
            if not page:
                return
            yield page
            after = page[-1].seq

    def restore(self, records: Sequence[Record]) -> int:
        """Write back rows the table lost (Redis still held them), at their own sequences; a
        sequence the table holds already is left as it is. Returns how many were written."""
        if not records:
            return 0
        dialect = postgresql if self.database.engine.dialect.name == "postgresql" else sqlite
        values = [{name: getattr(record, name) for name in COLUMNS if name != "id"} for record in records]
        statement = dialect.insert(Revocation).values(values).on_conflict_do_nothing(
            index_elements=["bucket", "seq"]).returning(Revocation.id)
        return len(self.database.rows(statement))

    def prune(self, keep_seconds: float) -> int:
        """Delete the rows that expired more than `keep_seconds` ago: no token they deny is still
        accepted, so nothing in Redis depends on them. Each bucket keeps its last row."""
        deleted = 0
        horizon = timestamp(time.time() - keep_seconds)
        for bucket, top in enumerate(self.tops()):
            deleted += len(self.database.rows(
                delete(Revocation).where(Revocation.bucket == bucket, Revocation.expires_at < horizon,
                                         Revocation.seq < top).returning(Revocation.id)))
        return deleted
