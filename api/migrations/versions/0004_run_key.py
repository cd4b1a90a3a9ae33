"""A run's idempotency key as a real unique column, carried over from its tag.

The first release kept the key as a tag ``run-key:<key>``. This revision adds the
``run_key`` column (unique, indexed), moves every such tag's key into it, and removes the
tag from ``run.tags`` and ``run_tag``.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

import json
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

KEY_TAG = "run-key:"


def upgrade() -> None:
    op.add_column("run", sa.Column("run_key", sa.String(length=64), nullable=True))
    op.create_index("ix_run_run_key", "run", ["run_key"], unique=True)
    connection = op.get_bind()
    tagged = connection.execute(
        sa.text("SELECT run_id, tag FROM run_tag WHERE tag LIKE :prefix"),
        {"prefix": KEY_TAG + "%"},
    ).all()
    seen: set[str] = set()
    for run_id, tag in tagged:
        key = tag.removeprefix(KEY_TAG)[:64]
        if key in seen:  # two runs claimed one key: the first keeps it
            continue
        seen.add(key)
        tags = connection.execute(
            sa.text("SELECT tags FROM run WHERE id = :id"), {"id": run_id}
        ).scalar_one()
        kept = [t for t in (json.loads(tags) if isinstance(tags, str) else tags) if t != tag]
        connection.execute(
            sa.text("UPDATE run SET run_key = :key, tags = :tags WHERE id = :id"),
            {"key": key, "tags": json.dumps(kept), "id": run_id},
        )
        connection.execute(
            sa.text("DELETE FROM run_tag WHERE run_id = :id AND tag = :tag"),
            {"id": run_id, "tag": tag},
        )


def downgrade() -> None:
    op.drop_index("ix_run_run_key", table_name="run")
    op.drop_column("run", "run_key")
