"""Turn a finished run's per-rank results into one record: step time, bytes, loss, accuracy.

Step time is the median over the steps after the warm-up, of the slower rank. Bytes are
per step, each a mean over ranks (or nodes) of their medians:

* ``sent_bytes_per_step``: what a rank sent, as the hook counted it from its collectives'
  algorithms; ``inter_node_bytes_per_step``: what a node's ranks sent to other nodes;
* in an emulated network, ``measured_inter_node_tx_bytes_per_step``: what a node's
  interface counted (TCP/IP headers and ACKs included), and ``measured_tx_bytes_per_step``
  that per rank. With one rank per node, everything a rank sends crosses its interface.

The compression ratio is :func:`lightning_quant.figures.compression_ratio`.

Validation (``--val-every``) gives ``final_val_loss`` (and ``final_val_acc``) at the last
check, and time to target: the training time (validation left out; its cost is
``val_s_per_check``) and the step at which the task's target metric (validation loss for
``lm``, accuracy for the classifiers) first reached the target: fp32 DDP's final value at
the same task, topology, link and seed, or ``--target``. Null when never reached.
``bytes_to_target`` is what rank 0 had sent by then; ``validations`` keeps every check
with the bytes sent before it, so any other target can be read off afterwards.
"""

from __future__ import annotations

import collections
import itertools
import os
import statistics
from collections.abc import Sequence
from typing import Any

from benchmarks.perf_model import predict_step_time
from benchmarks.sweep.launch import RunFailed
from benchmarks.sweep.plan import RunSpec
from benchmarks.tasks import TASKS
from lightning_quant.figures import compression_ratio
from lightning_quant.hooks import get_scheme

__all__ = [
    "LOSS_WINDOW",
    "RECORD_FIELDS",
    "compare_with_baseline",
    "empty_record",
    "per_step",
    "summarize",
    "first_reaching",
]

LOSS_WINDOW = 5  # steps in the trailing mean that makes "final loss" less noisy

RECORD_FIELDS = (
    "task", "scheme", "bits", "coding", "collective", "topology", "hierarchical",
    "world_size", "link", "seed", "status", "error",
    "steps", "warmup_steps", "measured_steps",
    "step_time_s", "step_time_s_per_rank", "mean_step_s",
    "predicted_step_s", "prediction_error", "compute_s", "codec_s", "predicted_comm_s",
    "collectives_per_step", "rounds_per_step",
    "raw_bytes_per_step", "payload_bytes_per_step", "sent_bytes_per_step",
    "sent_bytes_per_rank", "inter_node_bytes_per_step", "inter_node_bytes_per_node",
    "measured_tx_bytes_per_step", "measured_inter_node_tx_bytes_per_step",
    "measured_inter_node_tx_bytes_per_node",
    "compression_ratio", "mean_bits", "steps_at_bits", "encode_s", "communicate_s", "decode_s",
    "final_loss", "test_accuracy", "test_loss",
    "final_val_loss", "final_val_acc", "val_checks", "val_s_per_check",
    "target_metric", "target", "time_to_target_s", "steps_to_target", "bytes_to_target",
    "total_sent_bytes", "validations", "start_step",
    "speedup_vs_fp32", "train_wall_s",
    "param_count", "threads_per_rank", "load_1m", "run_key", "run_id",
)  # fmt: skip


def _median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else 0.0


def first_reaching(
    validations: Sequence[dict[str, float]], metric: str, target: float, higher_is_better: bool
) -> dict[str, float] | None:
    """Return the first validation whose ``metric`` reaches ``target``, or ``None``."""
    for point in validations:
        value = point.get(metric)
        if value is not None and (value >= target if higher_is_better else value <= target):
            return point
    return None


def per_step(result: dict[str, Any]) -> tuple[list[float], list[float]]:
    """Return the mean training loss over ranks and the slower rank's time, per step."""
    ranks = result["ranks"]
    count = min(len(r["losses"]) for r in ranks)
    losses = [statistics.fmean(r["losses"][i] for r in ranks) for i in range(count)]
    times = [max(r["times"][i] for r in ranks) for i in range(count)]
    return losses, times


def _measured_tx(rank: dict[str, Any], first: int, last: int) -> float | None:
    """Median bytes the rank's interface sent per step over steps ``first .. last - 1``."""
    counters = rank.get("tx_bytes")  # the counter before step 0, then after every step
    if not counters:
        return None
    window = counters[first : last + 1]
    deltas = [b - a for a, b in zip(window, window[1:], strict=False)]
    return _median(deltas) if deltas else None


