"""Metrics in long format: one row per (run, name, step), posted in idempotent batches."""

from pydantic import FiniteFloat
from sqlalchemy import BigInteger
from sqlmodel import Field, SQLModel

from api.models.types import MAX_INT, MetricName

__all__ = [
    "Metric", "MetricBase", "MetricCreate", "MetricNamesPublic", "MetricPublic",
    "MetricsCreate", "MetricsCreated", "MetricsPublic",
]  # fmt: skip


class MetricBase(SQLModel):
    step: int = Field(ge=0, le=MAX_INT, sa_type=BigInteger)
    epoch: int | None = Field(default=None, ge=0, le=MAX_INT, sa_type=BigInteger)
    wall_time: FiniteFloat | None = None  # seconds since the Unix epoch, like TensorBoard


class Metric(MetricBase, table=True):
    """One named scalar of one run at one step; the primary key is the natural key, so
    posting the same (run_id, name, step) twice stores it once."""

    __tablename__ = "metric"
    # The primary key (run_id, name, step) is the clustered index: one run's series of
    # one metric, in step order, is a single range scan.
    __table_args__ = {"sqlite_with_rowid": False}

    run_id: int = Field(foreign_key="run.id", ondelete="CASCADE", primary_key=True)
    name: str = Field(max_length=100, primary_key=True)
    step: int = Field(ge=0, le=MAX_INT, sa_type=BigInteger, primary_key=True)
    value: float


class MetricCreate(MetricBase):
    """One step of one run: ``{"step": 10, "epoch": 0, "values": {"loss": 0.7}}``."""

    values: dict[MetricName, FiniteFloat] = Field(min_length=1)


class MetricsCreate(SQLModel):
    """A batch of steps; the server caps the number of values (``LQ_MAX_BATCH_POINTS``)."""

    points: list[MetricCreate]


class MetricsCreated(SQLModel):
    received: int  # values in the batch
    inserted: int  # values newly stored; the rest were already there (a retried batch)


class MetricPublic(MetricBase):
    name: str
    value: float


class MetricsPublic(SQLModel):
    """Long format, ordered by name then step."""

    data: list[MetricPublic]
    count: int


class MetricNamesPublic(SQLModel):
    data: list[str]
    count: int
