"""Uncompressed baselines through the same interface: fp32, fp16 and bf16.

The payload is the tensor's bytes in the wire dtype: ``nbytes = d * itemsize``.
Non-finite values stay non-finite; fp16 overflows to Inf exactly as a cast does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from lightning_quant.collectives import Collective
from lightning_quant.quantizers.base import (
    SCALE_DTYPE,
    Payload,
    Quantizer,
    QuantizerConfig,
    register_quantizer,
)

__all__ = ["BF16", "FP16", "FP32", "FloatQuantizer"]


@dataclass(frozen=True)
class FloatConfig(QuantizerConfig):
    """Floats have no settings."""


class FloatQuantizer(Quantizer):
    """Send the tensor cast to ``wire_dtype``; deterministic. Payloads sum in an all-reduce."""

    config_class = FloatConfig
    collectives = (Collective.ALLREDUCE,)
    lossy = False
    wire_dtype: ClassVar[torch.dtype] = torch.float32

    @property
    def bits(self) -> int:
        return 8 * self.wire_dtype.itemsize

    def encode(
        self,
        tensor: torch.Tensor,
        generator: torch.Generator | None = None,
        *,
        bits: int | None = None,
        scale: torch.Tensor | None = None,
    ) -> Payload:
        if not tensor.is_floating_point():
            raise TypeError(f"{self.name} encodes floating-point tensors, got {tensor.dtype}")
        if bits not in (None, self.bits) or scale is not None:
            raise ValueError(f"{self.name} is {self.bits} bits wide and takes no scale")
        wire = tensor.detach().reshape(-1).to(self.wire_dtype).contiguous()
        return Payload(
            data=wire.view(torch.uint8),
            scales=torch.empty(0, dtype=SCALE_DTYPE, device=tensor.device),
            shape=tensor.shape,
            numel=tensor.numel(),
            dtype=tensor.dtype,
            bits=self.bits,
        )

    def decode(self, payload: Payload, out: torch.Tensor | None = None) -> torch.Tensor:
        values = payload.data.view(self.wire_dtype)
        if out is not None:
            return out.copy_(values.reshape(out.shape))
        return values.to(payload.dtype).reshape(payload.shape)

    def wire_nbytes(self, numel: int, bits: int | None = None) -> int:
        return numel * self.wire_dtype.itemsize

    def encode_summable(
        self,
        tensor: torch.Tensor,
        generator: torch.Generator | None,
        *,
        world_size: int,
        scale: torch.Tensor | None = None,
    ) -> Payload:
        """Cast to the wire dtype; fp16 divides by ``world_size`` first, as PyTorch's
        ``fp16_compress_hook`` does, so that the sum stays in range."""
        if self.wire_dtype == torch.float16:
            tensor = tensor / world_size
        return self.encode(tensor)

    def summable(self, payload: Payload) -> torch.Tensor:
        return payload.data.view(self.wire_dtype)

    def decode_own(self, payload: Payload, world_size: int) -> torch.Tensor:
        values = self.decode(payload)
        return values * world_size if self.wire_dtype == torch.float16 else values

    def decode_sum(
        self, payload: Payload, summed: torch.Tensor, world_size: int, out: torch.Tensor
    ) -> torch.Tensor:
        out.copy_(summed.view(out.shape))
        return out if self.wire_dtype == torch.float16 else out.div_(world_size)


@register_quantizer("fp32")
class FP32(FloatQuantizer):
    """Identity baseline: plain fp32, 32 bits per coordinate."""

    wire_dtype = torch.float32


@register_quantizer("fp16")
class FP16(FloatQuantizer):
    """Half-precision baseline, 16 bits per coordinate (as PyTorch's fp16_compress_hook)."""

    wire_dtype = torch.float16


@register_quantizer("bf16")
class BF16(FloatQuantizer):
    """bfloat16 baseline, 16 bits per coordinate, fp32's exponent range."""

    wire_dtype = torch.bfloat16
