"""DDP communication hooks that send quantized gradients, and the state they share.

Usable with plain PyTorch DDP::

    state = QuantizedCommState(get_quantizer("qsgd", bits=4), seed=0)
    state.bind(ddp_model)
    ddp_model.register_comm_hook(state, quantized_hook)
    ...
    state.compression_stats()  # the last step's bytes and seconds

How a bucket travels, by scheme:

* per-worker scales (``qsgd``, ``qsgd_inf``, ``nuqsgd``, ``dqsgd``): encode, one
  ``all_gather_into_tensor`` of the packed ``uint8`` payloads, decode every worker's
  payload, average.
* ``global_qsgd``: one scalar ``allreduce(MAX)`` for the shared scale (waited for in the
  hook body), then one ``uint8`` SUM allreduce of the lanes, then decode.
* ``fp32`` / ``fp16`` / ``bf16``: one SUM allreduce in that dtype.
* buckets under ``min_compress_numel`` elements: one fp32 SUM allreduce.

Every collective is launched from the hook body, in bucket order, never from a future's
callback, so all ranks start the same collectives in the same order (PyTorch's own
PowerSGD hook breaks that rule and aborts gloo with several buckets).
"""

# No ``from __future__ import annotations`` here: DDP checks the hook's annotations
# against ``dist.GradBucket`` itself, and would find strings.
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.futures import Future

from lightning_quant.quantizers import Quantizer, get_quantizer
from lightning_quant.quantizers.dqsgd import DQSGD
from lightning_quant.quantizers.floats import FloatQuantizer
from lightning_quant.quantizers.global_qsgd import GlobalQSGD, worker_levels

__all__ = [
    "PEERS",
    "QuantizedCommState",
    "StepStats",
    "make_comm_hook",
    "quantized_hook",
    "torch_fp16_hook",
    "torch_powersgd_hook",
]

log = logging.getLogger(__name__)

DEFAULT_MIN_COMPRESS_NUMEL = 1024


@dataclass
class StepStats:
    """Communication figures of one optimizer step, on this rank."""

    step: int = 0
    buckets: int = 0
    raw_bytes: int = 0
    wire_bytes: int = 0
    encode_s: float = 0.0
    communicate_s: float = 0.0
    decode_s: float = 0.0
    bits: int = 0
    # squared norms of the aggregated buckets, by bucket index (identical on every rank)
    bucket_sq_norms: dict[int, float] = field(default_factory=dict)
    # future callbacks run on gloo/NCCL threads, possibly two at once
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def grad_sq_norm(self) -> float:
        """Squared norm of the aggregated gradient, summed in bucket order, so every rank
        gets the same float whatever order its buckets completed in."""
        return sum(self.bucket_sq_norms[i] for i in sorted(self.bucket_sq_norms))

    def add_times(self, **seconds: float) -> None:
        with self.lock:
            for name, value in seconds.items():
                setattr(self, name, getattr(self, name) + value)

    def as_dict(self) -> dict[str, float]:
        ratio = self.raw_bytes / self.wire_bytes if self.wire_bytes else 0.0
        return {
            "step": self.step,
            "buckets": self.buckets,
            "raw_bytes": self.raw_bytes,
            "wire_bytes": self.wire_bytes,
            "compression_ratio": ratio,
            "encode_s": self.encode_s,
            "communicate_s": self.communicate_s,
            "decode_s": self.decode_s,
            "bits": self.bits,
        }


@dataclass
class _Residual:
    """Error-feedback memory of one bucket and the parameters laid out in it."""

    keys: tuple[str, ...]
    sizes: tuple[int, ...]
    values: torch.Tensor


