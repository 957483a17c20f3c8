"""Concept evolution: `trajectories` (each concept's life over the captured timesteps) and `lineage` (links between
concepts of neighbouring timesteps of a block), filled by `atlas evolve` (atlas.pipeline.evolution).

Both live in the catalog, not as Parquet beside the codes: a trajectory is a few rows per concept and t, lineage a
few links per concept (tens of thousands of rows for a whole atlas, like concept_labels), and a stage replaces an
SAE's rows in the same transaction that marks it done.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table("trajectories", sa.Column("sae_id", sa.Integer, primary_key=True),
                    sa.Column("latent", sa.Integer, primary_key=True),
                    sa.Column("at_t", sa.Double, primary_key=True), sa.Column("mass", sa.Double),
                    sa.Column("active_fraction", sa.Double), sa.Column("mean_activation", sa.Double),
                    sa.Column("first_t", sa.Double), sa.Column("peak_t", sa.Double), sa.Column("fade_t", sa.Double))
    op.create_table("lineage", sa.Column("parent_sae_id", sa.Integer, primary_key=True),
                    sa.Column("parent_latent", sa.Integer, primary_key=True),
                    sa.Column("child_sae_id", sa.Integer, primary_key=True),
                    sa.Column("child_latent", sa.Integer, primary_key=True), sa.Column("cosine", sa.Double),
                    sa.Column("coactivation", sa.Double), sa.Column("score", sa.Double))


def downgrade() -> None:
    op.drop_table("lineage")
    op.drop_table("trajectories")
