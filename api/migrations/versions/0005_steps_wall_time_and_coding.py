"""A run's steps and wall time as columns of their own, and its coding.

The logger used to write them into ``summary``, which a sweep then overwrote with its
record: two writers of one field. Now ``steps`` and ``wall_s`` are figures of their own
(``lightning_quant.figures.RUN_FIGURES``), and ``summary`` holds a sweep's record only.
Stored summaries keep what they hold; their ``steps`` and ``wall_s`` are copied over.
``coding`` says how the run's codes went on the wire: ``packed`` (every run before this
revision) or ``entropy``.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06
"""

import json
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("run", sa.Column("steps", sa.BigInteger(), nullable=True))
    op.add_column("run", sa.Column("wall_s", sa.Float(), nullable=True))
    op.add_column("run", sa.Column("coding", sa.String(length=32), nullable=True))
    op.create_index("ix_run_coding", "run", ["coding"])
    connection = op.get_bind()
    rows = connection.execute(sa.text("SELECT id, summary FROM run")).fetchall()
    for run_id, summary in rows:
        values = json.loads(summary) if isinstance(summary, str) else (summary or {})
        steps, wall = values.get("steps"), values.get("wall_s", values.get("train_wall_s"))
        if steps is not None or wall is not None:
            connection.execute(
                sa.text("UPDATE run SET steps = :steps, wall_s = :wall WHERE id = :id"),
                {"steps": steps, "wall": wall, "id": run_id},
            )


def downgrade() -> None:
    op.drop_index("ix_run_coding", table_name="run")
    op.drop_column("run", "coding")
    op.drop_column("run", "wall_s")
    op.drop_column("run", "steps")
