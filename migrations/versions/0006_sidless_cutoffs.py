"""revocations: kind 'sidless', a cutoff for a user's tokens that carry no session id

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02

A back-channel logout naming a session (and its user) revokes that session's tokens, and also
the user's tokens without a `sid` issued up to the logout token's `iat`: Better Auth's default
tokens carry no `sid`, so any of them may belong to the session that ended.
"""

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("revocations") as batch:
        batch.drop_constraint("ck_revocations_kind", type_="check")
        batch.create_check_constraint("ck_revocations_kind", "kind IN ('jti', 'token', 'session', 'user', 'sidless')")


def downgrade() -> None:
    op.execute("DELETE FROM revocations WHERE kind = 'sidless'")
    with op.batch_alter_table("revocations") as batch:
        batch.drop_constraint("ck_revocations_kind", type_="check")
        batch.create_check_constraint("ck_revocations_kind", "kind IN ('jti', 'token', 'session', 'user')")
