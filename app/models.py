"""SQLAlchemy models. The schema itself is created only by the Alembic migrations."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    DateTime,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

PRIORITIES = ("low", "medium", "high")


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in and out, on SQLite (which keeps no zone) as on PostgreSQL."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: object) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value.astimezone(UTC)

    def result_processor(self, dialect: Any, coltype: Any) -> Any:
        if dialect.name == "postgresql" and dialect.driver == "psycopg":
            # The session's TimeZone is UTC (app.db): psycopg already returns aware UTC
            # datetimes, and the hot list route skips a call per value.
            return None
        return super().result_processor(dialect, coltype)

    def process_result_value(self, value: datetime | None, dialect: object) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class Base(DeclarativeBase):
    pass


class Task(Base):
    __tablename__ = "tasks"
    __table_args__ = (
        CheckConstraint("priority IN ('low', 'medium', 'high')", name="ck_tasks_priority"),
        Index("ix_tasks_user_id_created_at", "user_id", "created_at"),
        Index("ix_tasks_user_id_completed", "user_id", "completed"),
        # SQLite: never hand a deleted task's id to a new task (PostgreSQL sequences never do).
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[str] = mapped_column(String(255))
    title: Mapped[str] = mapped_column(String(200))
    description: Mapped[str | None] = mapped_column(Text)
    completed: Mapped[bool] = mapped_column(default=False)
    priority: Mapped[str] = mapped_column(String(10), default="medium")
    due_date: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Callables, so every row gets its own time (not the time of import).
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class Revocation(Base):
    """The audit log of revocations, and the durable copy of the Redis denylist."""

    __tablename__ = "revocations"
    __table_args__ = (
        CheckConstraint("kind IN ('jti', 'token', 'session', 'user', 'sidless', 'grant', 'client')",
                        name="ck_revocations_kind"),
        Index("ix_revocations_expires_at", "expires_at"),
        Index("ix_revocations_user_id_created_at", "user_id", "created_at"),
        Index("ix_revocations_created_at", "created_at"),
        UniqueConstraint("bucket", "seq", name="uq_revocations_bucket_seq"),
        Index("ix_revocations_bucket_expires_at", "bucket", "expires_at"),
        Index("ix_revocations_client_id_created_at", "client_id", "created_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # jti, token (claims digest), session, user, sidless, grant (a user's tokens of one client), client
    kind: Mapped[str] = mapped_column(String(10))
    target: Mapped[str] = mapped_column(String(255))  # the jti, digest, sid, user id or client id
    user_id: Mapped[str | None] = mapped_column(String(255))  # whose token(s), when known
    client_id: Mapped[str | None] = mapped_column(String(255))  # the OAuth client the row concerns, if one
    actor: Mapped[str] = mapped_column(String(300))  # who: "user:<id>", "admin:<id>" or "cli"
    reason: Mapped[str | None] = mapped_column(String(500))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # kind=user: every token of the user with iat <= cutoff is denied (sidless: those without a
    # sid; grant: those of client_id; client: every token of client_id; None for the other kinds),
    # and `covers` names those accepted with an iat ahead of the clock: [[name, last valid], ...].
    cutoff: Mapped[datetime | None] = mapped_column(UTCDateTime)
    covers: Mapped[list | None] = mapped_column(JSON)
    # app/revocation/layout.py: the bucket, and the revocation's place in its bucket (1, 2, ...
    # never handed out twice, in commit order): Redis says which it has applied.
    bucket: Mapped[int] = mapped_column(Integer)
    seq: Mapped[int] = mapped_column(BigInteger)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)  # no token it denies outlives this
