"""Functions that run inside each rank of a multi-process test (see tests/utils/ranks.py)."""

from __future__ import annotations

import gc

import torch
import torch.distributed as dist
from torch import nn

from lightning_quant.hooks import make_comm_hook


def _mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)  # same initial weights on every rank
    return nn.Sequential(
        nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10)
    )


def _ddp(
    model: nn.Module, many_buckets: bool, device: str = "cpu"
) -> nn.parallel.DistributedDataParallel:
    cap = 1e-4 if many_buckets else 25  # tiny buckets: about one per parameter
    ids = [0] if device == "cuda" else None
    return nn.parallel.DistributedDataParallel(model.to(device), device_ids=ids, bucket_cap_mb=cap)


def train_plain_ddp(
    scheme: str, many_buckets: bool, steps: int = 6, device: str = "cpu", **settings
) -> dict:
    """Train with the hook on plain DDP; return parameters, statistics and bucket sizes."""
    dist.init_process_group("nccl" if device == "cuda" else "gloo")
    rank = dist.get_rank()
    ddp = _ddp(_mlp(), many_buckets, device)
    state, hook = make_comm_hook(scheme, **settings)
    state.bind(ddp)
    numels: list[list[int]] = []

    def recording_hook(s, bucket):
        if bucket.index() == 0:
            numels.append([])
        numels[-1].append(bucket.buffer().numel())
        return hook(s, bucket)

    ddp.register_comm_hook(state, recording_hook)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.05)
    gen = torch.Generator().manual_seed(100 + rank)  # each rank its own data
    stats = []
    for _ in range(steps):
        x, y = torch.randn(16, 32, generator=gen), torch.randint(0, 10, (16,), generator=gen)
        x, y = x.to(device), y.to(device)
        opt.zero_grad()
        nn.functional.cross_entropy(ddp(x), y).backward()
        opt.step()
        stats.append(state.compression_stats())
    params = [p.detach().cpu().clone() for p in ddp.parameters()]
    del ddp, opt
    _shutdown()
    return {"params": params, "stats": stats, "numels": numels, "calls": state.calls}


def aggregated_gradients(scheme: str, draws: int, many_buckets: bool, **settings) -> dict:
    """Return the exact mean gradient and ``draws`` quantized aggregates of it."""
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    gen = torch.Generator().manual_seed(7 + rank)
    x, y = torch.randn(8, 32, generator=gen), torch.randint(0, 10, (8,), generator=gen)

    def gradient(ddp) -> torch.Tensor:
        ddp.zero_grad()
        nn.functional.cross_entropy(ddp(x), y).backward()
        return torch.cat([p.grad.reshape(-1) for p in ddp.parameters()])

    exact = gradient(_ddp(_mlp(), many_buckets))
    ddp = _ddp(_mlp(), many_buckets)
    state, hook = make_comm_hook(scheme, **settings)
    ddp.register_comm_hook(state.bind(ddp), hook)
    samples = torch.stack([gradient(ddp) for _ in range(draws)])
    del ddp
    _shutdown()
    return {"exact": exact, "samples": samples}


def _shutdown() -> None:
    """Tear down gloo safely: no DDP reducer may outlive the process group.

    A reducer freed after ``destroy_process_group`` drops the group's last reference while
    holding the GIL, and gloo's worker threads, still freeing finished work that owns
    Python tensors, wait for that GIL: a deadlock at exit.
    """
    gc.collect()
    dist.barrier()
    dist.destroy_process_group()
