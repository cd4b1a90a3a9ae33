"""Rank functions for the per-bucket choices: fallbacks and ``auto`` (tests/utils/ranks.py)."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from lightning_quant.collectives import Collective
from lightning_quant.hooks import make_comm_hook
from lightning_quant.hooks.auto import AutoConfig, Choice
from lightning_quant.quantizers import get_quantizer
from tests.lightning_quant.ddp_workers import _ddp, _mlp, _shutdown


def _steps(ddp, state, steps: int, on_bucket=None) -> tuple[list[dict], list[list[torch.Tensor]]]:
    """Train ``steps`` SGD steps; return every step's figures and averaged gradients."""
    rank = dist.get_rank()
    opt = torch.optim.SGD(ddp.parameters(), lr=0.05)
    gen = torch.Generator().manual_seed(100 + rank)
    stats, grads = [], []
    for _ in range(steps):
        x, y = torch.randn(16, 32, generator=gen), torch.randint(0, 10, (16,), generator=gen)
        opt.zero_grad()
        nn.functional.cross_entropy(ddp(x), y).backward()
        grads.append([p.grad.detach().clone() for p in ddp.parameters()])
        if all(torch.isfinite(g).all() for g in grads[-1]):  # as a loss scaler skips it
            opt.step()
        stats.append(state.compression_stats())
    return stats, grads


def nan_on_one_rank(scheme: str, nan_step: int, fallback: bool = True, **settings) -> dict:
    """Put an Inf and a NaN into rank 1's bucket 0 at ``nan_step``; return figures, averaged
    gradients and, for that step, the exact fp32 mean of every bucket."""
    dist.init_process_group("gloo")
    ddp = _ddp(_mlp(), many_buckets=True)
    state, hook = make_comm_hook(scheme, fallback=fallback, **settings)
    state.bind(ddp)
    exact: dict[int, torch.Tensor] = {}
    step = [-1]

    def poisoning_hook(s, bucket):
        step[0] += bucket.index() == 0
        if step[0] == nan_step:
            if dist.get_rank() == 1 and bucket.index() == 0:
                bucket.buffer()[:2] = torch.tensor([float("inf"), float("nan")])
            mean = bucket.buffer().detach().clone()
            dist.all_reduce(mean)
            exact[bucket.index()] = mean / dist.get_world_size()
        return hook(s, bucket)

    ddp.register_comm_hook(state, poisoning_hook)
    stats, grads = _steps(ddp, state, nan_step + 2)
    del ddp
    _shutdown()
    return {"stats": stats, "grads": grads, "exact": exact}


def forced_choices(error_feedback: bool, steps: int = 4) -> dict:
    """Reduce each bucket with a different configuration in the same step (every kind of
    path, packed and coded); return parameters and figures."""
    dist.init_process_group("gloo")
    n = dist.get_world_size()
    ddp = _ddp(_mlp(), many_buckets=True)
    state, hook = make_comm_hook(
        "qsgd", bits=4, error_feedback=error_feedback, min_compress_numel=0, compress_1d=True
    )
    state.bind(ddp)
    menu = [
        Choice(get_quantizer("qsgd", bits=4, coding="entropy"), Collective.REDUCE_SCATTER),
        Choice(get_quantizer("fp16"), Collective.ALLREDUCE),
        Choice(get_quantizer("nuqsgd", bits=3), Collective.ALLGATHER),
        Choice(get_quantizer("fp32"), Collective.ALLREDUCE),
        Choice(get_quantizer("global_qsgd", bits=8), Collective.ALLREDUCE),
        Choice(get_quantizer("qsgd_inf", bits=2, coding="entropy"), Collective.ALLGATHER),
    ]
    if n > 3:  # Global-QSGD's 8-bit lanes sum 3 ranks at most
        menu[4] = Choice(get_quantizer("global_qsgd", bits=8), Collective.REDUCE_SCATTER)
    state.choices.update({i: menu[i % len(menu)] for i in range(16)})
    ddp.register_comm_hook(state, hook)
    stats, _ = _steps(ddp, state, steps)
    params = [p.detach().clone() for p in ddp.parameters()]
    labels = state.choice_labels()
    del ddp
    _shutdown()
    return {"params": params, "stats": stats, "labels": labels}


def auto_training(steps: int = 8, **config) -> dict:
    """Train with ``auto``; return parameters, figures and its decisions."""
    dist.init_process_group("gloo")
    ddp = _ddp(_mlp(hidden=256), many_buckets=True)
    state, hook = make_comm_hook("auto", **config)
    ddp.register_comm_hook(state.bind(ddp), hook)
    stats, _ = _steps(ddp, state, steps)
    params = [p.detach().clone() for p in ddp.parameters()]
    assert state.auto is not None
    decisions, explained = list(state.auto.decisions), list(state.auto.explained)
    labels = state.choice_labels()
    del ddp
    _shutdown()
    return {
        "params": params, "stats": stats, "decisions": decisions, "labels": labels,
        "explained": explained,
    }  # fmt: skip


__all__ = ["AutoConfig", "auto_training", "forced_choices", "nan_on_one_rank"]