def summarize(spec: RunSpec, result: dict[str, Any]) -> dict[str, Any]:
    """Return the record of a finished run from rank 0's result (which holds every rank's)."""
    ranks = result["ranks"]
    stats = [r["stats"] for r in ranks]
    count = min(len(s) for s in stats)
    if count == 0:
        raise RunFailed("the strategy recorded no optimizer step")
    warm = min(spec.warmup, count - 1)
    measured = [s[warm:count] for s in stats]

    def median_of(name: str, steps: Sequence[dict[str, Any]]) -> float:
        return _median([step[name] for step in steps])

    per_rank = [median_of("step_s", steps) for steps in measured]
    sent_per_rank = [median_of("sent_bytes", steps) for steps in measured]
    per_node = spec.ranks_per_node  # ranks are numbered by node
    nodes = range(0, len(ranks), per_node)
    inter_per_node = [
        sum(median_of("inter_node_bytes", steps) for steps in measured[i : i + per_node])
        for i in nodes
    ]
    tx_per_node = [_measured_tx(ranks[i], warm, count) for i in nodes]  # its first rank reads
    tx = [t for t in tx_per_node if t is not None]
    own = measured[0]
    raw = median_of("raw_bytes", own)
    sent = statistics.fmean(sent_per_rank)
    if get_scheme(spec.scheme).hides_codec:  # PyTorch's hooks: their codec is timed apart
        codec = max(r.get("peer_codec_s") or 0.0 for r in ranks)
    else:
        codec = max(_median([s["encode_s"] + s["decode_s"] for s in steps]) for steps in measured)
    compute = max(r["compute_s"] for r in ranks)
    rounds = median_of("rounds", own)
    inter = statistics.fmean(inter_per_node)
    prediction = predict_step_time(
        compute_s=compute,
        codec_s=codec,
        link_bytes=inter,
        loopback_bytes=sent - inter / per_node,
        rounds=rounds,
        link=spec.link,
    )
    losses, times = per_step(result)
    step_time = max(per_rank)
    sent_by_step = [0, *itertools.accumulate(step["sent_bytes"] for step in stats[0][:count])]
    validations = [  # each with what rank 0 had sent before it
        {**point, "sent_bytes": sent_by_step[min(int(point["step"]), count)]}
        for point in ranks[0].get("validations") or []
    ]
    last = validations[-1] if validations else {}
    return {
        "task": spec.task,
        "scheme": spec.scheme,
        "bits": spec.bits,
        "coding": spec.coding,
        "collective": result.get("config", {}).get("collective", spec.collective),
        "topology": spec.topology,
        "hierarchical": result.get("config", {}).get("hierarchical", spec.hierarchical),
        "world_size": spec.world_size,
        "link": spec.link,
        "seed": spec.seed,
        "status": "ok",
        "error": None,
        "steps": count,
        "warmup_steps": warm,
        "measured_steps": count - warm,
        "step_time_s": step_time,
        "step_time_s_per_rank": per_rank,
        "mean_step_s": max(statistics.fmean(s["step_s"] for s in steps) for steps in measured),
        "predicted_step_s": prediction.total_s,
        "prediction_error": step_time / prediction.total_s - 1 if prediction.total_s else None,
        "compute_s": compute,
        "codec_s": codec,
        "predicted_comm_s": prediction.comm_s,
        "collectives_per_step": median_of("collectives", own),
        "rounds_per_step": rounds,
        "raw_bytes_per_step": raw,
        "payload_bytes_per_step": median_of("payload_bytes", own),
        "sent_bytes_per_step": sent,
        "sent_bytes_per_rank": sent_per_rank,
        "inter_node_bytes_per_step": inter,
        "inter_node_bytes_per_node": inter_per_node,
        "measured_tx_bytes_per_step": statistics.fmean(tx) / per_node if tx else None,
        "measured_inter_node_tx_bytes_per_step": statistics.fmean(tx) if tx else None,
        "measured_inter_node_tx_bytes_per_node": tx_per_node if tx else None,
        "compression_ratio": compression_ratio(raw, sent, spec.world_size),
        "mean_bits": statistics.fmean(s["bits"] for s in own),
        "steps_at_bits": dict(sorted(collections.Counter(s["bits"] for s in own).items())),
        "encode_s": median_of("encode_s", own),
        "communicate_s": median_of("communicate_s", own),
        "decode_s": median_of("decode_s", own),
        "rel_error": statistics.fmean(s.get("rel_error", 0.0) for s in own),
        "rel_variance": statistics.fmean(s.get("rel_variance", 0.0) for s in own),
        "rel_errors": [s.get("rel_error", 0.0) for s in stats[0][:count]],
        "exact_rel_errors": [s.get("exact_rel_error", 0.0) for s in stats[0][:count]],
        "fallbacks": sum(s.get("fallbacks", 0) for s in stats[0][:count]),
        "error_feedback": result.get("config", {}).get("error_feedback", False),
        "decisions": result.get("decisions") or [],
        "decisions_explained": result.get("decisions_explained") or [],
        **_link_change(result, stats[0][:count]),
        "final_loss": statistics.fmean(losses[-LOSS_WINDOW:]) if losses else None,
        "test_accuracy": result["test_accuracy"],
        "test_loss": result["test_loss"],
        "final_val_loss": last.get("val_loss"),
        "final_val_acc": last.get("val_acc"),
        "val_checks": len(validations),
        "val_s_per_check": ranks[0]["val_s"] / len(validations) if validations else None,
        "target_metric": TASKS[spec.task].target,
        "target": None,
        "time_to_target_s": None,
        "steps_to_target": None,
        "bytes_to_target": None,
        "total_sent_bytes": sent_by_step[-1],
        "validations": validations,
        "start_step": spec.start_step,
        "speedup_vs_fp32": None,
        "train_wall_s": times[-1] if times else None,
        "param_count": result["param_count"],
        "threads_per_rank": ranks[0].get("threads"),
        "load_1m": os.getloadavg()[0],  # other work on the machine skews the timings
        "run_key": None,
        "run_id": None,  # the run store's, when the sweep reports to one
    }


