"""The quantized DDP communication hook: splits a bucket, picks each part's path, runs it.

A bucket's parameters go compressed or not by the state's rule (small and 1-D tensors
stay at full precision by default, as in PowerSGD and CGX). The uncompressed ones go as
one fp32 all-reduce; the rest take the scheme's collective (or the hierarchical path).
A bucket holding both launches the all-reduce first, then the compressed part's stages,
all from hook bodies (:mod:`~lightning_quant.hooks.pipeline`).
"""

# No ``from __future__ import annotations`` here: DDP checks the hook's annotations
# against ``dist.GradBucket`` itself, and would find strings.
import torch
import torch.distributed as dist
from torch.futures import Future

from lightning_quant.collectives import Collective
from lightning_quant.hooks.feedback import Layout
from lightning_quant.hooks.paths import PATHS, Job, hierarchical
from lightning_quant.hooks.pipeline import Final, Stages, as_stages
from lightning_quant.hooks.state import BucketPlan, QuantizedCommState
from lightning_quant.hooks.stats import StepStats
from lightning_quant.quantizers import get_quantizer

__all__ = ["quantized_hook"]

_PLAIN = get_quantizer("fp32")  # what goes uncompressed


def quantized_hook(state: QuantizedCommState, bucket: dist.GradBucket) -> Future[torch.Tensor]:
    """Average ``bucket`` across ranks through the state's quantizer and collective.

    Has PyTorch's comm-hook signature; returns a future holding the averaged bucket,
    written in place into the bucket's buffer.
    """
    stats = state.begin_bucket(bucket)
    tensor = bucket.buffer()
    plan = state.plan(bucket)
    state.observe(tensor, plan)  # before the path overwrites it with the mean
    path: Stages | Final
    if state.warming_up or not plan.compresses_any:
        stats.add(uncompressed_bytes=tensor.numel() * tensor.element_size())
        path = _plain(state, stats, plan.plain, tensor)
    elif plan.mixed:
        path = _split(state, stats, plan, tensor)
    else:
        path = _compressed(state, stats, plan.compressed, tensor)
    last = bucket.is_last()
    future = state.pipeline.run(path, tensor.device, last)
    if last:  # every rank has launched all of the step's other collectives
        state.end_step(stats)
    return future


def _job(
    state: QuantizedCommState, stats: StepStats, layout: Layout, x: torch.Tensor, compressed: bool
) -> Job:
    feedback = state.error_feedback and compressed
    return Job(
        layout=layout,
        quantizer=state.quantizer if compressed else _PLAIN,
        bits=state.bits if compressed else None,
        stats=stats,
        generator=state.generator(x.device),
        worker_residuals=state.worker_residuals if feedback else None,
        owner_residuals=state.owner_residuals if feedback else None,
    )


def _plain(state: QuantizedCommState, stats: StepStats, layout: Layout, x: torch.Tensor) -> Final:
    """One fp32 all-reduce over every rank, in place."""
    job = _job(state, stats, layout, x, compressed=False)
    return PATHS[Collective.ALLREDUCE](job, state.group, x, x, 0)  # type: ignore[return-value]


def _compressed(
    state: QuantizedCommState, stats: StepStats, layout: Layout, x: torch.Tensor
) -> Stages | Final:
    """The scheme's path for ``x``, in place: flat, or hierarchical over the node mesh."""
    job = _job(state, stats, layout, x, compressed=True)
    if state.local_group is not None and state.node_group is not None:
        return hierarchical(
            job, state.local_group, state.node_group, state.collective, state.intra_dtype, x, x
        )
    return PATHS[state.collective](job, state.group, x, x, 0)


def _split(
    state: QuantizedCommState, stats: StepStats, plan: BucketPlan, tensor: torch.Tensor
) -> Stages:
    """A bucket of both kinds: the plain part's all-reduce, then the compressed part's
    stages; both write back into the bucket at the end."""
    runs = {kind: [(a, b) for a, b, k in plan.runs if k is kind] for kind in (True, False)}
    parts = {kind: torch.cat([tensor[a:b] for a, b in runs[kind]]) for kind in runs}
    plain = parts[False]
    stats.add(uncompressed_bytes=plain.numel() * plain.element_size())
    plain_work, plain_finish = _plain(state, stats, plan.plain, plain)
    work, finish = yield from as_stages(_compressed(state, stats, plan.compressed, parts[True]))
    yield plain_work
    plain_finish()

    def write() -> torch.Tensor:
        finish()
        for kind, part in parts.items():
            offset = 0
            for a, b in runs[kind]:
                tensor[a:b] = part[offset : offset + b - a]
                offset += b - a
        return tensor

    return work, write
