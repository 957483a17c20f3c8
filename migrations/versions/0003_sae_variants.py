"""SAE variants: a fourth key part of an SAE, so one (block, t, branch) can hold several (other k's, other types).

Existing SAEs become the primary ("") of their key, so every concept id stays what it was. DuckDB cannot change a
table's constraints in place, so `saes` is rebuilt with the new unique key (block, t, branch, variant).

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_KEPT = ("id", "block", "t", "branch", "k", "n_latents", "d_in", "grid_h", "grid_w", "metrics", "path", "value_qbase",
         "n_codes", "created_at")


def _saes(name: str, variant: bool) -> None:
    key = ("block", "t", "branch", "variant") if variant else ("block", "t", "branch")
    op.create_table(name, sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
                    sa.Column("block", sa.String), sa.Column("t", sa.Double), sa.Column("branch", sa.String),
                    *([sa.Column("variant", sa.String, nullable=False, server_default="")] if variant else []),
                    sa.Column("k", sa.Integer), sa.Column("n_latents", sa.Integer), sa.Column("d_in", sa.Integer),
                    sa.Column("grid_h", sa.Integer), sa.Column("grid_w", sa.Integer), sa.Column("metrics", sa.JSON),
                    sa.Column("path", sa.String), sa.Column("value_qbase", sa.Integer),
                    sa.Column("n_codes", sa.BigInteger), sa.Column("created_at", sa.DateTime,
                                                                   server_default=sa.func.now()),
                    sa.UniqueConstraint(*key))


def _rebuild(variant: bool, where: str = "") -> None:
    _saes("saes_rebuilt", variant)
    columns = ", ".join(_KEPT)
    op.execute(f"INSERT INTO saes_rebuilt ({columns}) SELECT {columns} FROM saes {where}")
    op.drop_table("saes")
    op.rename_table("saes_rebuilt", "saes")


def upgrade() -> None:
    _rebuild(variant=True)


def downgrade() -> None:
    _rebuild(variant=False, where="WHERE variant = ''")  # variants have no place in the older schema
