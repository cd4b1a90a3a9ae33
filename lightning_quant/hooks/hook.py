"""The quantized DDP communication hook: splits a bucket, picks each part's path, runs it.

A bucket's parameters go compressed or not by the state's rule (small and 1-D tensors
stay at full precision by default, as in PowerSGD and CGX). The uncompressed ones go as
one fp32 all-reduce; the rest take the bucket's :class:`~lightning_quant.hooks.auto.Choice`
(the scheme's collective, or the hierarchical path). A bucket holding both launches the
all-reduce first, then the compressed part's stages, all from hook bodies
(:mod:`~lightning_quant.hooks.pipeline`).

With ``fallback`` on, a compressed bucket first agrees with the other ranks whether any
of them holds a NaN or Inf (one ``allreduce(MAX)`` of a flag, its first stage): if so, the
whole bucket goes as plain DDP's fp32 all-reduce that step, so mixed-precision loss
scaling sees the overflow exactly as without compression. For a scheme that encodes
against a scale shared by the ranks (Global-QSGD's), the same ``allreduce(MAX)`` carries
that scale beside the flag: one collective where there were two.
"""

# No ``from __future__ import annotations`` here: DDP checks the hook's annotations
# against ``dist.GradBucket`` itself, and would find strings.
import logging
from collections.abc import Callable

import torch
import torch.distributed as dist
from torch.futures import Future

from lightning_quant.collectives import Collective
from lightning_quant.hooks.auto import Choice
from lightning_quant.hooks.feedback import Layout
from lightning_quant.hooks.paths import PATHS, Job, hierarchical
from lightning_quant.hooks.pipeline import Final, Stages, all_reduce, as_stages
from lightning_quant.hooks.plan import BucketPlan
from lightning_quant.hooks.state import QuantizedCommState
from lightning_quant.hooks.stats import StepStats
from lightning_quant.quantizers import get_quantizer

__all__ = ["quantized_hook"]

log = logging.getLogger(__name__)

_PLAIN = get_quantizer("fp32")  # what goes uncompressed


def quantized_hook(state: QuantizedCommState, bucket: dist.GradBucket) -> Future[torch.Tensor]:
    """Average ``bucket`` across ranks through the state's quantizer and collective.

    Has PyTorch's comm-hook signature; returns a future holding the averaged bucket,
    written in place into the bucket's buffer.
    """
    stats = state.begin_bucket(bucket)
    tensor = bucket.buffer()
    index = bucket.index()
    plan = state.plan(bucket)
    state.observe(tensor, plan)  # before the path overwrites it with the mean
    exact = state.exact_mean(tensor) if state.check_error else None
    path: Stages | Final
    if state.warming_up or not plan.compresses_any:
        path = _plain(state, stats, plan.plain, tensor)
    else:
        choice = state.choice(index, plan, tensor)
        if choice.plain:
            path = _plain(state, stats, plan.plain, tensor)
        else:

            def compressed(scale: torch.Tensor | None = None) -> Stages | Final:
                if plan.mixed:
                    return _split(state, stats, plan, tensor, choice, index, scale)
                return _compressed(state, stats, plan.compressed, tensor, choice, index, scale)

            path = (
                _guarded(state, stats, plan, tensor, choice, compressed)
                if state.fallback
                else compressed()
            )
    last = bucket.is_last()
    future = state.pipeline.run(path, tensor.device, last)
    if last:  # every rank has launched all of the step's other collectives
        state.end_step(stats)
    errors = state.errors

    def measured(done: Future[torch.Tensor]) -> torch.Tensor:
        mean = done.value()
        errors.output(index, mean)
        if exact is not None:
            errors.exact(index, mean, exact)
        return mean

    return future.then(measured)


