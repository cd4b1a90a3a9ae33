"""Store a sweep's runs in the run store: one run per record, its metrics, its summary."""

from __future__ import annotations

import itertools
import math
import platform
import socket
import statistics
from datetime import UTC, datetime
from typing import Any

import httpx

from benchmarks.sweep.launch import threads_per_rank
from benchmarks.sweep.plan import RunSpec
from benchmarks.sweep.records import per_step
from benchmarks.tasks import TASKS
from lightning_quant.hooks import STEP_METRICS
from lightning_quant.quantizers import available_quantizers, get_quantizer, quantizer_settings
from lightning_quant.reporting import api_base

__all__ = ["ApiClient", "finish_body", "metric_points", "quantizer_settings_for", "run_body"]

METRICS_PER_POST = 500  # steps per metrics POST (about a dozen values each)


def quantizer_settings_for(spec: RunSpec) -> dict[str, Any]:
    """Return the quantizer settings a rank builds for ``spec`` (DQ-SGD: ``--bits`` is its
    largest width)."""
    fields = quantizer_settings(spec.scheme)
    settings: dict[str, Any] = {
        k: v for k, v in (("bits", spec.bits), ("bucket_size", spec.bucket_size)) if k in fields
    }
    if "max_bits" in fields:
        settings.update(max_bits=spec.bits, lr=TASKS[spec.task].lr)
    return settings


class ApiClient:
    """Store runs in the lightning-quant API; every failure is reported and survived.

    Args:
        url: the server, e.g. ``http://127.0.0.1:8000`` (``/api/v1`` is added).
        token: bearer token when the server requires one for writes.
        warn: prints one line for each request that failed.
    """

    def __init__(self, url: str, token: str | None, warn: Any, timeout: float = 10.0) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.base = api_base(url)
        self.client = httpx.Client(
            base_url=self.base, headers=headers, timeout=timeout, trust_env=False
        )
        self.warn = warn
        self.errors = 0

    def close(self) -> None:
        self.client.close()

    def _call(self, method: str, path: str, body: dict[str, Any]) -> dict[str, Any] | None:
        try:
            response = self.client.request(method, path, json=body)
            response.raise_for_status()
            return response.json() if response.content else {}
        except httpx.HTTPStatusError as error:
            detail = error.response.text[:500]
            self.warn(
                f"API {method} {self.base}{path} answered {error.response.status_code}: "
                f"{detail}; the run stays in the JSON"
            )
        except (httpx.HTTPError, ValueError) as error:
            self.warn(f"API {method} {self.base}{path} failed: {error}; the run stays in the JSON")
        self.errors += 1
        return None

    def create_run(self, body: dict[str, Any]) -> int | None:
        created = self._call("POST", "/runs", body)
        return int(created["id"]) if created and "id" in created else None

    def post_metrics(self, run_id: int, points: list[dict[str, Any]]) -> bool:
        for start in range(0, len(points), METRICS_PER_POST):
            batch = points[start : start + METRICS_PER_POST]
            if self._call("POST", f"/runs/{run_id}/metrics", {"points": batch}) is None:
                return False
        return True

    def finish(self, run_id: int, update: dict[str, Any]) -> bool:
        return self._call("PATCH", f"/runs/{run_id}", update) is not None


def _versions() -> dict[str, str]:
    import lightning
    import torch

    import lightning_quant

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "lightning": lightning.__version__,
        "lightning_quant": lightning_quant.__version__,
        "httpx": httpx.__version__,
    }


def _planned_quantizer_config(spec: RunSpec) -> dict[str, Any]:
    if spec.unavailable or spec.scheme not in available_quantizers():
        return {}
    return get_quantizer(spec.scheme, **quantizer_settings_for(spec)).config_dict()


