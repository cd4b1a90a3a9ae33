"""What both backends and the quantizers share: the stream key, and decoding's output."""

from __future__ import annotations

import torch

from lightning_quant.quantizers.payload import Payload

__all__ = ["draw_key", "finish_decode", "output_f32", "writable_f32"]

_GAMMA = 0x9E3779B97F4A7C15
_MASK64 = 2**64 - 1


def draw_key(generator: torch.Generator | None) -> int:
    """Draw one 64-bit stream key from ``generator`` (default: torch's global generator).

    The same generator state gives the same key, hence the same payload.
    """
    seed = torch.randint(-(2**63), 2**63 - 1, (), generator=generator, dtype=torch.int64)
    # splitmix64's finalizer spreads the seed over all 64 bits.
    z = (int(seed.item()) + _GAMMA) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def finish_decode(values: torch.Tensor, payload: Payload, out: torch.Tensor | None) -> torch.Tensor:
    """Return flat ``float32`` ``values`` as the payload's tensor, or written into ``out``."""
    if out is None:
        return values.to(payload.dtype).reshape(payload.shape)
    if out.numel() != payload.numel:
        raise ValueError(f"out has {out.numel()} elements, the payload {payload.numel}")
    if values.data_ptr() != out.data_ptr():
        out.copy_(values.view(out.shape))
    return out


def writable_f32(out: torch.Tensor | None, like: torch.Tensor, numel: int) -> torch.Tensor | None:
    """Return a flat view of ``out`` the kernels can write when decoding ``like`` (the
    payload's data), or None if they cannot: ``float32``, contiguous, on its device."""
    if (
        out is None
        or out.dtype != torch.float32
        or out.device != like.device
        or not out.is_contiguous()
        or out.numel() != numel
    ):
        return None
    return out.view(-1)


def output_f32(out: torch.Tensor | None, like: torch.Tensor, numel: int) -> torch.Tensor:
    """Return the flat ``float32`` tensor a decode of ``like`` (the payload's data) writes:
    ``out`` (checked by :func:`writable_f32`), or a new one on ``like``'s device."""
    if out is None:
        # A fresh result costs its page faults on first touch (some 12 ms for 64 MB on a
        # 2-core VM, more than the decode): pass ``out`` to decode into an existing buffer.
        return torch.empty(numel, dtype=torch.float32, device=like.device)
    view = writable_f32(out, like, numel)
    if view is None:
        raise ValueError(
            f"out must be a contiguous float32 tensor of {numel} elements on {like.device}"
        )
    return view
