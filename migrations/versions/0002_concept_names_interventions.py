"""User-editable concept names and notes, and the log of interventions (edits made with a concept).

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("concepts", sa.Column("name", sa.String))
    op.add_column("concepts", sa.Column("note", sa.String))
    op.create_table("interventions", sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
                    sa.Column("created_at", sa.DateTime, server_default=sa.func.now()),
                    sa.Column("concept_id", sa.String), sa.Column("sae_id", sa.Integer),
                    sa.Column("latent", sa.Integer), sa.Column("kind", sa.String), sa.Column("strength", sa.Double),
                    sa.Column("params", sa.JSON), sa.Column("output_path", sa.String), sa.Column("note", sa.String))


def downgrade() -> None:
    op.drop_table("interventions")
    op.drop_column("concepts", "note")
    op.drop_column("concepts", "name")
