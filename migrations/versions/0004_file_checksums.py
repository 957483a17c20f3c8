"""A checksum per stored file: `atlas check` verifies every listed file's sha256 (atlas.store.check).

Files listed before this revision have none (NULL): check reads their footer or index instead.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("files", sa.Column("sha256", sa.String))


def downgrade() -> None:
    op.drop_column("files", "sha256")
