"""Uncompressed baselines through the same interface: fp32, fp16 and bf16.

The payload is the tensor's bytes in the wire dtype: ``nbytes = d * itemsize``.
Non-finite values stay non-finite; fp16 overflows to Inf exactly as a cast does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

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
    """Send the tensor cast to ``wire_dtype``; deterministic."""

    config_class = FloatConfig
    stochastic = False
    reducible = True
    wire_dtype: ClassVar[torch.dtype] = torch.float32

    def encode(self, tensor: torch.Tensor, generator: torch.Generator | None = None) -> Payload:
        if not tensor.is_floating_point():
            raise TypeError(f"{self.name} encodes floating-point tensors, got {tensor.dtype}")
        wire = tensor.detach().reshape(-1).to(self.wire_dtype).contiguous()
        return Payload(
            data=wire.view(torch.uint8),
            scales=torch.empty(0, dtype=SCALE_DTYPE, device=tensor.device),
            shape=tensor.shape,
            numel=tensor.numel(),
            dtype=tensor.dtype,
            bits=8 * self.wire_dtype.itemsize,
        )

    def decode(self, payload: Payload, out: torch.Tensor | None = None) -> torch.Tensor:
        values = payload.data.view(self.wire_dtype)
        if out is not None:
            return out.copy_(values.reshape(out.shape))
        return values.to(payload.dtype).reshape(payload.shape)

    def wire_nbytes(self, numel: int) -> int:
        return numel * self.wire_dtype.itemsize


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
