"""What the library sends the run store: a run's record and one step's metric point.

Both are exactly the API's request schemas (``RunCreate`` and ``MetricCreate`` in
``api/models/``; a test checks the fields agree), written here as frozen dataclasses so
that the library never imports ``api/``. The summary figures are
:data:`lightning_quant.figures.RUN_FIGURES`.
"""

from __future__ import annotations

import dataclasses
import math
import platform
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["API_PREFIX", "RUN_FIELDS", "MetricPoint", "RunRecord", "check_fields", "versions"]

API_PREFIX = "/api/v1"  # where the run store's routes live, on the client side


@dataclass(frozen=True)
class RunRecord:
    """A run as the store's ``POST /runs`` takes it; ``None`` fields are left out."""

    name: str
    scheme: str
    run_key: str | None = None  # the idempotency key: one run per key, however often sent
    tags: tuple[str, ...] = ()
    status: str = "running"
    finished_at: str | None = None
    # setup
    bits: int | None = None
    coding: str | None = None
    collective: str | None = None
    bucket_size: int | None = None
    world_size: int | None = None
    num_nodes: int | None = None
    topology: str | None = None
    hierarchical: bool | None = None
    backend: str | None = None
    device: str | None = None
    model_name: str | None = None
    param_count: int | None = None
    dataset: str | None = None
    strategy_config: Mapping[str, Any] = field(default_factory=dict)
    quantizer_config: Mapping[str, Any] = field(default_factory=dict)
    hyperparameters: Mapping[str, Any] = field(default_factory=dict)
    host: str | None = None
    versions: Mapping[str, str] = field(default_factory=dict)
    # summary figures
    final_loss: float | None = None
    final_accuracy: float | None = None
    total_raw_bytes: int | None = None
    total_payload_bytes: int | None = None
    total_sent_bytes: int | None = None
    total_inter_node_bytes: int | None = None
    total_fallbacks: int | None = None
    compression_ratio: float | None = None
    mean_step_s: float | None = None
    mean_encode_s: float | None = None
    mean_communicate_s: float | None = None
    mean_decode_s: float | None = None
    mean_rel_error: float | None = None
    mean_rel_variance: float | None = None
    predicted_step_s: float | None = None
    steps: int | None = None
    wall_s: float | None = None
    summary: Mapping[str, Any] = field(default_factory=dict)  # a sweep's record of the run

    def to_json(self) -> dict[str, Any]:
        """Return the request body: JSON types, no ``None`` and no non-finite number."""
        return _json_fields(dataclasses.asdict(self))


RUN_FIELDS = frozenset(f.name for f in dataclasses.fields(RunRecord))


def check_fields(fields: Mapping[str, Any]) -> dict[str, Any]:
    """Return ``fields`` as the JSON of a ``PATCH /runs/{id}``; raise for unknown names."""
    unknown = sorted(set(fields) - RUN_FIELDS)
    if unknown:
        raise ValueError(f"a run has no field {', '.join(unknown)}")
    return _json_fields(dict(fields))


@dataclass(frozen=True)
class MetricPoint:
    """One step's named scalars, as the store's ``POST /runs/{id}/metrics`` takes them."""

    step: int
    values: Mapping[str, float]
    epoch: int | None = None
    wall_time: float | None = None  # seconds since the Unix epoch

    def to_json(self) -> dict[str, Any]:
        values = {k: float(v) for k, v in self.values.items() if math.isfinite(float(v))}
        return {**_json_fields(dataclasses.asdict(self)), "values": values}


def _json_fields(values: dict[str, Any]) -> dict[str, Any]:
    def clean(value: Any) -> Any:
        if isinstance(value, tuple | list):
            return [clean(v) for v in value]
        if isinstance(value, Mapping):
            return {str(k): clean(v) for k, v in value.items()}
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, str | int | float | bool) or value is None:
            return value
        return str(value)  # a dtype, a path, an enum: their text

    return {k: clean(v) for k, v in values.items() if clean(v) is not None}


def versions() -> dict[str, str]:
    """Return the versions a run is recorded with: Python, torch, Lightning, ours, Numba."""
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": platform.python_version()}
    for name in ("torch", "lightning", "lightning-quant", "numba"):
        try:
            found[name.replace("-", "_")] = version(name)
        except PackageNotFoundError:
            continue
    return found
