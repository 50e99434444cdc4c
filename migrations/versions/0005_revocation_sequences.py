"""revocations: a bucket and a gap-free sequence per bucket, and the tokens a user revocation covers

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02

Every revocation belongs to one of 16 buckets (app/revocation/layout.py) and carries the next
sequence number of its bucket. Redis keeps, per bucket, the last sequence it has applied,
so a Redis that comes back older than the database (a snapshot, a lost AOF tail, a replica
promoted before it caught up) is found and repaired from this table.
"""

import zlib

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

BUCKETS = 16  # as app/revocation/layout.py, at the time of this migration


def _bucket(kind: str, target: str, user_id: str | None) -> int:
    owner = user_id if kind == "token" and user_id else target
    return zlib.crc32(owner.encode("utf-8", "surrogatepass")) % BUCKETS


def upgrade() -> None:
    with op.batch_alter_table("revocations") as batch:
        batch.add_column(sa.Column("bucket", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("seq", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("covers", sa.JSON(), nullable=True))
    connection = op.get_bind()
    rows = connection.execute(sa.text("SELECT id, kind, target, user_id FROM revocations ORDER BY id")).all()
    sequences = [0] * BUCKETS
    for row in rows:
        bucket = _bucket(row.kind, row.target, row.user_id)
        sequences[bucket] += 1
        connection.execute(sa.text("UPDATE revocations SET bucket = :bucket, seq = :seq WHERE id = :id"),
                           {"bucket": bucket, "seq": sequences[bucket], "id": row.id})
    with op.batch_alter_table("revocations") as batch:
        batch.alter_column("bucket", existing_type=sa.Integer(), nullable=False)
        batch.alter_column("seq", existing_type=sa.BigInteger(), nullable=False)
        batch.create_unique_constraint("uq_revocations_bucket_seq", ["bucket", "seq"])
    # Rebuilding one bucket reads its unexpired rows.
    op.create_index("ix_revocations_bucket_expires_at", "revocations", ["bucket", "expires_at"])


def downgrade() -> None:
    op.drop_index("ix_revocations_bucket_expires_at", table_name="revocations")
    with op.batch_alter_table("revocations") as batch:
        batch.drop_constraint("uq_revocations_bucket_seq", type_="unique")
        batch.drop_column("covers")
        batch.drop_column("seq")
        batch.drop_column("bucket")
