"""revocations: a user revocation's cutoff apart from when it was made

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02

A user revocation denies every token of the user issued at or before its cutoff. The cutoff
used to be the row's created_at; it can now lie ahead of it (a token accepted with an `iat`
ahead of the clock must be covered too), so it has a column of its own.
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("revocations") as batch:
        batch.add_column(sa.Column("cutoff", sa.DateTime(timezone=True), nullable=True))
    op.execute("UPDATE revocations SET cutoff = created_at WHERE kind = 'user'")


def downgrade() -> None:
    op.execute("UPDATE revocations SET created_at = cutoff WHERE kind = 'user' AND cutoff IS NOT NULL")
    with op.batch_alter_table("revocations") as batch:
        batch.drop_column("cutoff")
