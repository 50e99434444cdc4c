"""tasks: ids are never reused (SQLite AUTOINCREMENT)

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def _tasks(autoincrement: bool) -> sa.Table:
    """The tasks table as 0001 made it (batch mode copies from this, without reflection)."""
    return sa.Table(
        "tasks",
        sa.MetaData(),
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("user_id", sa.String(255), nullable=False),
        sa.Column("title", sa.String(200), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("completed", sa.Boolean(), nullable=False),
        sa.Column("priority", sa.String(10), nullable=False),
        sa.Column("due_date", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("priority IN ('low', 'medium', 'high')", name="ck_tasks_priority"),
        sa.Index("ix_tasks_user_id_created_at", "user_id", "created_at"),
        sa.Index("ix_tasks_user_id_completed", "user_id", "completed"),
        sqlite_autoincrement=autoincrement,
    )


def _rebuild(autoincrement: bool) -> None:
    # Only SQLite needs it: an INTEGER PRIMARY KEY without AUTOINCREMENT reuses max(id)+1.
    # PostgreSQL's sequence never hands an id out twice.
    if op.get_bind().dialect.name == "sqlite":
        with op.batch_alter_table("tasks", recreate="always", copy_from=_tasks(not autoincrement),
                                  table_kwargs={"sqlite_autoincrement": autoincrement}):
            pass


def upgrade() -> None:
    _rebuild(True)


def downgrade() -> None:
    _rebuild(False)