def run_body(spec: RunSpec, sweep_tag: str) -> dict[str, Any]:
    """Return the API's creation body for ``spec``: its full configuration, status running."""
    task = TASKS[spec.task]
    sizes = task.sizes
    param_count = sum(a * b + b for a, b in itertools.pairwise(sizes))
    quantizer = _planned_quantizer_config(spec)
    return {
        "name": spec.name,
        "tags": ["sweep", sweep_tag, f"task:{spec.task}", f"link:{spec.link}"],
        "status": "running",
        "scheme": spec.scheme,
        "bits": spec.bits,
        "collective": spec.collective,
        "bucket_size": quantizer.get("bucket_size"),
        "world_size": spec.world_size,
        "num_nodes": spec.world_size,
        "backend": "gloo",
        "device": "cpu",
        "model_name": "mlp-" + "-".join(map(str, sizes)),
        "param_count": param_count,
        "dataset": task.dataset,
        "strategy_config": {
            "strategy": "QuantizedDDPStrategy",
            "scheme": spec.scheme,
            "bits": spec.bits,
            "bucket_size": spec.bucket_size,
            "collective": spec.collective,
            "world_size": spec.world_size,
            "num_nodes": spec.world_size,
            "backend": "gloo",
            "seed": spec.seed,
            "link": spec.link,
        },
        "quantizer_config": quantizer,
        "hyperparameters": {
            "lr": task.lr,
            "momentum": 0.9,
            "optimizer": "SGD",
            "batch_size_per_rank": spec.batch_size,
            "max_steps": spec.steps,
            "warmup_steps": spec.warmup,
            "seed": spec.seed,
            "threads_per_rank": threads_per_rank(spec.world_size),
        },
        "host": socket.gethostname(),
        "versions": _versions(),
    }


def metric_points(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Return one API point per optimizer step: loss, bytes, seconds and bits."""
    losses, times = per_step(result)
    ranks = result["ranks"]
    own = ranks[0]["stats"]
    start = ranks[0].get("train_start_unix")
    points = []
    for index, stats in enumerate(own):
        values: dict[str, float] = {name: float(stats[name]) for name in STEP_METRICS}
        # the slower rank's step time, as in the summary
        values["step_s"] = max(
            r["stats"][index]["step_s"] for r in ranks if index < len(r["stats"])
        )
        if index < len(losses):
            values["loss"] = losses[index]
        point: dict[str, Any] = {
            "step": index,
            "values": {k: v for k, v in values.items() if math.isfinite(v)},
        }
        if start is not None and index < len(times):
            point["wall_time"] = start + times[index]
        points.append(point)
    return points


def finish_body(record: dict[str, Any], result: dict[str, Any] | None) -> dict[str, Any]:
    """Return the API update closing a run: status, summary figures and the whole record."""
    body: dict[str, Any] = {
        "status": "finished" if record["status"] == "ok" else "failed",
        "finished_at": datetime.now(UTC).isoformat(),
        "summary": {k: v for k, v in record.items() if k != "api_run_id"},
    }
    if result is None or record["status"] != "ok":
        return body
    own = result["ranks"][0]["stats"]
    measured = own[record["warmup_steps"] :]
    slower = max(range(len(result["ranks"])), key=lambda r: record["step_time_s_per_rank"][r])
    body.update(
        final_loss=record["final_loss"],
        final_accuracy=record["test_accuracy"],
        total_raw_bytes=int(sum(s["raw_bytes"] for s in own)),
        total_payload_bytes=int(sum(s["payload_bytes"] for s in own)),
        total_sent_bytes=int(sum(s["sent_bytes"] for s in own)),
        compression_ratio=record["compression_ratio"],
        mean_step_s=record["mean_step_s"],
        mean_encode_s=statistics.fmean(s["encode_s"] for s in measured),
        mean_communicate_s=statistics.fmean(s["communicate_s"] for s in measured),
        mean_decode_s=statistics.fmean(s["decode_s"] for s in measured),
        predicted_step_s=record["predicted_step_s"],
        strategy_config={**result["config"], "link": record["link"]},
        quantizer_config=result["config"].get("quantizer") or {},
    )
    body["summary"]["slower_rank"] = slower
    return {
        k: v for k, v in body.items() if v is None or not isinstance(v, float) or math.isfinite(v)
    }
