"""Global-QSGD: quantize against one shared scale so that payloads add up in an allreduce.

Xin, Canini, Richtarik, Horvath, "Global-QSGD: Allreduce-compatible quantization",
https://arxiv.org/abs/2305.18627. All workers take the same scale (the global max of
``|g|``, got with one scalar ``allreduce(MAX)``) and map ``|g| / scale`` onto the integer
levels ``0 .. s_w`` with unbiased stochastic rounding (standard dithering). The sum of the
workers' integers, divided by ``s_w * n``, is an unbiased estimate of the mean gradient.

Wire format: each coordinate is one ``bits``-wide lane holding ``level + s_w`` (offset
binary, so never negative), lanes packed into ``uint8`` bytes (``bits`` in {2, 4, 8}
divides 8, so no lane straddles a byte). A plain ``uint8`` SUM allreduce (gloo and NCCL
both have it; gloo has no int16) adds lane by lane without carries as long as
``n * 2 * s_w <= 2**bits - 1``, hence::

    s_w = floor((2**bits - 1) / (2 n))        max world size = (2**bits - 1) // 2

(8 bits: 127 workers; 4 bits: 7 workers). This replaces the authors' ``127 / n``, which
can overflow when it is not an integer.

Wire size of a tensor of ``d`` elements: ``ceil(d * bits / 8) + 4`` (the shared scale).

Tensors go through the fused kernels of their device's backend
(:mod:`lightning_quant.quantizers.kernels`: counter-based noise, one pass), or where none
is available the eager path (``encode_eager`` / ``decode_eager``), the reference the
kernels are tested against. Same layout either way.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from types import ModuleType

import torch

from lightning_quant.collectives import Collective
from lightning_quant.packing import pack, packed_nbytes, unpack
from lightning_quant.quantizers import kernels
from lightning_quant.quantizers.base import (
    SCALE_DTYPE,
    Payload,
    Quantizer,
    QuantizerConfig,
    check_coding,
    register_quantizer,
    round_stochastically,
)

__all__ = [
    "GlobalQSGD",
    "GlobalQSGDConfig",
    "max_world_size",
    "SharedScaleQuantizer",
    "worker_levels",
]

LANE_BITS = (2, 4, 8)
MIN_WORKER_LEVELS = 3  # fewer, and the all-reduce warns


@dataclass(frozen=True)
class GlobalQSGDConfig(QuantizerConfig):
    """Settings of Global-QSGD.

    Args:
        bits: lane width on the wire per coordinate, one of 2, 4, 8.
        coding: ``"packed"``, or ``"entropy"`` (the lanes rANS-coded; they no longer add
            up in an all-reduce, so the reduce-scatter path takes them).
    """

    bits: int = 8
    coding: str = "packed"

    def __post_init__(self) -> None:
        check_coding(self.coding)
        if self.bits not in LANE_BITS:
            raise ValueError(
                f"global_qsgd bits must be one of {LANE_BITS} (lanes that tile a byte), "
                f"got {self.bits!r}"
            )


def max_world_size(bits: int) -> int:
    """Return the most workers whose summed ``bits``-wide lanes cannot overflow."""
    return (2**bits - 1) // 2


def worker_levels(bits: int, world_size: int) -> int:
    """Return ``s_w``, the positive levels each of ``world_size`` workers may use."""
    if not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size must be a positive integer, got {world_size!r}")
    limit = max_world_size(bits)
    if world_size > limit:
        raise ValueError(
            f"global_qsgd at {bits} bits holds at most {limit} workers without overflow, "
            f"got world size {world_size}; use more bits"
            + (" (8 bits holds 127)" if bits < 8 else "")
        )
    return (2**bits - 1) // (2 * world_size)


def worker_levels_or_zero(bits: int, world_size: int) -> int:
    """Return :func:`worker_levels`, or 0 where ``bits`` cannot hold ``world_size`` workers."""
    return worker_levels(bits, world_size) if world_size <= max_world_size(bits) else 0


class SharedScaleQuantizer(Quantizer):
    """A codec of ``bits``-wide codes against one scale every rank shares: its payload is
    the packed codes and that ``float32`` scale."""

    shared_scale = True

    def wire_nbytes(self, numel: int, bits: int | None = None) -> int:
        return packed_nbytes(numel, self._bits(bits)) + SCALE_DTYPE.itemsize

    def _bits(self, bits: int | None) -> int:
        width = self.bits
        if bits is not None and bits != width:
            raise ValueError(f"{self.name} codes are {width} bits wide, not {bits}")
        return width

    def _flatten(
        self, tensor: torch.Tensor, scale: float | torch.Tensor | None, fused: ModuleType | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return ``tensor`` flat in ``float32``, the scale as a 1-element ``float32``
        tensor (default: ``max |tensor|``, NaN and Inf included), and its inverse (0 for a
        zero scale)."""
        if not tensor.is_floating_point():
            raise TypeError(f"{self.name} encodes floating-point tensors, got {tensor.dtype}")
        flat = tensor.detach().reshape(-1).float()
        if scale is None and fused is not None:
            scale = fused.max_abs(flat)
        elif scale is None:
            scale = flat.abs().amax() if flat.numel() else flat.new_zeros(())
        scale = torch.as_tensor(scale, dtype=SCALE_DTYPE, device=flat.device).reshape(1)
        return flat, scale, torch.where(scale > 0, scale.reciprocal(), torch.zeros_like(scale))

    def _payload(
        self, tensor: torch.Tensor, data: torch.Tensor, scale: torch.Tensor, levels: int
    ) -> Payload:
        return Payload(
            data=data,
            scales=scale,
            shape=tensor.shape,
            numel=tensor.numel(),
            dtype=tensor.dtype,
            bits=self.bits,
            levels=levels,
            coding=self.coding,
        ).seal()

    def _backend(self, tensor: torch.Tensor) -> ModuleType | None:
        """The fused kernels for ``tensor`` at this scheme's coding (None: eager)."""
        return kernels.backend(tensor.device, self.coding)


