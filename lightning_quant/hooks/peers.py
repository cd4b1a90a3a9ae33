"""PyTorch's own DDP hooks as schemes, counted under the same statistics as ours.

Each registers a factory (:func:`~lightning_quant.hooks.schemes.register_scheme`) that
builds its state and returns PyTorch's hook wrapped to count what it sends, as
PyTorch's ``DDPCommHookType`` partials build a hook's state. The state is a
:class:`~lightning_quant.hooks.state.QuantizedCommState` of the float scheme whose
bytes the hook sends (``fp16`` for ``fp16_compress_hook``), so the statistics, the
checkpoints and the strategy treat the peers as they treat ours.
"""

# No ``from __future__ import annotations`` here: DDP checks the hook's annotations.
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from torch.futures import Future

from lightning_quant.collectives import Collective, Traffic, ring_traffic
from lightning_quant.hooks.schemes import Hook, Scheme, register_scheme
from lightning_quant.hooks.state import QuantizedCommState
from lightning_quant.hooks.stats import StepStats

__all__ = ["PowerSGDCommState", "TorchHook"]

SINGLE_BUCKET_MB = 100_000  # a bucket cap no model reaches: DDP then makes one bucket


class TorchHook(Scheme):
    """One of PyTorch's hooks: it all-reduces, knows no hierarchy, and times its own codec.

    Args:
        name: its registry name.
        bits: what it sends per coordinate (PowerSGD: fp32 factors).
        counted_as: the float scheme whose state counts its bytes.
        hook: the wrapped hook, ``(state, bucket) -> Future``.
        single_bucket: safe on gloo only with one DDP bucket.
        needs_nccl: why it cannot run without NCCL, if it cannot.
        settings: its own settings, as stored with a run.
    """

    hierarchical = False
    hides_codec = True

    def __init__(
        self,
        name: str,
        bits: int,
        counted_as: str,
        hook: Hook,
        single_bucket: bool = False,
        needs_nccl: str | None = None,
        settings: dict[str, Any] | None = None,
    ) -> None:
        self.name = name
        self._bits = bits
        self.counted_as = counted_as
        self.hook = hook
        self.needs_nccl = needs_nccl
        self.settings = dict(settings or {})
        self.ddp_settings = {"bucket_cap_mb": SINGLE_BUCKET_MB} if single_bucket else {}

    @property
    def bits(self) -> int:
        return self._bits

    @property
    def collectives(self) -> tuple[Collective, ...]:
        return (Collective.ALLREDUCE,)

    def unavailable(self, backend: str) -> str | None:
        if self.needs_nccl and backend != "nccl":
            return f"unavailable on {backend}: {self.needs_nccl}"
        return None

    def config_dict(self) -> dict[str, Any]:
        return {"name": self.name, **self.settings}

    def make_state(self, process_group: dist.ProcessGroup | None, **settings: Any) -> Any:
        kept = {k: v for k, v in settings.items() if k == "ranks_per_node"}  # for counting
        return QuantizedCommState(self.counted_as, process_group, **kept)

    def make_hook(
        self, process_group: dist.ProcessGroup | None = None, **settings: Any
    ) -> tuple[QuantizedCommState, Hook]:
        return self.make_state(process_group, **settings), self.hook


class PowerSGDCommState(QuantizedCommState):
    """The counting state of PyTorch's PowerSGD hook, holding PowerSGD's own state."""

    powersgd: Any  # torch's PowerSGDState


class PowerSGD(TorchHook):
    """PyTorch's PowerSGD: its state is built here, with ``matrix_approximation_rank``."""

    def make_state(self, process_group: dist.ProcessGroup | None, **settings: Any) -> Any:
        from torch.distributed.algorithms.ddp_comm_hooks.powerSGD_hook import PowerSGDState

        kept = {k: v for k, v in settings.items() if k == "ranks_per_node"}
        state = PowerSGDCommState(self.counted_as, process_group, **kept)
        state.powersgd = PowerSGDState(
            process_group=process_group,
            matrix_approximation_rank=self.settings["matrix_approximation_rank"],
            start_powerSGD_iter=2,
            random_seed=settings.get("seed", 0),
        )
        return state


def torch_fp16_hook(state: QuantizedCommState, bucket: dist.GradBucket) -> Future[torch.Tensor]:
    """PyTorch's ``fp16_compress_hook``, counted: it allreduces the bucket cast to fp16."""
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

    return _cast_hook(default_hooks.fp16_compress_hook, state, bucket)


def torch_bf16_hook(state: QuantizedCommState, bucket: dist.GradBucket) -> Future[torch.Tensor]:
    """PyTorch's ``bf16_compress_hook``, counted: it allreduces the bucket cast to bf16."""
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

    return _cast_hook(default_hooks.bf16_compress_hook, state, bucket)


def _cast_hook(
    hook: Callable[..., Future[torch.Tensor]], state: QuantizedCommState, bucket: dist.GradBucket
) -> Future[torch.Tensor]:
    stats = state.begin_bucket(bucket)
    tensor = bucket.buffer()
    _count(state, stats, tensor.numel() * 2, collectives=1)
    start = time.perf_counter()
    future = hook(state.group.process_group, bucket)
    return future.then(_timed(stats, start))


def torch_powersgd_hook(state: PowerSGDCommState, bucket: dist.GradBucket) -> Future[torch.Tensor]:
    """PyTorch's ``powerSGD_hook``, counted from the element counts PowerSGD itself keeps.

    Its second allreduce is launched from a callback, so on gloo it is safe only with a
    single DDP bucket (the scheme asks DDP for one).
    """
    from torch.distributed.algorithms.ddp_comm_hooks import powerSGD_hook

    powersgd = state.powersgd
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


@register_scheme("torch_fp16")
def _torch_fp16() -> Scheme:
    return TorchHook("torch_fp16", 16, "fp16", torch_fp16_hook)


@register_scheme("torch_powersgd", settings=("matrix_approximation_rank",))
def _torch_powersgd(matrix_approximation_rank: int = 4) -> Scheme:
    if not isinstance(matrix_approximation_rank, int) or matrix_approximation_rank < 1:
        raise ValueError(
            f"matrix_approximation_rank must be a positive integer, got "
            f"{matrix_approximation_rank!r}"
        )
    settings = {"matrix_approximation_rank": matrix_approximation_rank}
    return PowerSGD(
        "torch_powersgd", 32, "fp32", torch_powersgd_hook, single_bucket=True, settings=settings
    )


@register_scheme("torch_bf16")
def _torch_bf16() -> Scheme:
    return TorchHook(
        "torch_bf16", 16, "bf16", torch_bf16_hook,
        needs_nccl="DDP registers PyTorch's bf16_compress_hook only with CUDA and NCCL 2.10+ "
        "(gloo sums bf16 itself: use the 'bf16' scheme)",
    )  # fmt: skip
