"""create revocations (audit log and durable denylist)

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "revocations",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("kind", sa.String(10), nullable=False),
        sa.Column("target", sa.String(255), nullable=False),
        sa.Column("user_id", sa.String(255), nullable=True),
        sa.Column("actor", sa.String(300), nullable=False),
        sa.Column("reason", sa.String(500), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("kind IN ('jti', 'token', 'session', 'user')", name="ck_revocations_kind"),
    )
    # Rebuilding the denylist reads the unexpired rows; the audit log pages by time and user.
    op.create_index("ix_revocations_expires_at", "revocations", ["expires_at"])
    op.create_index("ix_revocations_user_id_created_at", "revocations", ["user_id", "created_at"])
    op.create_index("ix_revocations_created_at", "revocations", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_revocations_created_at", table_name="revocations")
    op.drop_index("ix_revocations_user_id_created_at", table_name="revocations")
    op.drop_index("ix_revocations_expires_at", table_name="revocations")
    op.drop_table("revocations")