def _job(
    state: QuantizedCommState,
    stats: StepStats,
    layout: Layout,
    x: torch.Tensor,
    choice: Choice | None,
    index: int = 0,
    scale: torch.Tensor | None = None,
) -> Job:
    """A reduction of ``x`` under ``choice`` (``None``: uncompressed fp32); ``scale``: the
    shared scale, where the guard agreed it."""
    quantizer = choice.quantizer if choice is not None else _PLAIN
    feedback = state.error_feedback and quantizer.lossy
    own = choice is not None and quantizer is state.quantizer  # a policy's width applies
    return Job(
        layout=layout,
        quantizer=quantizer,
        bits=state.bits if own else None,
        stats=stats,
        generator=state.generator(x.device),
        worker_residuals=state.worker_residuals if feedback else None,
        owner_residuals=state.owner_residuals if feedback else None,
        errors=state.errors.bucket(index) if choice is not None else None,
        scale=scale,
    )


def _plain(state: QuantizedCommState, stats: StepStats, layout: Layout, x: torch.Tensor) -> Final:
    """One fp32 all-reduce over every rank, in place."""
    stats.add(uncompressed_bytes=x.numel() * x.element_size())
    job = _job(state, stats, layout, x, choice=None)
    return PATHS[Collective.ALLREDUCE](job, state.group, x, x, 0)  # type: ignore[return-value]


def _guarded(
    state: QuantizedCommState,
    stats: StepStats,
    plan: BucketPlan,
    tensor: torch.Tensor,
    choice: Choice,
    compressed: Callable[[torch.Tensor | None], Stages | Final],
) -> Stages:
    """Agree whether any rank's bucket is non-finite; if so send it all as fp32 this step.
    The flag carries the shared scale too, where the path encodes against one."""
    flag = (~torch.isfinite(tensor)).any().reshape(1)
    scale = _bucket_scale(state, plan, tensor, choice)
    agreed = flag.to(torch.int32) if scale is None else torch.cat([flag.float(), scale])
    yield all_reduce(stats, state.group, agreed, dist.ReduceOp.MAX)
    if agreed[0] > 0:
        stats.add(fallbacks=1)
        log.warning("step %d: a bucket holds NaN or Inf on some rank; sent as fp32", state.step)
        return (yield from as_stages(_plain(state, stats, plan.plain, tensor)))
    return (yield from as_stages(compressed(None if scale is None else agreed[1:])))


def _bucket_scale(
    state: QuantizedCommState, plan: BucketPlan, tensor: torch.Tensor, choice: Choice
) -> torch.Tensor | None:
    """Return this rank's part of the shared scale, ``max |x|`` of what its flat path will
    encode (the compressed part plus its residual), for schemes that declare one; ``None``
    otherwise, and on the hierarchical path, whose scale is over the node's sum."""
    if not choice.quantizer.shared_scale or state.local_group is not None:
        return None
    runs = [(a, b) for a, b, kind in plan.runs if kind]
    values = tensor if not plan.mixed else torch.cat([tensor[a:b] for a, b in runs])
    if state.error_feedback:
        values = state.worker_residuals.add(plan.compressed, values, 0)
    return choice.quantizer.own_scale(values)


def _compressed(
    state: QuantizedCommState,
    stats: StepStats,
    layout: Layout,
    x: torch.Tensor,
    choice: Choice,
    index: int,
    scale: torch.Tensor | None = None,
) -> Stages | Final:
    """The choice's path for ``x``, in place: flat, or hierarchical over the node mesh."""
    job = _job(state, stats, layout, x, choice, index, scale)
    if state.local_group is not None and state.node_group is not None:
        return hierarchical(
            job, state.local_group, state.node_group, choice.collective, state.intra_dtype, x, x
        )
    return PATHS[choice.collective](job, state.group, x, x, 0)


def _split(
    state: QuantizedCommState,
    stats: StepStats,
    plan: BucketPlan,
    tensor: torch.Tensor,
    choice: Choice,
    index: int,
    scale: torch.Tensor | None = None,
) -> Stages:
    """A bucket of both kinds: the plain part's all-reduce, then the compressed part's
    stages; both write back into the bucket at the end."""
    runs = {kind: [(a, b) for a, b, k in plan.runs if k is kind] for kind in (True, False)}
    parts = {kind: torch.cat([tensor[a:b] for a, b in runs[kind]]) for kind in runs}
    plain_work, plain_finish = _plain(state, stats, plan.plain, parts[False])
    compressed = _compressed(state, stats, plan.compressed, parts[True], choice, index, scale)
    work, finish = yield from as_stages(compressed)
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
