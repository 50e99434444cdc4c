"""revocations: kinds 'grant' (one user's tokens of one OAuth client) and 'client' (every token of
one OAuth client), and the client each row concerns

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07

Third-party apps and agents hold OAuth access tokens from Better Auth's OAuth provider; a user
withdrawing an app's consent revokes that grant, an admin revoking the app revokes it for
every user (ARCHITECTURE.md, "The revocation model").
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

KINDS = "'jti', 'token', 'session', 'user', 'sidless'"


def upgrade() -> None:
    with op.batch_alter_table("revocations") as batch:
        batch.add_column(sa.Column("client_id", sa.String(255), nullable=True))
        batch.drop_constraint("ck_revocations_kind", type_="check")
        batch.create_check_constraint("ck_revocations_kind", f"kind IN ({KINDS}, 'grant', 'client')")
        batch.create_index("ix_revocations_client_id_created_at", ["client_id", "created_at"])


def downgrade() -> None:
    op.execute("DELETE FROM revocations WHERE kind IN ('grant', 'client')")
    with op.batch_alter_table("revocations") as batch:
        batch.drop_index("ix_revocations_client_id_created_at")
        batch.drop_constraint("ck_revocations_kind", type_="check")
        batch.create_check_constraint("ck_revocations_kind", f"kind IN ({KINDS})")
        batch.drop_column("client_id")
