"""Initial catalog: models, prompts, images, SAEs, concepts, labels, objects, concept labels, files, stages.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _id() -> sa.Column:
    return sa.Column("id", sa.Integer, primary_key=True, autoincrement=False)


def _now(name: str) -> sa.Column:
    return sa.Column(name, sa.DateTime, server_default=sa.func.now())


def upgrade() -> None:
    op.create_table("models", _id(), sa.Column("name", sa.String, unique=True), sa.Column("path", sa.String),
                    sa.Column("spec", sa.JSON), _now("created_at"))
    op.create_table("prompts", _id(), sa.Column("text", sa.String, unique=True), sa.Column("split", sa.String))
    op.create_table("images", _id(), sa.Column("prompt_id", sa.Integer), sa.Column("seed", sa.BigInteger),
                    sa.Column("guidance", sa.Double), sa.Column("steps", sa.Integer), sa.Column("path", sa.String),
                    sa.UniqueConstraint("prompt_id", "seed", "guidance", "steps"))
    op.create_table("saes", _id(), sa.Column("block", sa.String), sa.Column("t", sa.Double),
                    sa.Column("branch", sa.String), sa.Column("k", sa.Integer), sa.Column("n_latents", sa.Integer),
                    sa.Column("d_in", sa.Integer), sa.Column("grid_h", sa.Integer), sa.Column("grid_w", sa.Integer),
                    sa.Column("metrics", sa.JSON), sa.Column("path", sa.String),
                    sa.Column("value_qbase", sa.Integer), sa.Column("n_codes", sa.BigInteger), _now("created_at"),
                    sa.UniqueConstraint("block", "t", "branch"))
    op.create_table("concepts", sa.Column("sae_id", sa.Integer, primary_key=True),
                    sa.Column("latent", sa.Integer, primary_key=True), sa.Column("frequency", sa.Double),
                    sa.Column("mean_activation", sa.Double), sa.Column("decoder_norm", sa.Double),
                    sa.Column("best_label", sa.String))
    op.create_table("labels", _id(), sa.Column("name", sa.String, unique=True), sa.Column("source", sa.String))
    op.create_table("objects", _id(), sa.Column("image_id", sa.Integer), sa.Column("label_id", sa.Integer),
                    sa.Column("score", sa.Double), sa.Column("x0", sa.Double), sa.Column("y0", sa.Double),
                    sa.Column("x1", sa.Double), sa.Column("y1", sa.Double), sa.Column("mask_path", sa.String),
                    sa.Column("source", sa.String))
    op.create_table("concept_labels", sa.Column("sae_id", sa.Integer, primary_key=True),
                    sa.Column("latent", sa.Integer, primary_key=True),
                    sa.Column("label_id", sa.Integer, primary_key=True), sa.Column("mean_iou", sa.Double),
                    sa.Column("hit_rate", sa.Double), sa.Column("precision", sa.Double),
                    sa.Column("recall", sa.Double), sa.Column("support", sa.Integer))
    op.create_table("files", sa.Column("path", sa.String, primary_key=True), sa.Column("kind", sa.String),
                    sa.Column("sae_id", sa.Integer), sa.Column("bucket", sa.Integer), sa.Column("key", sa.String),
                    sa.Column("rows", sa.BigInteger), sa.Column("bytes", sa.BigInteger), _now("created_at"))
    op.create_table("stages", sa.Column("name", sa.String, primary_key=True), sa.Column("info", sa.JSON),
                    _now("done_at"))


def downgrade() -> None:
    for table in ("stages", "files", "concept_labels", "objects", "labels", "concepts", "saes", "images", "prompts",
                  "models"):
        op.drop_table(table)
