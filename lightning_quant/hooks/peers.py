"""PyTorch's own DDP hooks as peers, counted under the same statistics as ours."""

# No ``from __future__ import annotations`` here: DDP checks the hook's annotations.
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch.futures import Future

from lightning_quant.collectives import Collective, Traffic, ring_traffic
from lightning_quant.hooks.state import QuantizedCommState
from lightning_quant.hooks.stats import StepStats

__all__ = ["PEERS", "Peer", "torch_fp16_hook", "torch_powersgd_hook"]


def torch_fp16_hook(state: QuantizedCommState, bucket: dist.GradBucket) -> Future[torch.Tensor]:
    """PyTorch's ``fp16_compress_hook``, counted: it allreduces the bucket cast to fp16."""
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

    stats = state.begin_bucket(bucket)
    tensor = bucket.buffer()
    _count(state, stats, tensor.numel() * 2, collectives=1)
    start = time.perf_counter()
    future = default_hooks.fp16_compress_hook(state.group.process_group, bucket)  # type: ignore[arg-type]
    return future.then(_timed(stats, start))


def torch_powersgd_hook(state: QuantizedCommState, bucket: dist.GradBucket) -> Future[torch.Tensor]:
    """PyTorch's ``powerSGD_hook``, counted from the element counts PowerSGD itself keeps.

    Its second allreduce is launched from a callback, so on gloo it is safe only with a
    single DDP bucket (the strategy enforces ``bucket_cap_mb`` large enough).
    """
    from torch.distributed.algorithms.ddp_comm_hooks import powerSGD_hook

    powersgd = state.powersgd
    assert powersgd is not None, "make the state with make_comm_hook('torch_powersgd')"
    stats = state.begin_bucket(bucket)
    tensor = bucket.buffer()
    before = powersgd.total_numel_after_compression
    start = time.perf_counter()
    future = powerSGD_hook.powerSGD_hook(powersgd, bucket)
    sent = powersgd.total_numel_after_compression - before
    compressing = bool(sent)  # the first steps are a plain allreduce
    _count(state, stats, (sent or tensor.numel()) * tensor.element_size(), 3 if compressing else 1)
    return future.then(_timed(stats, start))


def _count(state: QuantizedCommState, stats: StepStats, payload: int, collectives: int) -> None:
    group = state.group
    ring = ring_traffic(Collective.ALLREDUCE, payload, group.ranks, group.index, group.node_of)
    traffic = Traffic(ring.sent, ring.inter_node, ring.rounds * collectives)
    stats.add(
        payload_bytes=payload,
        sent_bytes=traffic.sent,
        inter_node_bytes=traffic.inter_node,
        collectives=collectives,
        rounds=traffic.rounds,
    )


def _timed(stats: StepStats, start: float) -> Callable[[Future[Any]], torch.Tensor]:
    def done(future: Future[Any]) -> torch.Tensor:
        stats.add(communicate_s=time.perf_counter() - start)
        value = future.value()
        return value[0] if isinstance(value, list) else value

    return done


@dataclass(frozen=True)
class Peer:
    """One of PyTorch's hooks: its function, wire width and the base state it counts with."""

    hook: Callable[..., Future[torch.Tensor]]
    bits: int
    counted_as: str  # the registry scheme whose state it uses
    single_bucket: bool = False  # safe on gloo only with one DDP bucket


PEERS: dict[str, Peer] = {
    "torch_fp16": Peer(torch_fp16_hook, bits=16, counted_as="fp16"),
    "torch_powersgd": Peer(torch_powersgd_hook, bits=32, counted_as="fp32", single_bucket=True),
}