@register_quantizer("global_qsgd")
class GlobalQSGD(SharedScaleQuantizer):
    """Global-QSGD with standard (linear) dithering against a shared scale.

    Up to :meth:`allreduce_limit` ranks, payloads from :meth:`encode_summable` add up in a
    plain ``uint8`` SUM all-reduce. Beyond it the hook takes the reduce-scatter path, whose
    payloads (:meth:`encode`, one worker's lanes at full width) are decoded one by one.

    Example::

        q = get_quantizer("global_qsgd", bits=8)
        scale = max over workers of g.abs().max()          # one allreduce(MAX)
        payload = q.encode_summable(g, gen, world_size=n, scale=scale)
        summed = allreduce(payload.data, SUM)              # uint8 lanes add without carry
        mean = q.decode(q.summed(payload, summed, n))
    """

    config_class = GlobalQSGDConfig
    collectives = (Collective.ALLREDUCE, Collective.REDUCE_SCATTER)
    config: GlobalQSGDConfig

    def allreduce_limit(self) -> int:
        return max_world_size(self.config.bits)

    def check_reduction(self, workers: int, collective: Collective) -> None:
        """Warn when the all-reduce's lanes leave each worker fewer than 3 levels."""
        if collective is not Collective.ALLREDUCE:
            return
        bits = self.config.bits
        levels = worker_levels(bits, workers)
        if levels < MIN_WORKER_LEVELS:
            wider = next((b for b in LANE_BITS if worker_levels_or_zero(b, workers) >= 3), 8)
            warnings.warn(
                f"global_qsgd at {bits} bits on {workers} ranks leaves each worker "
                f"{levels} level(s) (floor({2**bits - 1}/{2 * workers})): a coarse, noisy "
                f"gradient; use bits={wider} ({worker_levels_or_zero(wider, workers)} levels) "
                "or collective='reduce_scatter'",
                UserWarning,
                stacklevel=2,
            )

    def encode(
        self,
        tensor: torch.Tensor,
        generator: torch.Generator | None = None,
        *,
        bits: int | None = None,
        scale: torch.Tensor | None = None,
    ) -> Payload:
        """Quantize one worker's ``tensor`` against ``scale`` at the lanes' full width.

        Args:
            tensor: floating-point tensor of any shape.
            generator: random stream for the dithering.
            bits: must be ``None`` or the configured lane width.
            scale: the shared scale, at least ``max |tensor|`` (default: this tensor's max).
        """
        self._bits(bits)
        return self._encode(tensor, generator, scale, 1, self._backend(tensor))

    def encode_summable(
        self,
        tensor: torch.Tensor,
        generator: torch.Generator | None,
        *,
        world_size: int,
        scale: torch.Tensor | None = None,
    ) -> Payload:
        """Quantize with ``s_w`` levels, so that ``world_size`` payloads sum without carry."""
        if self.coding == "entropy":
            raise ValueError("entropy-coded lanes do not add up: an all-reduce cannot sum them")
        return self._encode(tensor, generator, scale, world_size, self._backend(tensor))

    def summable(self, payload: Payload) -> torch.Tensor:
        return payload.data

    def decode_sum(
        self, payload: Payload, summed: torch.Tensor, world_size: int, out: torch.Tensor
    ) -> torch.Tensor:
        return self.decode(self.summed(payload, summed, world_size), out=out)

    def encode_eager(
        self,
        tensor: torch.Tensor,
        generator: torch.Generator | None = None,
        scale: float | torch.Tensor | None = None,
        world_size: int = 1,
    ) -> Payload:
        """Quantize with plain torch ops on any device: the reference for the fused kernels."""
        return self._encode(tensor, generator, scale, world_size, None)

    def _encode(
        self,
        tensor: torch.Tensor,
        generator: torch.Generator | None,
        scale: float | torch.Tensor | None,
        world_size: int,
        fused: ModuleType | None,
    ) -> Payload:
        flat, scale, inverse = self._flatten(tensor, scale, fused)
        bits = self.config.bits
        s = worker_levels(bits, world_size)
        if fused is not None:
            data = fused.encode_shared(
                flat, bits=bits, levels=s, inverse=inverse, generator=generator
            )
        else:
            ratio = (flat * inverse).nan_to_num_(nan=0.0).clamp_(-1.0, 1.0)
            noise = torch.rand(flat.shape, generator=generator, device=flat.device)
            lanes = round_stochastically(ratio * s, noise).add_(s)
            data = pack(lanes.to(torch.uint8), bits)
        return self._payload(tensor, data, scale, s)

    def summed(self, payload: Payload, data: torch.Tensor, summands: int) -> Payload:
        """Return ``payload``'s layout holding ``data``, the lane sum of ``summands`` workers."""
        return Payload(
            data=data,
            scales=payload.scales,
            shape=payload.shape,
            numel=payload.numel,
            dtype=payload.dtype,
            bits=payload.bits,
            levels=payload.levels,
            summands=summands,
        )

    def decode(self, payload: Payload, out: torch.Tensor | None = None) -> torch.Tensor:
        """Return the mean of the ``payload.summands`` workers' estimates.

        Args:
            payload: an encoded payload, or :meth:`summed`'s view of the reduced lanes.
            out: optional tensor of ``payload.numel`` elements to write the result into; a
                contiguous ``float32`` CPU ``out`` is filled by the fused kernel directly.
        """
        fused = kernels.backend(payload.data.device, payload.coding)
        if fused is None:
            return self.decode_eager(payload, out)
        payload.check_seal(None)
        values = fused.decode_shared(
            payload.data,
            bits=payload.bits,
            numel=payload.numel,
            offset=payload.summands * payload.levels,
            step=payload.scales / (payload.levels * payload.summands),
            out=kernels.writable_f32(out, payload.data, payload.numel),
        )
        return kernels.finish_decode(values, payload, out)

    def decode_eager(self, payload: Payload, out: torch.Tensor | None = None) -> torch.Tensor:
        """Decode with plain torch ops on any device: the reference for the fused kernels."""
        lanes = unpack(payload.data, payload.bits, payload.numel).float()
        signed = lanes - payload.summands * payload.levels
        step = payload.scales / (payload.levels * payload.summands)
        return kernels.finish_decode(signed * step, payload, out)
