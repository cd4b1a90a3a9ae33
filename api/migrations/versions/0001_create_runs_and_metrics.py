"""Create the run, run_tag and metric tables.

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "run",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("tags", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        # setup
        sa.Column("scheme", sa.String(length=64), nullable=False),
        sa.Column("bits", sa.Integer(), nullable=True),
        sa.Column("bucket_size", sa.BigInteger(), nullable=True),
        sa.Column("world_size", sa.Integer(), nullable=True),
        sa.Column("num_nodes", sa.Integer(), nullable=True),
        sa.Column("backend", sa.String(length=32), nullable=True),
        sa.Column("device", sa.String(length=128), nullable=True),
        sa.Column("model_name", sa.String(length=200), nullable=True),
        sa.Column("param_count", sa.BigInteger(), nullable=True),
        sa.Column("dataset", sa.String(length=200), nullable=True),
        sa.Column("strategy_config", sa.JSON(), nullable=False),
        sa.Column("quantizer_config", sa.JSON(), nullable=False),
        sa.Column("hyperparameters", sa.JSON(), nullable=False),
        sa.Column("host", sa.String(length=255), nullable=True),
        sa.Column("versions", sa.JSON(), nullable=False),
        # summary figures
        sa.Column("final_loss", sa.Float(), nullable=True),
        sa.Column("final_accuracy", sa.Float(), nullable=True),
        sa.Column("total_raw_bytes", sa.BigInteger(), nullable=True),
        sa.Column("total_wire_bytes", sa.BigInteger(), nullable=True),
        sa.Column("compression_ratio", sa.Float(), nullable=True),
        sa.Column("mean_step_s", sa.Float(), nullable=True),
        sa.Column("mean_encode_s", sa.Float(), nullable=True),
        sa.Column("mean_communicate_s", sa.Float(), nullable=True),
        sa.Column("mean_decode_s", sa.Float(), nullable=True),
        sa.Column("predicted_step_s", sa.Float(), nullable=True),
        sa.Column("summary", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    for column in ("bits", "created_at", "dataset", "model_name", "scheme", "status"):
        op.create_index(f"ix_run_{column}", "run", [column])

    op.create_table(
        "run_tag",
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("tag", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(["run_id"], ["run.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("run_id", "tag"),
    )
    op.create_index("ix_run_tag_tag", "run_tag", ["tag"])

    op.create_table(
        "metric",
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("step", sa.BigInteger(), nullable=False),
        sa.Column("value", sa.Float(), nullable=False),
        sa.Column("epoch", sa.BigInteger(), nullable=True),
        sa.Column("wall_time", sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(["run_id"], ["run.id"], ondelete="CASCADE"),
        # The natural key, clustered: one metric of one run is one range scan.
        sa.PrimaryKeyConstraint("run_id", "name", "step"),
        sqlite_with_rowid=False,
    )


def downgrade() -> None:
    op.drop_table("metric")
    op.drop_index("ix_run_tag_tag", table_name="run_tag")
    op.drop_table("run_tag")
    for column in ("bits", "created_at", "dataset", "model_name", "scheme", "status"):
        op.drop_index(f"ix_run_{column}", table_name="run")
    op.drop_table("run")
