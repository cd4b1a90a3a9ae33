"""Global-QSGD with exponential dithering: signed powers of two against a shared scale.

Xin, Canini, Richtarik, Horvath, https://arxiv.org/abs/2305.18627, the paper's second
quantizer. Every worker takes the same scale (the global max of ``|g|``, one scalar
``allreduce(MAX)``, as :mod:`~lightning_quant.quantizers.global_qsgd`) and rounds
``|g| / scale`` stochastically, and unbiasedly, between its neighbouring levels of
``{0, 2**-s, ..., 1/4, 1/2, 1}``; the sign travels beside.

``bits`` is the code width: the top bit is the sign, the other ``bits - 1`` bits hold the
level, so a code expresses zero and ``s + 1 = 2**(bits-1) - 1`` exponents ``0 .. -s``
(2 bits: ``{0, 1}``; 4 bits: down to ``2**-6``; 8 bits, the authors' byte of sign and
exponent: down to ``2**-126``). Values below ``2**-s`` of the scale round between 0 and
``2**-s``.

Such codes do not add up in a SUM all-reduce (the authors wrote their own ring and tree
reduction of exponents). Here they take the reduce-scatter path: an all-to-all of the
codes, a decode and sum in ``float32`` by the shard's owner, a re-encode against the same
shared scale (the mean of values within ``[-scale, scale]`` stays within it), and an
all-gather. ``auto`` takes it from 3 ranks on; at 2 the all-gather path sends as much and
quantizes once.

Wire size of ``d`` elements: ``ceil(d * bits / 8) + 4`` (the shared scale). The codes are
NUQSGD's base-1/2 layout, so the same fused kernels encode and decode them.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType

import torch

from lightning_quant.packing import pack, unpack
from lightning_quant.quantizers import kernels
from lightning_quant.quantizers.base import (
    Payload,
    QuantizerConfig,
    check_coding,
    register_quantizer,
)
from lightning_quant.quantizers.bucketed import (
    check_bits,
    exponential_levels,
    exponential_values,
    round_exponential,
)
from lightning_quant.quantizers.global_qsgd import SharedScaleQuantizer

__all__ = ["GlobalQSGDExp", "GlobalQSGDExpConfig"]


@dataclass(frozen=True)
class GlobalQSGDExpConfig(QuantizerConfig):
    """Settings of Global-QSGD with exponential dithering.

    Args:
        bits: code width, sign included, 2 to 8: zero and ``2**(bits-1) - 1`` exponents.
        coding: ``"packed"``, or ``"entropy"`` (the codes rANS-coded).
    """

    bits: int = 8
    coding: str = "packed"

    def __post_init__(self) -> None:
        check_bits(self.bits)
        check_coding(self.coding)


@register_quantizer("global_qsgd_exp")
class GlobalQSGDExp(SharedScaleQuantizer):
    """Global-QSGD's exponential dithering; reduced by all-gather or reduce-scatter.

    Example::

        q = get_quantizer("global_qsgd_exp", bits=8)
        scale = max over workers of g.abs().max()          # one allreduce(MAX)
        payload = q.encode(g, gen, scale=scale)            # one worker's codes
        g_hat = q.decode(payload)                          # unbiased: E[g_hat] = g
    """

    config_class = GlobalQSGDExpConfig
    config: GlobalQSGDExpConfig

    @property
    def exponents(self) -> int:
        """The exponents ``0 .. -s`` a code can express: ``2**(bits-1) - 1``."""
        return exponential_levels(self.config.bits) + 1

    def encode(
        self,
        tensor: torch.Tensor,
        generator: torch.Generator | None = None,
        *,
        bits: int | None = None,
        scale: torch.Tensor | None = None,
    ) -> Payload:
        """Round ``tensor / scale`` to signed powers of two.

        Args:
            tensor: floating-point tensor of any shape.
            generator: random stream for the dithering.
            bits: must be ``None`` or the configured width.
            scale: the shared scale, at least ``max |tensor|`` (default: this tensor's max).
        """
        return self._encode(tensor, generator, bits, scale, self._backend(tensor))

    def encode_eager(
        self,
        tensor: torch.Tensor,
        generator: torch.Generator | None = None,
        *,
        scale: torch.Tensor | None = None,
    ) -> Payload:
        """Quantize with plain torch ops on any device: the reference for the fused kernels."""
        return self._encode(tensor, generator, None, scale, None)

    def decode(self, payload: Payload, out: torch.Tensor | None = None) -> torch.Tensor:
        fused = kernels.backend(payload.data.device, payload.coding)
        if fused is None or payload.numel == 0:
            return self.decode_eager(payload, out)
        target = kernels.writable_f32(out, payload.data, payload.numel)
        payload.check_seal(None)
        if payload.coding == "entropy":
            values = fused.decode_shared(
                payload.data, bits=payload.bits, numel=payload.numel, offset=0,
                step=payload.scales, out=target, levels=payload.levels, exponential=True,
            )  # fmt: skip
            return kernels.finish_decode(values, payload, out)
        values = fused.decode_buckets(
            payload.data,
            payload.scales,
            bits=payload.bits,
            bucket_size=payload.numel,  # one bucket: the shared scale
            levels=payload.levels,
            exponential=True,
            numel=payload.numel,
            out=target,
        )
        return kernels.finish_decode(values, payload, out)

    def decode_eager(self, payload: Payload, out: torch.Tensor | None = None) -> torch.Tensor:
        """Decode with plain torch ops on any device: the reference for the fused kernels."""
        bits = payload.bits
        codes = unpack(payload.data, bits, payload.numel)
        magnitude = exponential_values(codes & ((1 << (bits - 1)) - 1), payload.levels)
        sign = 1.0 - 2.0 * (codes >> (bits - 1)).float()
        return kernels.finish_decode(magnitude * sign * payload.scales, payload, out)

    def _encode(
        self,
        tensor: torch.Tensor,
        generator: torch.Generator | None,
        bits: int | None,
        scale: torch.Tensor | None,
        fused: ModuleType | None,
    ) -> Payload:
        flat, scale, inverse = self._flatten(tensor, scale, fused)
        bits = self._bits(bits)
        s = exponential_levels(bits)
        if fused is not None:
            data = fused.encode_shared(
                flat, bits=bits, levels=s, inverse=inverse, generator=generator,
                exponential=True,
            )  # fmt: skip
        else:
            ratio = (flat.abs() * inverse).nan_to_num_(nan=0.0).clamp_(0.0, 1.0)
            noise = torch.rand(flat.shape, generator=generator, device=flat.device)
            codes = round_exponential(ratio, s, noise) | (flat < 0).to(torch.uint8) << (bits - 1)
            data = pack(codes, bits)
        return self._payload(tensor, data, scale, s)
