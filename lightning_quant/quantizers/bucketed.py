"""Per-bucket stochastic quantization shared by QSGD, QSGDinf, NUQSGD and DQ-SGD.

A tensor is flattened and cut into buckets of ``bucket_size`` elements (the last one
zero-padded in memory, never on the wire). Each bucket gets one ``float32`` scale (its L2
or max norm); each coordinate becomes a ``bits``-wide code: the top bit is the sign, the
other ``bits - 1`` bits index a magnitude level in ``[0, 1]`` relative to the scale.
Rounding between the two neighbouring levels is stochastic and unbiased.

Wire size of a tensor of ``d`` elements::

    nbytes = ceil(d * bits / 8) + 4 * ceil(d / bucket_size)

Non-finite input is never hidden: a bucket holding NaN or Inf has a non-finite scale and
decodes to non-finite values, so a mixed-precision loss scaler still sees the overflow.

Tensors go through the fused kernels of their device's backend
(:mod:`lightning_quant.quantizers.kernels`: Numba on CPU, Triton on CUDA; one pass,
counter-based noise); where a backend is unavailable they take the eager path below
(``encode_eager`` / ``decode_eager``), which is also the reference the kernels are tested
against. All write the same layout.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from lightning_quant.packing import pack, packed_nbytes, unpack
from lightning_quant.quantizers import kernels
from lightning_quant.quantizers.base import (
    SCALE_DTYPE,
    Payload,
    Quantizer,
    QuantizerConfig,
    check_coding,
    round_stochastically,
)

__all__ = [
    "BucketConfig",
    "BucketedQuantizer",
    "exponential_levels",
    "exponential_values",
    "round_exponential",
    "uniform_levels",
]

MIN_BITS, MAX_BITS = 2, 8


@dataclass(frozen=True)
class BucketConfig(QuantizerConfig):
    """Settings of a per-bucket quantizer.

    Args:
        bits: wire bits per coordinate, sign included, 2 to 8.
        bucket_size: coordinates sharing one scale (QSGD's ``d``), at least 1.
        coding: ``"packed"`` (``bits`` a code) or ``"entropy"`` (the codes rANS-coded, at
            about their entropy: :mod:`~lightning_quant.quantizers.kernels.coded`).
    """

    bits: int = 4
    bucket_size: int = 512
    coding: str = "packed"

    def __post_init__(self) -> None:
        check_bits(self.bits)
        check_coding(self.coding)
        if not isinstance(self.bucket_size, int) or self.bucket_size < 1:
            raise ValueError(f"bucket_size must be a positive integer, got {self.bucket_size!r}")


def check_bits(bits: int) -> None:
    """Raise ``ValueError`` unless ``bits`` is a wire width the bucketed schemes support."""
    if not isinstance(bits, int) or not MIN_BITS <= bits <= MAX_BITS:
        raise ValueError(
            f"bits must be an integer from {MIN_BITS} to {MAX_BITS} (sign included), got {bits!r}"
        )


def uniform_levels(bits: int) -> int:
    """Return QSGD's ``s``: levels ``{0, 1/s, ..., 1}`` with ``s = 2**(bits-1) - 1``."""
    return 2 ** (bits - 1) - 1


def exponential_levels(bits: int) -> int:
    """Return NUQSGD's ``s``: levels ``{0, 2**-s, ..., 1/2, 1}`` with ``s = 2**(bits-1) - 2``."""
    return 2 ** (bits - 1) - 2


class BucketedQuantizer(Quantizer):
    """Stochastic per-bucket quantizer; subclasses pick the norm and the level set.

    The level set is uniform (``{0, 1/s, ..., 1}``), or base-1/2 exponential
    (``exponential``: ``{0, 2**-s, ..., 1}``), both computed in the kernels; or any other
    ascending table of magnitudes (:meth:`table`) the codes index.
    """

    config_class = BucketConfig
    norm: ClassVar[str] = "l2"  # "l2" or "inf"
    config: BucketConfig

    @property
    def exponential(self) -> bool:
        """Whether the levels are ``{0, 2**-s, ..., 1/2, 1}``."""
        return False

    def levels(self, bits: int) -> int:
        """Return the number of positive levels ``s`` that ``bits`` buys."""
        return exponential_levels(bits) if self.exponential else uniform_levels(bits)

    def table(self, bits: int) -> torch.Tensor | None:
        """Return the ascending ``float32`` magnitudes the codes index, or ``None`` for the
        uniform and base-1/2 level sets the kernels compute."""
        return None

    @property
    def alignment(self) -> int:
        return self.config.bucket_size

    @property
    def scale_unit(self) -> int:
        return self.config.bucket_size

    def wire_nbytes(self, numel: int, bits: int | None = None) -> int:
        bits = self.config.bits if bits is None else bits
        buckets = math.ceil(numel / self.config.bucket_size)
        return packed_nbytes(numel, bits) + buckets * SCALE_DTYPE.itemsize

    def encode(
        self,
        tensor: torch.Tensor,
        generator: torch.Generator | None = None,
        *,
        bits: int | None = None,
        scale: torch.Tensor | None = None,
    ) -> Payload:
        """Quantize ``tensor`` bucket by bucket.

        Args:
            tensor: floating-point tensor of any shape.
            generator: random stream for the stochastic rounding (default: torch's global one).
            bits: override the configured width (DQ-SGD's per-step choice).
            scale: must be ``None``: every bucket carries its own scale.
        """
        bits = self._check_input(tensor, bits, scale)
        fused = kernels.backend(tensor.device, self.coding)
        if fused is None:
            return self.encode_eager(tensor, generator, bits=bits)
        data, scales = fused.encode_buckets(
            tensor,
            bits=bits,
            bucket_size=self.config.bucket_size,
            levels=self.levels(bits),
            exponential=self.exponential,
            inf_norm=self.norm == "inf",
            generator=generator,
            table=self.table(bits),
        )
        return self._payload(tensor, data, scales, bits)

    def encode_eager(
        self,
        tensor: torch.Tensor,
        generator: torch.Generator | None = None,
        *,
        bits: int | None = None,
    ) -> Payload:
        """Quantize with plain torch ops on any device: the reference for the fused kernels."""
        bits = self._check_input(tensor, bits, None)
        numel, size = tensor.numel(), self.config.bucket_size
        rows = _bucket_rows(tensor.detach().reshape(-1).float(), size)
        scales = self._scales(rows)
        inverse = torch.where(scales > 0, scales.reciprocal(), torch.zeros_like(scales))
        ratio = (rows.abs() * inverse.unsqueeze(1)).nan_to_num_(nan=0.0).clamp_(0.0, 1.0)
        noise = torch.rand(rows.shape, generator=generator, device=rows.device)
        negative = rows < 0
        table = self.table(bits)
        if table is None:
            magnitude = self._round(ratio, self.levels(bits), noise)
        else:
            magnitude, negative = _round_table(ratio, negative, table.to(rows.device), noise)
        codes = magnitude | negative.to(torch.uint8) << (bits - 1)
        return self._payload(tensor, pack(codes.reshape(-1)[:numel], bits), scales, bits)

    def decode(self, payload: Payload, out: torch.Tensor | None = None) -> torch.Tensor:
        """Rebuild the tensor of ``payload``.

        Args:
            payload: what :meth:`encode` returned (or its bytes read back from the wire).
            out: optional tensor of ``payload.numel`` elements to write the result into
                (a DDP bucket, say); a contiguous ``float32`` CPU ``out`` is filled by the
                fused kernel directly, with no temporary.

        Returns:
            ``out`` if given, else a new tensor of the payload's shape and dtype.
        """
        fused = kernels.backend(payload.data.device, payload.coding)
        if fused is None:
            return self.decode_eager(payload, out)
        payload.check_seal(self.config.bucket_size)
        target = kernels.writable_f32(out, payload.data, payload.numel)
        values = fused.decode_buckets(
            payload.data,
            payload.scales,
            bits=payload.bits,
            bucket_size=self.config.bucket_size,
            levels=payload.levels,
            exponential=self.exponential,
            numel=payload.numel,
            out=target,
            table=self.table(payload.bits),
        )
        return kernels.finish_decode(values, payload, out)

    def decode_eager(self, payload: Payload, out: torch.Tensor | None = None) -> torch.Tensor:
        """Decode with plain torch ops on any device: the reference for the fused kernels."""
        bits, size = payload.bits, self.config.bucket_size
        codes = _bucket_rows(unpack(payload.data, bits, payload.numel), size)
        index = codes & ((1 << (bits - 1)) - 1)
        table = self.table(bits)
        if table is None:
            magnitude = self._level_values(index, payload.levels)
        else:
            magnitude = table.to(codes.device)[index.long()]
        sign = 1.0 - 2.0 * (codes >> (bits - 1)).float()
        values = magnitude * sign * payload.scales.unsqueeze(1)
        return kernels.finish_decode(values.reshape(-1)[: payload.numel], payload, out)

    def _check_input(
        self, tensor: torch.Tensor, bits: int | None, scale: torch.Tensor | None
    ) -> int:
        if scale is not None:
            raise ValueError(f"{self.name} scales each bucket itself; it takes no shared scale")
        bits = self.config.bits if bits is None else bits
        check_bits(bits)
        if not tensor.is_floating_point():
            raise TypeError(f"{self.name} encodes floating-point tensors, got {tensor.dtype}")
        return bits

    def _payload(
        self, tensor: torch.Tensor, data: torch.Tensor, scales: torch.Tensor, bits: int
    ) -> Payload:
        return Payload(
            data=data,
            scales=scales.to(SCALE_DTYPE),
            shape=tensor.shape,
            numel=tensor.numel(),
            dtype=tensor.dtype,
            bits=bits,
            levels=self.levels(bits),
            coding=self.coding,
        ).seal()

    def _scales(self, rows: torch.Tensor) -> torch.Tensor:
        if self.norm == "inf":
            return rows.abs().amax(dim=1)
        # Sum the squares in float64 (exact squares, no overflow for finite float32), as
        # the fused kernels do, and round once: both paths give the same scales.
        return torch.linalg.vector_norm(rows, dim=1, dtype=torch.float64).to(SCALE_DTYPE)

    def _round(self, ratio: torch.Tensor, s: int, noise: torch.Tensor) -> torch.Tensor:
        """Round ``ratio`` in ``[0, 1]`` to a neighbouring level index, unbiasedly."""
        if self.exponential:
            return round_exponential(ratio, s, noise)
        return round_stochastically(ratio * s, noise).clamp_(max=s).to(torch.uint8)

    def _level_values(self, index: torch.Tensor, s: int) -> torch.Tensor:
        return exponential_values(index, s) if self.exponential else index.float() / s


def round_exponential(ratio: torch.Tensor, s: int, noise: torch.Tensor) -> torch.Tensor:
    """Round ``ratio`` in ``[0, 1]`` to the index of a neighbouring level of
    ``{0, 2**-s, ..., 1/2, 1}``, unbiasedly (index ``j > 0`` is ``2**(j - s - 1)``)."""
    top = s + 1
    lower = (torch.log2(ratio).floor_() + top).clamp_(0, top)
    low_value = torch.where(lower > 0, torch.exp2(lower - top), torch.zeros_like(ratio))
    high_value = torch.where(lower > 0, 2 * low_value, torch.full_like(ratio, 2.0**-s))
    up = noise.mul_(high_value - low_value) < (ratio - low_value)
    return (lower + up.float()).clamp_(max=top).to(torch.uint8)


def exponential_values(index: torch.Tensor, s: int) -> torch.Tensor:
    """Return the levels ``{0, 2**-s, ..., 1}`` that :func:`round_exponential`'s indices name."""
    index = index.float()
    return torch.where(index > 0, torch.exp2(index - (s + 1)), torch.zeros_like(index))


def _round_table(
    ratio: torch.Tensor, negative: torch.Tensor, table: torch.Tensor, noise: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Round ``ratio`` in ``[0, 1]`` between its neighbours in the ascending ``table``.

    Returns the level indices and the signs: without a zero level, a ratio below
    ``a = table[0]`` rounds to ``+a`` or ``-a``, up with probability ``(v + a) / (2a)`` for
    the signed ratio ``v``, so the sign may flip; unbiased either way.
    """
    top = table.numel() - 1
    k = (torch.searchsorted(table, ratio.contiguous(), right=True) - 1).clamp_(0, top)
    low, high = table[k], table[(k + 1).clamp_(max=top)]
    up = (noise * (high - low) < ratio - low) & (k < top)
    index = (k + up).to(torch.uint8)
    smallest = table[0]
    crossing = ratio < smallest  # never, with a zero level
    signed = torch.where(negative, -ratio, ratio)
    plus = noise * (2 * smallest) < signed + smallest
    return torch.where(crossing, torch.zeros_like(index), index), torch.where(
        crossing, ~plus, negative
    )


def _bucket_rows(flat: torch.Tensor, size: int) -> torch.Tensor:
    """View ``flat`` as rows of ``size``, zero-padding the last row."""
    extra = (-flat.numel()) % size
    if extra:
        flat = torch.cat([flat, flat.new_zeros(extra)])
    return flat.view(-1, size)
