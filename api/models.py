"""Tables and request/response schemas of the run store.

Two families, as in the FastAPI full-stack template:

* runs: ``RunBase`` -> ``Run`` (table), ``RunCreate``, ``RunUpdate``, ``RunPublic``,
  ``RunsPublic`` (data, count); ``RunTag`` indexes tags for filtering;
  ``RunComparison`` is the side-by-side view of several runs.
* metrics, stored in long format, one row per (run_id, name, step):
  ``MetricBase`` -> ``Metric`` (table), ``MetricCreate`` (one step with named values),
  ``MetricsCreate`` (a batch), ``MetricsCreated``, ``MetricPublic``, ``MetricsPublic``.

Every value that reaches the database is bounded here, so bad input is a 422 that names
the field and never a database error: integers fit a signed 64-bit column, floats are
finite (JSON has no NaN), text is valid Unicode, JSON objects are finite and shallow.
"""

import math
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any

from annotated_types import Ge, Le
from pydantic import (
    AfterValidator,
    BeforeValidator,
    FiniteFloat,
    StringConstraints,
    field_validator,
)
from sqlalchemy import JSON, BigInteger, DateTime, String
from sqlmodel import Field, SQLModel

__all__ = [
    "MAX_INT",
    "Health",
    "Ids",
    "Metric",
    "MetricBase",
    "MetricCreate",
    "MetricNames",
    "MetricNamesPublic",
    "MetricPublic",
    "MetricsCreate",
    "MetricsCreated",
    "MetricsPublic",
    "Run",
    "RunBase",
    "RunComparison",
    "RunCreate",
    "RunFilters",
    "RunPublic",
    "RunSortField",
    "RunStatus",
    "RunSummary",
    "RunTag",
    "RunUpdate",
    "RunsPublic",
    "SortOrder",
    "utc_now",
]

MAX_INT = 2**63 - 1  # the largest value of a signed 64-bit (BIGINT) column
MAX_JSON_DEPTH = 32


def utc_now() -> datetime:
    """Return the current time, timezone-aware, in UTC."""
    return datetime.now(UTC)


# ---------------------------------------------------------------------------------------
# Value types shared by both families
# ---------------------------------------------------------------------------------------


