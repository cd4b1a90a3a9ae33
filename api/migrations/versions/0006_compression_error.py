"""Each run's compression error and fallbacks (``quantizer="auto"`` and the safe fallback).

``mean_rel_error`` is the mean over steps of the estimated ``||m^ - m||^2 / ||m||^2`` of
the averaged gradient, ``mean_rel_variance`` that of ``||Q(v) - v||^2 / ||v||^2`` over
what was encoded, and ``total_fallbacks`` the buckets moved to a wider width or fp32.
Runs stored before this revision have none of them.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("run", sa.Column("total_fallbacks", sa.BigInteger(), nullable=True))
    op.add_column("run", sa.Column("mean_rel_error", sa.Float(), nullable=True))
    op.add_column("run", sa.Column("mean_rel_variance", sa.Float(), nullable=True))


def downgrade() -> None:
    op.drop_column("run", "mean_rel_variance")
    op.drop_column("run", "mean_rel_error")
    op.drop_column("run", "total_fallbacks")