def empty_record(spec: RunSpec, status: str, error: str) -> dict[str, Any]:
    """Return a record with every field present, for a run that did not produce figures."""
    record: dict[str, Any] = dict.fromkeys(RECORD_FIELDS)
    record.update(
        task=spec.task,
        scheme=spec.scheme,
        bits=spec.bits,
        coding=spec.coding,
        collective=spec.collective,
        topology=spec.topology,
        hierarchical=spec.hierarchical,
        world_size=spec.world_size,
        link=spec.link,
        seed=spec.seed,
        status=status,
        error=error,
        steps=spec.steps,
    )
    return record


def compare_with_baseline(
    record: dict[str, Any],
    baseline: dict[str, Any] | None,
    result: dict[str, Any] | None,
    target: float | None = None,
) -> None:
    """Fill the ratio to fp32's step time, and the time and steps to the target: ``target``
    if given, else fp32 DDP's final value of the task's target metric."""
    if record["status"] != "ok" or result is None:
        return
    ok = baseline is not None and baseline["status"] == "ok"
    if ok:
        record["speedup_vs_fp32"] = baseline["step_time_s"] / record["step_time_s"]
    task = TASKS[record["task"]]
    metric = task.target
    if target is None and ok:
        target = baseline.get(f"final_{metric}")
    if target is None:
        return
    record["target"] = target
    reached = first_reaching(record["validations"], metric, target, task.higher_is_better)
    if reached is not None:
        record["time_to_target_s"] = reached["time_s"]
        record["steps_to_target"] = int(reached["step"])
        record["bytes_to_target"] = reached["sent_bytes"]


def _link_change(result: dict[str, Any], steps: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """For a run whose link changed mid-run (``--link-change``): when, the median step
    time before it and from 20 steps after it (``auto``'s goal: decided again by then), and
    the hook's fitted bandwidth at every step (what ``auto`` watches)."""
    change = result.get("link_change")
    if not change:
        return {}
    at = int(change["applied_at_step"])
    step_s = [s["step_s"] for s in steps]
    before, after = step_s[1:at], step_s[at + 20 :]
    return {
        "link_change": change,
        "step_time_before_change_s": _median(before) if before else None,
        "step_time_after_change_s": _median(after) if after else None,
        "link_bytes_per_s_by_step": [s.get("link_bytes_per_s", 0.0) for s in steps],
    }
