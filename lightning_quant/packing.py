"""Pack b-bit integer codes densely into ``uint8`` and back.

Codes are laid out little-endian: code ``i`` occupies bits ``[i*b, (i+1)*b)`` of the
byte stream. Every group of 8 codes fills exactly ``b`` bytes, so the packer works on
groups of 8 in a 64-bit word and needs no Python loop over elements. The packed length is
exactly ``ceil(numel * bits / 8)`` bytes: the padding of the last group is cut off.
"""

from __future__ import annotations

import torch

__all__ = ["pack", "packed_nbytes", "unpack"]

_GROUP = 8  # codes per group; a group of b-bit codes is exactly b bytes


def packed_nbytes(numel: int, bits: int) -> int:
    """Return the bytes that ``numel`` codes of ``bits`` bits occupy once packed."""
    _check_bits(bits)
    return (numel * bits + 7) // 8


def pack(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack a 1-D ``uint8`` tensor of codes below ``2**bits`` into a dense ``uint8`` tensor.

    Args:
        codes: 1-D ``uint8`` tensor, every value in ``[0, 2**bits)``.
        bits: code width, 1 to 8.

    Returns:
        1-D ``uint8`` tensor of ``packed_nbytes(codes.numel(), bits)`` bytes, on the
        device of ``codes``.
    """
    _check_bits(bits)
    if codes.dtype != torch.uint8 or codes.dim() != 1:
        raise ValueError(
            f"codes must be a 1-D uint8 tensor, got {codes.dtype} {tuple(codes.shape)}"
        )
    numel = codes.numel()
    if bits == 8:
        return codes.clone()
    if 8 % bits == 0:  # 1, 2, 4 bits: whole codes per byte, pure uint8 arithmetic
        per_byte = 8 // bits
        padded = _pad(codes, per_byte).view(-1, per_byte)
        out = padded[:, 0].clone()
        for j in range(1, per_byte):
            out |= padded[:, j] << (bits * j)
        return out[: packed_nbytes(numel, bits)]
    groups = _pad(codes, _GROUP).view(-1, _GROUP).to(torch.int64)
    word = groups[:, 0].clone()
    for j in range(1, _GROUP):
        word |= groups[:, j] << (bits * j)
    shifts = torch.arange(0, 8 * bits, 8, device=codes.device, dtype=torch.int64)
    out = ((word.unsqueeze(1) >> shifts) & 0xFF).to(torch.uint8).reshape(-1)
    return out[: packed_nbytes(numel, bits)]


def unpack(packed: torch.Tensor, bits: int, numel: int) -> torch.Tensor:
    """Unpack ``numel`` codes of ``bits`` bits from a dense ``uint8`` tensor.

    Args:
        packed: 1-D ``uint8`` tensor produced by :func:`pack` (extra trailing bytes ignored).
        bits: code width, 1 to 8.
        numel: number of codes to return.

    Returns:
        1-D ``uint8`` tensor of ``numel`` codes.
    """
    _check_bits(bits)
    if packed.dtype != torch.uint8 or packed.dim() != 1:
        raise ValueError(
            f"packed must be a 1-D uint8 tensor, got {packed.dtype} {tuple(packed.shape)}"
        )
    need = packed_nbytes(numel, bits)
    if packed.numel() < need:
        raise ValueError(f"{numel} codes of {bits} bits need {need} bytes, got {packed.numel()}")
    packed = packed[:need]
    if bits == 8:
        return packed.clone()
    mask = (1 << bits) - 1
    if 8 % bits == 0:
        shifts = torch.arange(0, 8, bits, device=packed.device, dtype=torch.uint8)
        codes = (packed.unsqueeze(1) >> shifts) & mask
        return codes.reshape(-1)[:numel]
    groups = _pad(packed, bits).view(-1, bits).to(torch.int64)
    word = groups[:, 0].clone()
    for k in range(1, bits):
        word |= groups[:, k] << (8 * k)
    shifts = torch.arange(0, _GROUP * bits, bits, device=packed.device, dtype=torch.int64)
    codes = ((word.unsqueeze(1) >> shifts) & mask).to(torch.uint8)
    return codes.reshape(-1)[:numel]


def _pad(values: torch.Tensor, multiple: int) -> torch.Tensor:
    extra = (-values.numel()) % multiple
    if extra == 0:
        return values
    return torch.cat([values, values.new_zeros(extra)])


def _check_bits(bits: int) -> None:
    if not isinstance(bits, int) or not 1 <= bits <= 8:
        raise ValueError(f"bits must be an integer from 1 to 8, got {bits!r}")