def _check_text(value: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode text (no lone surrogates)") from None
    return value


def _check_label(value: str) -> str:
    if "," in value:
        raise ValueError("must not contain ',' (commas separate values in filters)")
    return _check_text(value)


def _check_json(value: Any, depth: int = 0) -> None:
    if depth > MAX_JSON_DEPTH:
        raise ValueError(f"must not nest deeper than {MAX_JSON_DEPTH} levels")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("must not contain NaN or infinity (JSON has no such numbers)")
    if isinstance(value, str):
        _check_text(value)
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_text(key)
            _check_json(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _check_json(item, depth + 1)


def _check_json_object(value: dict[str, Any]) -> dict[str, Any]:
    _check_json(value)
    return value


def _dedupe(values: list[str]) -> list[str]:
    return list(dict.fromkeys(values))


def _as_utc(value: datetime | None) -> datetime | None:
    """Read naive datetimes as UTC and convert aware ones to UTC."""
    if value is None:
        return None
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise ValueError("is out of range once converted to UTC") from None


def _split_commas(value: Any) -> Any:
    """Let a list query parameter be repeated (``?a=1&a=2``), comma-separated, or both."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        return value
    parts: list[Any] = []
    for item in value:
        if isinstance(item, str):
            parts.extend(part.strip() for part in item.split(",") if part.strip())
        else:
            parts.append(item)
    return parts


Text = Annotated[str, AfterValidator(_check_text)]
# A value runs are filtered by (scheme, tag, dataset, model): no commas.
Label = Annotated[
    str, StringConstraints(min_length=1, max_length=200), AfterValidator(_check_label)
]
Tag = Annotated[str, StringConstraints(min_length=1, max_length=64), AfterValidator(_check_label)]
JsonObject = Annotated[dict[str, Any], AfterValidator(_check_json_object)]
UtcDatetime = Annotated[datetime, AfterValidator(_as_utc)]
Count = Annotated[int, Ge(0), Le(MAX_INT)]
Seconds = Annotated[FiniteFloat, Ge(0)]
Bits = Annotated[int, Ge(1), Le(64)]
TagList = Annotated[list[Tag], AfterValidator(_dedupe)]
MetricName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.:/\-]{1,100}$")]

# List query parameters that may be repeated (``?a=1&a=2``), comma-separated, or both.
Labels = Annotated[list[Label], BeforeValidator(_split_commas)]
Tags = Annotated[list[Tag], BeforeValidator(_split_commas)]
BitsList = Annotated[list[Bits], BeforeValidator(_split_commas)]
Ids = Annotated[list[Annotated[int, Ge(1), Le(MAX_INT)]], BeforeValidator(_split_commas)]
MetricNames = Annotated[list[MetricName], BeforeValidator(_split_commas)]


# ---------------------------------------------------------------------------------------
# Runs
# ---------------------------------------------------------------------------------------


class RunStatus(StrEnum):
    running = "running"
    finished = "finished"
    failed = "failed"


Statuses = Annotated[list[RunStatus], BeforeValidator(_split_commas)]


class RunBase(SQLModel):
    """What a client says about a run: its setup and, once known, its summary figures."""

    # identity
    name: Text = Field(min_length=1, max_length=200)
    tags: TagList = Field(default_factory=list, max_length=32, sa_type=JSON)
    status: RunStatus = Field(default=RunStatus.running, sa_type=String(16), index=True)
    finished_at: UtcDatetime | None = Field(default=None, sa_type=DateTime(timezone=True))

    # setup
    scheme: Label = Field(max_length=64, index=True)
    bits: Bits | None = Field(default=None, index=True)
    collective: Label | None = Field(default=None, max_length=32, index=True)
    bucket_size: int | None = Field(default=None, ge=1, le=MAX_INT, sa_type=BigInteger)
    world_size: int | None = Field(default=None, ge=1, le=1_000_000)
    num_nodes: int | None = Field(default=None, ge=1, le=1_000_000)
    backend: Text | None = Field(default=None, max_length=32)
    device: Text | None = Field(default=None, max_length=128)
    model_name: Label | None = Field(default=None, max_length=200, index=True)
    param_count: Count | None = Field(default=None, sa_type=BigInteger)
    dataset: Label | None = Field(default=None, max_length=200, index=True)
    strategy_config: JsonObject = Field(default_factory=dict, sa_type=JSON)
    quantizer_config: JsonObject = Field(default_factory=dict, sa_type=JSON)
    hyperparameters: JsonObject = Field(default_factory=dict, sa_type=JSON)
    host: Text | None = Field(default=None, max_length=255)
    versions: dict[Text, Text] = Field(default_factory=dict, sa_type=JSON)

    # summary figures
    final_loss: FiniteFloat | None = None
    final_accuracy: FiniteFloat | None = None
    total_raw_bytes: Count | None = Field(default=None, sa_type=BigInteger)  # the gradient
    total_payload_bytes: Count | None = Field(default=None, sa_type=BigInteger)  # encoded
    total_sent_bytes: Count | None = Field(default=None, sa_type=BigInteger)  # transmitted
    # fp32 DDP's sent bytes at the same world size over total_sent_bytes; computed when
    # omitted, from ring all-reduce's 2 (n-1)/n of the raw bytes
    compression_ratio: Seconds | None = None
    mean_step_s: Seconds | None = None
    mean_encode_s: Seconds | None = None
    mean_communicate_s: Seconds | None = None
    mean_decode_s: Seconds | None = None
    predicted_step_s: Seconds | None = None  # a performance model's prediction
    summary: JsonObject = Field(default_factory=dict, sa_type=JSON)


class Run(RunBase, table=True):
    __tablename__ = "run"

    id: int | None = Field(default=None, primary_key=True)
    created_at: datetime = Field(
        default_factory=utc_now, sa_type=DateTime(timezone=True), index=True
    )
    updated_at: datetime = Field(default_factory=utc_now, sa_type=DateTime(timezone=True))


class RunTag(SQLModel, table=True):
    """One row per (run, tag), so ``?tag=`` filters use an index on any database.

    ``Run.tags`` is what clients read; ``crud`` keeps these rows in step with it.
    """

    __tablename__ = "run_tag"

    run_id: int = Field(foreign_key="run.id", ondelete="CASCADE", primary_key=True)
    tag: str = Field(max_length=64, primary_key=True, index=True)


class RunCreate(RunBase):
    pass


# Columns a PATCH may not set to null (the rest are nullable).
_NOT_NULL = ("name", "tags", "status", "scheme", "strategy_config", "quantizer_config",
             "hyperparameters", "versions", "summary")


class RunUpdate(RunBase):
    """Every field optional; only the fields sent are changed (JSON fields are replaced)."""

    name: Text | None = Field(default=None, min_length=1, max_length=200)  # type: ignore[assignment]
    tags: TagList | None = Field(default=None, max_length=32)  # type: ignore[assignment]
    status: RunStatus | None = None  # type: ignore[assignment]
    scheme: Label | None = Field(default=None, max_length=64)  # type: ignore[assignment]
    strategy_config: JsonObject | None = None  # type: ignore[assignment]
    quantizer_config: JsonObject | None = None  # type: ignore[assignment]
    hyperparameters: JsonObject | None = None  # type: ignore[assignment]
    versions: dict[Text, Text] | None = None  # type: ignore[assignment]
    summary: JsonObject | None = None  # type: ignore[assignment]

    @field_validator(*_NOT_NULL)
    @classmethod
    def _not_null(cls, value: Any) -> Any:
        if value is None:
            raise ValueError("may be left out but not set to null")
        return value


class RunPublic(RunBase):
    id: int
    created_at: UtcDatetime
    updated_at: UtcDatetime


class RunsPublic(SQLModel):
    data: list[RunPublic]
    count: int  # all runs matching the filters, not only this page


class RunSortField(StrEnum):
    id = "id"
    name = "name"
    created_at = "created_at"
    updated_at = "updated_at"
    finished_at = "finished_at"
    status = "status"
    scheme = "scheme"
    bits = "bits"
    collective = "collective"
    world_size = "world_size"
    param_count = "param_count"
    final_loss = "final_loss"
    final_accuracy = "final_accuracy"
    total_raw_bytes = "total_raw_bytes"
    total_payload_bytes = "total_payload_bytes"
    total_sent_bytes = "total_sent_bytes"
    compression_ratio = "compression_ratio"
    mean_step_s = "mean_step_s"
    mean_encode_s = "mean_encode_s"
    mean_communicate_s = "mean_communicate_s"
    mean_decode_s = "mean_decode_s"
    predicted_step_s = "predicted_step_s"


class SortOrder(StrEnum):
    asc = "asc"
    desc = "desc"


class RunFilters(SQLModel):
    """Query parameters selecting runs: values within a field are alternatives (OR),
    fields combine with AND, and every ``tag`` given must be on the run.

    Each accepts repeated parameters or commas: ``?scheme=qsgd,nuqsgd&bits=4``.
    """

    scheme: Labels = []
    bits: BitsList = []
    collective: Labels = []
    status: Statuses = []
    dataset: Labels = []
    model: Labels = []
    tag: Tags = []
    sort: RunSortField = RunSortField.created_at
    order: SortOrder = SortOrder.desc


class RunSummary(SQLModel):
    """One column of a comparison: a run's setup, its figures, and ratios to the baseline."""

    id: int
    name: str
    scheme: str
    bits: int | None
    collective: str | None
    status: RunStatus
    world_size: int | None
    num_nodes: int | None
    model_name: str | None
    dataset: str | None
    final_loss: float | None
    final_accuracy: float | None
    total_raw_bytes: int | None
    total_payload_bytes: int | None
    total_sent_bytes: int | None
    compression_ratio: float | None
    mean_step_s: float | None
    mean_encode_s: float | None
    mean_communicate_s: float | None
    mean_decode_s: float | None
    predicted_step_s: float | None
    summary: dict[str, Any]
    # baseline.mean_step_s / mean_step_s: above 1 means faster than the baseline
    speedup: float | None = None
    # total_sent_bytes / baseline.total_sent_bytes
    sent_bytes_ratio: float | None = None
    # final_loss - baseline.final_loss, final_accuracy - baseline.final_accuracy
    loss_delta: float | None = None
    accuracy_delta: float | None = None
    # (predicted_step_s - mean_step_s) / mean_step_s
    prediction_error: float | None = None


class RunComparison(SQLModel):
    baseline_id: int
    data: list[RunSummary]  # in the order the ids were asked for
    count: int


# ---------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------
# Service
# ---------------------------------------------------------------------------------------


class Health(SQLModel):
    status: str  # "ok", or "error" (with HTTP 503) when the database does not answer
    database: str  # "ok" or the error
    version: str  # the lightning-quant package version
    schema_revision: str | None  # the Alembic revision the database is at
