"""Nodes: topology, hierarchical, and the bytes that left a node.

``topology`` is ``"NxL"`` (N nodes of L ranks), ``hierarchical`` whether the run reduced
inside nodes at full precision and quantized only between them, and
``total_inter_node_bytes`` the part of ``total_sent_bytes`` that went to other nodes.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("run", sa.Column("topology", sa.String(length=32), nullable=True))
    op.add_column("run", sa.Column("hierarchical", sa.Boolean(), nullable=True))
    op.add_column("run", sa.Column("total_inter_node_bytes", sa.BigInteger(), nullable=True))
    op.create_index("ix_run_topology", "run", ["topology"])


def downgrade() -> None:
    op.drop_index("ix_run_topology", table_name="run")
    op.drop_column("run", "total_inter_node_bytes")
    op.drop_column("run", "hierarchical")
    op.drop_column("run", "topology")
