"""Runs: the table, its request and response schemas, filters and the comparison."""

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any

from pydantic import BeforeValidator, FiniteFloat, field_validator
from sqlalchemy import JSON, BigInteger, DateTime, String
from sqlmodel import Field, SQLModel

from api.models.types import (
    MAX_INT,
    Bits,
    BitsList,
    Count,
    JsonObject,
    Label,
    Labels,
    Ratio,
    RunKey,
    Scheme,
    Seconds,
    TagList,
    Tags,
    Text,
    Topologies,
    Topology,
    UtcDatetime,
    split_commas,
    utc_now,
)

__all__ = [
    "Run", "RunBase", "RunComparison", "RunCreate", "RunFilters", "RunPublic", "RunSortField",
    "RunStatus", "RunSummary", "RunTag", "RunUpdate", "RunsPublic", "SortOrder",
]  # fmt: skip


class RunStatus(StrEnum):
    running = "running"
    finished = "finished"
    failed = "failed"


Statuses = Annotated[list[RunStatus], BeforeValidator(split_commas)]


class RunBase(SQLModel):
    """What a client says about a run: its setup and, once known, its summary figures."""

    # identity
    name: Text = Field(min_length=1, max_length=200)
    # a client's idempotency key: posting a run whose key is stored returns the stored run
    run_key: RunKey | None = Field(default=None, max_length=64, unique=True, index=True)
    tags: TagList = Field(default_factory=list, max_length=32, sa_type=JSON)
    status: RunStatus = Field(default=RunStatus.running, sa_type=String(16), index=True)
    finished_at: UtcDatetime | None = Field(default=None, sa_type=DateTime(timezone=True))

    # setup
    scheme: Scheme = Field(max_length=64, index=True)
    bits: Bits | None = Field(default=None, index=True)
    coding: Label | None = Field(default=None, max_length=32, index=True)  # packed, entropy
    collective: Label | None = Field(default=None, max_length=32, index=True)
    bucket_size: int | None = Field(default=None, ge=1, le=MAX_INT, sa_type=BigInteger)
    world_size: int | None = Field(default=None, ge=1, le=1_000_000)
    num_nodes: int | None = Field(default=None, ge=1, le=1_000_000)
    topology: Topology | None = Field(default=None, max_length=32, index=True)
    hierarchical: bool | None = None  # reduced inside nodes, quantized between them
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
    total_inter_node_bytes: Count | None = Field(default=None, sa_type=BigInteger)  # of those
    total_fallbacks: Count | None = Field(default=None, sa_type=BigInteger)  # buckets moved
    # fp32 DDP's sent bytes at the same world size over total_sent_bytes (the library's
    # lightning_quant.figures.compression_ratio); computed when omitted
    compression_ratio: Ratio | None = None
    mean_step_s: Seconds | None = None
    mean_encode_s: Seconds | None = None
    mean_communicate_s: Seconds | None = None
    mean_decode_s: Seconds | None = None
    mean_rel_error: Ratio | None = None  # estimated ||m^ - m||^2 / ||m||^2 per step
    mean_rel_variance: Ratio | None = None  # ||Q(v) - v||^2 / ||v||^2 of what was encoded
    predicted_step_s: Seconds | None = None  # a performance model's prediction
    steps: Count | None = Field(default=None, sa_type=BigInteger)  # that reported figures
    wall_s: Seconds | None = None  # from the run's start to its end
    summary: JsonObject = Field(default_factory=dict, sa_type=JSON)  # a sweep's record


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
_NOT_NULL = (
    "name",
    "tags",
    "status",
    "scheme",
    "strategy_config",
    "quantizer_config",
    "hyperparameters",
    "versions",
    "summary",
)


class RunUpdate(RunBase):
    """Every field optional; only the fields sent are changed (JSON fields are replaced)."""

    name: Text | None = Field(default=None, min_length=1, max_length=200)  # type: ignore[assignment]
    tags: TagList | None = Field(default=None, max_length=32)  # type: ignore[assignment]
    status: RunStatus | None = None  # type: ignore[assignment]
    scheme: Scheme | None = Field(default=None, max_length=64)  # type: ignore[assignment]
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

    @field_validator("run_key")
    @classmethod
    def _fixed_key(cls, value: Any) -> Any:
        raise ValueError("is the run's identity, set when it is created; it cannot change")


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
    coding = "coding"
    collective = "collective"
    world_size = "world_size"
    topology = "topology"
    param_count = "param_count"
    final_loss = "final_loss"
    final_accuracy = "final_accuracy"
    total_raw_bytes = "total_raw_bytes"
    total_payload_bytes = "total_payload_bytes"
    total_sent_bytes = "total_sent_bytes"
    total_inter_node_bytes = "total_inter_node_bytes"
    total_fallbacks = "total_fallbacks"
    compression_ratio = "compression_ratio"
    mean_step_s = "mean_step_s"
    mean_encode_s = "mean_encode_s"
    mean_communicate_s = "mean_communicate_s"
    mean_decode_s = "mean_decode_s"
    mean_rel_error = "mean_rel_error"
    mean_rel_variance = "mean_rel_variance"
    predicted_step_s = "predicted_step_s"
    steps = "steps"
    wall_s = "wall_s"


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
    coding: Labels = []
    collective: Labels = []
    topology: Topologies = []
    status: Statuses = []
    dataset: Labels = []
    model: Labels = []
    tag: Tags = []
    run_key: RunKey | None = None
    sort: RunSortField = RunSortField.created_at
    order: SortOrder = SortOrder.desc


class RunSummary(SQLModel):
    """One column of a comparison: a run's setup, its figures, and ratios to the baseline."""

    id: int
    name: str
    scheme: str
    bits: int | None
    coding: str | None
    collective: str | None
    status: RunStatus
    world_size: int | None
    num_nodes: int | None
    topology: str | None
    hierarchical: bool | None
    model_name: str | None
    dataset: str | None
    final_loss: float | None
    final_accuracy: float | None
    total_raw_bytes: int | None
    total_payload_bytes: int | None
    total_sent_bytes: int | None
    total_inter_node_bytes: int | None
    total_fallbacks: int | None
    compression_ratio: float | None
    mean_step_s: float | None
    mean_encode_s: float | None
    mean_communicate_s: float | None
    mean_decode_s: float | None
    mean_rel_error: float | None
    mean_rel_variance: float | None
    predicted_step_s: float | None
    steps: int | None
    wall_s: float | None
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
