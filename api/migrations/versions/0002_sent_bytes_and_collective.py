"""Bytes as they cross the network: total_sent_bytes, the payload column renamed, collective.

``total_wire_bytes`` held the bytes a rank handed to its collectives (its payloads), not
what it transmitted; it becomes ``total_payload_bytes``, and ``total_sent_bytes`` holds
the bytes the collectives' algorithms send. ``collective`` says how payloads were reduced.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


# Plain ALTER TABLE (SQLite 3.25+ and PostgreSQL both rename columns): a batch copy of
# ``run`` would drop the old table, and with foreign keys on, its metrics with it.


def upgrade() -> None:
    op.execute("ALTER TABLE run RENAME COLUMN total_wire_bytes TO total_payload_bytes")
    op.add_column("run", sa.Column("total_sent_bytes", sa.BigInteger(), nullable=True))
    op.add_column("run", sa.Column("collective", sa.String(length=32), nullable=True))
    op.create_index("ix_run_collective", "run", ["collective"])


def downgrade() -> None:
    op.drop_index("ix_run_collective", table_name="run")
    op.drop_column("run", "collective")
    op.drop_column("run", "total_sent_bytes")
    op.execute("ALTER TABLE run RENAME COLUMN total_payload_bytes TO total_wire_bytes")