class QuantizedCommState:
    """Settings, per-bucket memory and statistics of :func:`quantized_hook`.

    Args:
        quantizer: a :class:`Quantizer` or a registry name (then ``**quantizer_config``).
        process_group: the group to reduce over (default: the whole world).
        error_feedback: add each bucket's previous quantization error before encoding.
        min_compress_numel: buckets with fewer elements go as a plain fp32 allreduce.
        seed: base seed; rank ``r`` draws from its own stream seeded ``seed + r``.
    """

    def __init__(
        self,
        quantizer: Quantizer | str = "qsgd",
        process_group: dist.ProcessGroup | None = None,
        error_feedback: bool = False,
        min_compress_numel: int = DEFAULT_MIN_COMPRESS_NUMEL,
        seed: int = 0,
        **quantizer_config: Any,
    ) -> None:
        # settings
        if isinstance(quantizer, str):
            quantizer = get_quantizer(quantizer, **quantizer_config)
        elif quantizer_config:
            raise ValueError("pass settings either in the Quantizer instance or as keywords")
        if min_compress_numel < 0:
            raise ValueError(f"min_compress_numel must be >= 0, got {min_compress_numel}")
        self.quantizer = quantizer
        self.process_group = process_group
        self.error_feedback = error_feedback
        self.min_compress_numel = min_compress_numel
        self.seed = seed
        # internal state
        self.rank = dist.get_rank(process_group) if dist.is_initialized() else 0
        self.world_size = dist.get_world_size(process_group) if dist.is_initialized() else 1
        self.step = 0
        self.last_grad_norm: float | None = None  # of the previous step's aggregated gradient
        self.policy = quantizer.make_policy() if isinstance(quantizer, DQSGD) else None
        self.powersgd: Any = None  # PowerSGDState when running PyTorch's PowerSGD as a peer
        self.residuals: dict[int, _Residual] = {}
        self._generators: dict[torch.device, torch.Generator] = {}
        self._param_names: dict[int, str] = {}
        self._restored: dict[str, torch.Tensor] = {}  # loaded residuals not yet re-attached
        # statistics
        self.current = StepStats()
        self.calls = 0
        self._check_world_size()

    # --- setup ---------------------------------------------------------------------------

    def bind(self, model: nn.Module) -> "QuantizedCommState":
        """Learn the parameter names of ``model`` and check it can be quantized.

        Names make error-feedback residuals portable across bucket layouts and
        checkpoints. Raises ``TypeError`` for a trainable non-floating parameter.
        """
        module = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
        for name, param in module.named_parameters():
            if param.requires_grad and not param.is_floating_point():
                raise TypeError(f"parameter {name!r} is {param.dtype}: only floating gradients")
            self._param_names[id(param)] = name
        return self

    def _check_world_size(self) -> None:
        if isinstance(self.quantizer, GlobalQSGD):
            worker_levels(self.quantizer.config.bits, self.world_size)

    def generator(self, device: torch.device) -> torch.Generator:
        """Return this rank's random stream on ``device`` (seeded ``seed + rank``)."""
        if device not in self._generators:
            gen = torch.Generator(device=device)
            gen.manual_seed(self.seed + self.rank)
            self._generators[device] = gen
        return self._generators[device]

    # --- per-step bookkeeping --------------------------------------------------------------

    def begin_bucket(self, bucket: dist.GradBucket) -> None:
        """Open a new step at bucket 0: close the statistics and pick DQ-SGD's bits."""
        self.calls += 1
        if bucket.index() != 0:
            return
        if self.current.buckets:
            self.step += 1
            self.last_grad_norm = math.sqrt(self.current.grad_sq_norm)
        self.current = StepStats(step=self.step)
        if self.policy is not None:
            self.current.bits = self.policy.choose(self.last_grad_norm)
        elif isinstance(self.quantizer, FloatQuantizer):
            self.current.bits = 8 * self.quantizer.wire_dtype.itemsize
        else:
            self.current.bits = getattr(self.quantizer.config, "bits", 32)

    def compression_stats(self) -> dict[str, float]:
        """Return the figures of the latest step (complete once its backward has finished)."""
        return self.current.as_dict()

    # --- error feedback --------------------------------------------------------------------

    def add_residual(self, bucket: dist.GradBucket, tensor: torch.Tensor) -> torch.Tensor:
        """Return ``tensor`` plus this bucket's remembered quantization error."""
        keys, sizes = self._layout(bucket)
        memory = self.residuals.get(bucket.index())
        if memory is not None and memory.keys == keys and memory.values.numel() == tensor.numel():
            return tensor + memory.values
        pieces = self._pieces_by_name()
        if not pieces:
            return tensor.clone()
        rebuilt = [
            pieces.get(k, torch.zeros(n, device=tensor.device))
            for k, n in zip(keys, sizes, strict=True)
        ]
        flat = torch.cat([p.to(tensor.device, tensor.dtype) for p in rebuilt])
        if flat.numel() != tensor.numel():  # layout not made of whole parameters
            return tensor.clone()
        return tensor + flat

    def store_residual(
        self, bucket: dist.GradBucket, target: torch.Tensor, sent: torch.Tensor
    ) -> None:
        keys, sizes = self._layout(bucket)
        self.residuals[bucket.index()] = _Residual(keys, sizes, target - sent)
        for key in keys:
            self._restored.pop(key, None)

    def _layout(self, bucket: dist.GradBucket) -> tuple[tuple[str, ...], tuple[int, ...]]:
        params = bucket.parameters()
        keys = tuple(self._param_names.get(id(p), f"param@{id(p)}") for p in params)
        return keys, tuple(p.numel() for p in params)

    def _pieces_by_name(self) -> dict[str, torch.Tensor]:
        """Split every stored residual back into per-parameter pieces (layout-free)."""
        pieces = dict(self._restored)
        for memory in self.residuals.values():
            if sum(memory.sizes) == memory.values.numel():
                pieces.update(
                    zip(memory.keys, memory.values.split(list(memory.sizes)), strict=True)
                )
        return pieces

    # --- checkpointing ---------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Return this rank's step, policy, residuals (by parameter) and random streams."""
        done = bool(self.current.buckets)  # the current step's backward has finished
        return {
            "step": self.step + done,
            "last_grad_norm": math.sqrt(self.current.grad_sq_norm) if done else self.last_grad_norm,
            "rank": self.rank,
            "world_size": self.world_size,
            "policy": self.policy.state_dict() if self.policy is not None else None,
            "residuals": {k: v.detach().cpu().clone() for k, v in self._pieces_by_name().items()},
            "generators": {str(d): g.get_state() for d, g in self._generators.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved; residuals attach to their buckets lazily."""
        if state.get("world_size") != self.world_size:
            log.warning(
                "comm state saved with world size %s, now %s: starting error feedback afresh",
                state.get("world_size"),
                self.world_size,
            )
            state = {**state, "residuals": {}}
        self.step = int(state["step"])
        if self.policy is not None and state.get("policy") is not None:
            self.policy.load_state_dict(state["policy"])
        for name, gen_state in state.get("generators", {}).items():
            self.generator(torch.device(name)).set_state(gen_state)
        self.residuals.clear()
        self._restored = dict(state.get("residuals", {}))
        self.last_grad_norm = state.get("last_grad_norm")
        self.current = StepStats(step=self.step)


# --- the hook -------------------------------------------------------------------------------


def quantized_hook(state: QuantizedCommState, bucket: dist.GradBucket) -> Future[torch.Tensor]:
    """Average ``bucket`` across ranks through the state's quantizer.

    Has PyTorch's comm-hook signature; returns a future holding the averaged bucket,
    written in place into the bucket's buffer.
    """
    state.begin_bucket(bucket)
    tensor = bucket.buffer()
    stats = state.current
    stats.buckets += 1
    stats.raw_bytes += tensor.numel() * tensor.element_size()
    if tensor.numel() < state.min_compress_numel:
        return _allreduce_float(state, bucket, torch.float32)
    q = state.quantizer
    if isinstance(q, FloatQuantizer):
        return _allreduce_float(state, bucket, q.wire_dtype)
    if isinstance(q, GlobalQSGD):
        return _allreduce_global(state, bucket, tensor, q)
    return _allgather_payloads(state, bucket, tensor, q)


def _allreduce_float(
    state: QuantizedCommState, bucket: dist.GradBucket, dtype: torch.dtype
) -> Future[torch.Tensor]:
    start = time.perf_counter()
    tensor = bucket.buffer()
    world = state.world_size
    if dtype == torch.float16:  # divide first, as PyTorch's fp16 hook does, so sums fit
        wire = tensor.to(dtype).div_(world)
        decode: Callable[[torch.Tensor], torch.Tensor] = lambda summed: summed  # noqa: E731
    else:
        wire = tensor.to(dtype)
        decode = lambda summed: summed.float().div_(world)  # noqa: E731
    state.current.encode_s += time.perf_counter() - start
    return _launch(state, bucket, wire, decode, dist.ReduceOp.SUM)


def _allreduce_global(
    state: QuantizedCommState, bucket: dist.GradBucket, tensor: torch.Tensor, q: GlobalQSGD
) -> Future[torch.Tensor]:
    start = time.perf_counter()
    target = state.add_residual(bucket, tensor) if state.error_feedback else tensor
    scale = target.detach().abs().amax().float().reshape(1)
    if not torch.isfinite(scale).all():
        scale.fill_(math.inf)  # MAX of NaN is unreliable; Inf still decodes to non-finite
    state.current.encode_s += time.perf_counter() - start
    start = time.perf_counter()
    dist.all_reduce(scale, op=dist.ReduceOp.MAX, group=state.process_group)  # tiny, waited for
    state.current.add_times(communicate_s=time.perf_counter() - start)
    state.current.wire_bytes += scale.numel() * scale.element_size()
    start = time.perf_counter()
    gen = state.generator(tensor.device)
    payload = q.encode(target, gen, scale=scale, world_size=state.world_size)
    if state.error_feedback:
        state.store_residual(bucket, target, q.decode(payload))
    state.current.encode_s += time.perf_counter() - start

    def decode(summed: torch.Tensor) -> torch.Tensor:
        return q.decode(q.summed(payload, summed, state.world_size), out=tensor)

    return _launch(state, bucket, payload.data, decode, dist.ReduceOp.SUM)


def _allgather_payloads(
    state: QuantizedCommState, bucket: dist.GradBucket, tensor: torch.Tensor, q: Quantizer
) -> Future[torch.Tensor]:
    start = time.perf_counter()
    target = state.add_residual(bucket, tensor) if state.error_feedback else tensor
    gen = state.generator(tensor.device)
    kwargs = {"bits": state.current.bits} if isinstance(q, DQSGD) else {}
    payload = q.encode(target, gen, **kwargs)
    if state.error_feedback:
        state.store_residual(bucket, target, q.decode(payload))
    wire = payload.to_wire()
    state.current.encode_s += time.perf_counter() - start

    def decode(gathered: torch.Tensor) -> torch.Tensor:
        rows = gathered.view(state.world_size, -1)
        # accumulate in the bucket itself when it is fp32 (no temporary), else in fp32
        total = (
            tensor
            if tensor.dtype == torch.float32
            else torch.empty_like(tensor, dtype=torch.float32)
        )
        q.decode(payload.read_wire(rows[0]), out=total)
        for row in rows[1:]:
            total += q.decode(payload.read_wire(row))
        return total.div_(state.world_size)

    return _launch(state, bucket, wire, decode, None)


def _launch(
    state: QuantizedCommState,
    bucket: dist.GradBucket,
    wire: torch.Tensor,
    decode: Callable[[torch.Tensor], torch.Tensor],
    op: dist.ReduceOp.RedOpType | None,
) -> Future[torch.Tensor]:
    """Start one collective on ``wire`` (allreduce with ``op``, else allgather).

    ``decode`` turns the collective's result into the mean gradient, which is written
    into the bucket's buffer.
    """
    stats, group, world = state.current, state.process_group, state.world_size
    bucket_buffer, index = bucket.buffer(), bucket.index()
    stats.wire_bytes += wire.numel() * wire.element_size()
    start = time.perf_counter()
    if op is None:
        result = wire.new_empty(world * wire.numel())
        work = dist.all_gather_into_tensor(result, wire, group=group, async_op=True)
    else:
        result = wire
        work = dist.all_reduce(result, op=op, group=group, async_op=True)
    assert work is not None

    def finish(_: Future[Any]) -> torch.Tensor:
        decode_start = time.perf_counter()
        mean = decode(result)
        if mean is not bucket_buffer:  # the quantized paths decode into the bucket directly
            bucket_buffer.copy_(mean)
        if state.policy is not None:  # DQ-SGD decides from the shared aggregated norm
            stats.bucket_sq_norms[index] = float(bucket_buffer.float().pow(2).sum())
        stats.add_times(
            communicate_s=decode_start - start, decode_s=time.perf_counter() - decode_start
        )
        return bucket_buffer

    return work.get_future().then(finish)


# --- PyTorch's own hooks as peers, under the same statistics ---------------------------------

PEERS = ("torch_fp16", "torch_powersgd")


def torch_fp16_hook(state: QuantizedCommState, bucket: dist.GradBucket) -> Future[torch.Tensor]:
    """PyTorch's ``fp16_compress_hook``, counted: it allreduces the bucket cast to fp16."""
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

    state.begin_bucket(bucket)
    tensor = bucket.buffer()
    _count(state, tensor, wire_bytes=tensor.numel() * 2)
    start = time.perf_counter()
    future = default_hooks.fp16_compress_hook(state.process_group, bucket)  # type: ignore[arg-type]
    return future.then(_timed(state.current, start))


def torch_powersgd_hook(state: QuantizedCommState, bucket: dist.GradBucket) -> Future[torch.Tensor]:
    """PyTorch's ``powerSGD_hook``, counted from the element counts PowerSGD itself keeps.

    Its second allreduce is launched from a callback, so on gloo it is safe only with a
    single DDP bucket (the strategy enforces ``bucket_cap_mb`` large enough).
    """
    from torch.distributed.algorithms.ddp_comm_hooks import powerSGD_hook

    powersgd = state.powersgd
    assert powersgd is not None, "make the state with make_comm_hook('torch_powersgd')"
    state.begin_bucket(bucket)
    tensor = bucket.buffer()
    before = powersgd.total_numel_after_compression
    start = time.perf_counter()
    future = powerSGD_hook.powerSGD_hook(powersgd, bucket)
    sent = powersgd.total_numel_after_compression - before
    _count(state, tensor, wire_bytes=(sent or tensor.numel()) * tensor.element_size())
    return future.then(_timed(state.current, start))


def _count(state: QuantizedCommState, tensor: torch.Tensor, wire_bytes: int) -> None:
    state.current.buckets += 1
    state.current.raw_bytes += tensor.numel() * tensor.element_size()
    state.current.wire_bytes += wire_bytes


def _timed(stats: StepStats, start: float) -> Callable[[Future[Any]], torch.Tensor]:
    def done(future: Future[Any]) -> torch.Tensor:
        stats.add_times(communicate_s=time.perf_counter() - start)
        value = future.value()
        return value[0] if isinstance(value, list) else value

    return done


def make_comm_hook(
    scheme: str | Quantizer,
    process_group: dist.ProcessGroup | None = None,
    powersgd_rank: int = 4,
    **settings: Any,
) -> tuple[QuantizedCommState, Callable[..., Future[torch.Tensor]]]:
    """Return ``(state, hook)`` for a registry scheme, a ``Quantizer``, or a PyTorch peer.

    Args:
        scheme: a quantizer registry name, a :class:`Quantizer`, ``"torch_fp16"`` or
            ``"torch_powersgd"``.
        process_group: the group to reduce over.
        powersgd_rank: PowerSGD's matrix approximation rank.
        **settings: :class:`QuantizedCommState` keywords (``error_feedback``, ``seed``,
            ``min_compress_numel``) and quantizer settings (``bits``, ``bucket_size``...).

    Example::

        state, hook = make_comm_hook("nuqsgd", bits=4, seed=0)
        ddp_model.register_comm_hook(state.bind(ddp_model), hook)
    """
    if scheme == "torch_fp16":
        return QuantizedCommState("fp16", process_group), torch_fp16_hook
    if scheme == "torch_powersgd":
        from torch.distributed.algorithms.ddp_comm_hooks.powerSGD_hook import PowerSGDState

        state = QuantizedCommState("fp32", process_group)
        state.powersgd = PowerSGDState(
            process_group=process_group,
            matrix_approximation_rank=powersgd_rank,
            start_powerSGD_iter=2,
            random_seed=settings.get("seed", 0),
        )
        return state, torch_powersgd_hook
    return QuantizedCommState(scheme, process_group, **settings), quantized_hook
