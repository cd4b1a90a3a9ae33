"""The GPU backend: Triton kernels for CUDA tensors, with the CPU backend's operations.

The same payloads as the CPU kernels and the eager path: the same per-bucket scales
(computed by the eager path's own torch reductions, so equal to the last bit), the same
codes for the same noise, the same little-endian packing as ``packing.pack``. One launch
quantizes and packs, one unpacks and scales:

* encode: a program takes 128 groups of 8 elements (8 codes of ``b`` bits fill exactly
  ``b`` bytes, so groups never share a byte); it reads the gradient once, in its own
  dtype, draws each element's uniform from the CPU kernels' counter-based stream
  (splitmix64 of the key and the element's index, so the payload does not depend on the
  launch), rounds, and writes the packed bytes;
* decode: the reverse, written straight into the caller's tensor (a DDP bucket).

With the same key, the payload is the CPU kernels' to the bit. Rounding up tests
``u >= 1 - frac(x)``, as everywhere.

Importing this module needs ``triton`` (it ships with CUDA builds of torch). With
``TRITON_INTERPRET=1`` set before the import, the kernels run on CPU tensors, slowly:
that is how the tests check them where no GPU is.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import triton
import triton.language as tl

from lightning_quant.packing import packed_nbytes
from lightning_quant.quantizers.kernels.common import draw_key, output_f32
from lightning_quant.quantizers.kernels.levels import (
    EXPONENTIAL,
    GUIDE_SHIFT,
    SIGNED,
    TABLE,
    lookup,
    mode_of,
)

__all__ = [
    "bucket_scales",
    "decode",
    "decode_buckets",
    "decode_shared",
    "encode",
    "encode_buckets",
    "encode_shared",
    "generator_key",
    "max_abs",
    "table_lookup",
]

GROUPS = 128  # groups of 8 elements per program
_MASK64 = 2**64 - 1


@triton.jit
def _splitmix(state):
    """splitmix64's finalizer on ``uint64`` words, as the CPU kernels' ``_mix``."""
    z = (state ^ (state >> 30)) * 0xBF58476D1CE4E5B9
    z = (z ^ (z >> 27)) * 0x94D049BB133111EB
    return z ^ (z >> 31)


@triton.jit
def _uniforms(key, group, GROUPS: tl.constexpr):
    """The CPU kernels' stream for groups of 8 elements: element ``i`` takes 24 bits of
    ``splitmix64(key + (i // 2 + 1) * GAMMA)``, the top ones for even ``i``, bits 8 to 31
    for odd ``i``. One hash serves two elements."""
    pair = group[:, None] * 4 + tl.arange(0, 4).to(tl.int64)[None, :]
    state = key.to(tl.uint64, bitcast=True) + (pair + 1).to(tl.uint64) * 0x9E3779B97F4A7C15
    z = _splitmix(state)
    high = (z >> 40).to(tl.uint32)
    low = ((z >> 8) & 0xFFFFFF).to(tl.uint32)
    return tl.reshape(tl.join(high, low), (GROUPS, 8)).to(tl.float32) * (1.0 / 16777216.0)


@triton.jit
def _encode_kernel(
    x_ptr, inverse_ptr, table_ptr, guide_ptr, out_ptr, n, nbytes, bucket_size, levels, key,
    BITS: tl.constexpr, MODE: tl.constexpr, GROUPS: tl.constexpr,
):  # fmt: skip
    group = tl.program_id(0).to(tl.int64) * GROUPS + tl.arange(0, GROUPS).to(tl.int64)
    lane = tl.arange(0, 8)
    index = group[:, None] * 8 + lane[None, :]
    inside = index < n
    v = tl.load(x_ptr + index, mask=inside, other=0.0).to(tl.float32)
    inverse = tl.load(inverse_ptr + index // bucket_size, mask=inside, other=0.0)
    u = _uniforms(key, group, GROUPS)
    s = levels.to(tl.float32)
    sign_bit = 1 << (BITS - 1)
    if MODE == SIGNED:  # Global-QSGD's offset lanes: level + s
        r = v * inverse
        r = tl.where(r == r, r, 0.0)
        r = tl.minimum(tl.maximum(r, -1.0), 1.0)
        x = r * s
        lower = tl.floor(x)
        code = (tl.where(u >= 1.0 - (x - lower), lower + 1.0, lower) + s).to(tl.int32)
    else:
        a = tl.abs(v) * inverse
        r = tl.minimum(tl.where(a == a, a, 0.0), 1.0)
        negative = v < 0.0
        if MODE == EXPONENTIAL:  # levels 0, 2**-s, ..., 1/2, 1 (level j > 0: 2**(j-s-1))
            top = levels + 1
            bits = r.to(tl.uint32, bitcast=True)
            lower = (bits >> 23).to(tl.int32) - 127 + top
            low = (bits & 0x7F800000).to(tl.float32, bitcast=True)
            base = tl.where(lower > 0, low, 0.0)
            smallest = ((127 - levels) << 23).to(tl.uint32).to(tl.float32, bitcast=True)
            gap = tl.where(lower > 0, low, smallest)  # 2**-s above level 0
            lower = tl.maximum(lower, 0)
            q = tl.minimum(tl.where(u * gap < r - base, lower + 1, lower), top)
            code = q + tl.where(negative, sign_bit, 0)
        elif MODE == TABLE:  # any ascending table, found through its guide
            top = (1 << (BITS - 1)) - 1
            k = tl.load(guide_ptr + (r.to(tl.uint32, bitcast=True) >> GUIDE_SHIFT)).to(tl.int32)
            ahead = tl.minimum(k + 1, top)
            k = tl.where((k < top) & (tl.load(table_ptr + ahead) <= r), ahead, k)
            following = tl.minimum(k + 1, top)
            low = tl.load(table_ptr + k)
            high = tl.load(table_ptr + following)
            q = tl.where(u * (high - low) < r - low, following, k)
            smallest = tl.load(table_ptr)
            # below the smallest level (only without a zero level): -a or +a
            plus = u * (2.0 * smallest) < tl.where(negative, -r, r) + smallest
            crossing = tl.where(plus, 0, sign_bit)
            code = tl.where(r < smallest, crossing, q + tl.where(negative, sign_bit, 0))
        else:  # UNIFORM: 0, 1/s, ..., 1
            x = r * s
            lower = tl.floor(x)
            q = tl.minimum(tl.where(u >= 1.0 - (x - lower), lower + 1.0, lower), s)
            code = q.to(tl.int32) + tl.where(negative, sign_bit, 0)
    code = tl.where(inside, code, 0).to(tl.uint64)
    word = tl.sum(code << (lane * BITS).to(tl.uint64)[None, :], axis=1)  # 8 codes, b bytes
    byte = tl.arange(0, 8)
    at = group[:, None] * BITS + byte[None, :]
    value = (word[:, None] >> (byte * 8).to(tl.uint64)[None, :]) & 0xFF
    tl.store(out_ptr + at, value.to(tl.uint8), mask=(byte[None, :] < BITS) & (at < nbytes))


@triton.jit
def _decode_kernel(
    data_ptr, scale_ptr, table_ptr, out_ptr, n, nbytes, bucket_size, levels, offset,
    BITS: tl.constexpr, MODE: tl.constexpr, GROUPS: tl.constexpr,
):  # fmt: skip
    group = tl.program_id(0).to(tl.int64) * GROUPS + tl.arange(0, GROUPS).to(tl.int64)
    byte = tl.arange(0, 8)
    at = group[:, None] * BITS + byte[None, :]
    packed = tl.load(data_ptr + at, mask=(byte[None, :] < BITS) & (at < nbytes), other=0)
    word = tl.sum(packed.to(tl.uint64) << (byte * 8).to(tl.uint64)[None, :], axis=1)
    lane = tl.arange(0, 8)
    index = group[:, None] * 8 + lane[None, :]
    inside = index < n
    code = ((word[:, None] >> (lane * BITS).to(tl.uint64)[None, :]) & ((1 << BITS) - 1)).to(
        tl.int32
    )
    scale = tl.load(scale_ptr + index // bucket_size, mask=inside, other=0.0)
    if MODE == SIGNED:
        value = (code.to(tl.float32) - offset.to(tl.float32)) * scale
    else:
        sign_bit = 1 << (BITS - 1)
        level = code & (sign_bit - 1)
        if MODE == EXPONENTIAL:
            power = ((level - (levels + 1) + 127) << 23).to(tl.uint32).to(tl.float32, bitcast=True)
            m = tl.where(level > 0, power, 0.0)
        elif MODE == TABLE:
            m = tl.load(table_ptr + level)
        else:
            m = level.to(tl.float32) / levels.to(tl.float32)
        value = tl.where(code >= sign_bit, -m, m) * scale
    tl.store(out_ptr + index, value, mask=inside)


def generator_key(generator: torch.Generator | None, device: torch.device) -> int:
    """Return a 64-bit stream key, advancing ``generator`` without waiting for the device.

    A CUDA generator is keyed by its seed and Philox offset (host-side state), which the
    draw moves on; a CPU one (the interpreter's tests) by one ``randint`` as on CPU.
    """
    if generator is None and device.type == "cuda":
        generator = torch.cuda.default_generators[device.index or torch.cuda.current_device()]
    if generator is not None and generator.device.type == "cuda":
        seed, offset = generator.initial_seed(), generator.get_offset()
        generator.set_offset(offset + 4)  # CUDA Philox offsets move in fours
        return _mix(seed * 0x9E3779B97F4A7C15 + offset)
    return draw_key(generator)


def _mix(z: int) -> int:
    z = (z + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def _signed(key: int) -> int:
    """The key as the int64 Triton passes (the kernel takes its 64 bits as they are)."""
    return key - 2**64 if key >= 2**63 else key


@functools.lru_cache(maxsize=64)
def _device_lookup(table: bytes, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    values, guide = lookup(np.frombuffer(table, np.float32))
    return torch.tensor(values, device=device), torch.tensor(guide, device=device)


def table_lookup(table: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the table and its guide on ``device``, built once per table and device."""
    return _device_lookup(table.detach().float().cpu().numpy().tobytes(), device)


def _grid(numel: int) -> tuple[int]:
    return (triton.cdiv(triton.cdiv(numel, 8), GROUPS),)


def encode(
    flat: torch.Tensor,
    inverse: torch.Tensor,
    *,
    bits: int,
    bucket_size: int,
    levels: int,
    mode: int,
    key: int,
    table: torch.Tensor | None = None,
) -> torch.Tensor:
    """Quantize and pack ``flat`` (any float dtype) given each bucket's ``inverse`` scale."""
    n = flat.numel()
    data = torch.empty(packed_nbytes(n, bits), dtype=torch.uint8, device=flat.device)
    if n == 0:
        return data
    values, guide = table_lookup(table, flat.device) if table is not None else (inverse, inverse)
    _encode_kernel[_grid(n)](
        flat, inverse.float().contiguous(), values, guide, data, n, data.numel(),
        max(bucket_size, 1), levels, _signed(key), BITS=bits, MODE=mode, GROUPS=GROUPS,
    )  # fmt: skip
    return data


def decode(
    data: torch.Tensor,
    scales: torch.Tensor,
    out: torch.Tensor,
    *,
    bits: int,
    bucket_size: int,
    levels: int,
    mode: int,
    offset: int = 0,
    table: torch.Tensor | None = None,
) -> torch.Tensor:
    """Write the ``out.numel()`` values of packed ``data`` into ``out`` (contiguous)."""
    n = out.numel()
    if n == 0:
        return out
    values = table_lookup(table, data.device)[0] if table is not None else scales
    _decode_kernel[_grid(n)](
        data, scales.float().contiguous(), values, out, n, data.numel(), max(bucket_size, 1),
        levels, offset, BITS=bits, MODE=mode, GROUPS=GROUPS,
    )  # fmt: skip
    return out


# --- the backend's operations on CUDA tensors ----------------------------------------------


def bucket_scales(x: torch.Tensor, bucket_size: int, inf_norm: bool) -> torch.Tensor:
    """Return each bucket's ``float32`` scale, by the eager path's own reductions (max of
    ``|x|``, or the L2 norm summed in ``float64``), on views: no padded copy."""
    n = x.numel()
    full = n // bucket_size
    rows = [x[: full * bucket_size].view(full, bucket_size)] if full else []
    if n % bucket_size:
        rows.append(x[full * bucket_size :].view(1, -1))
    if not rows:
        return torch.empty(0, dtype=torch.float32, device=x.device)
    if inf_norm:
        return torch.cat([r.abs().amax(dim=1).float() for r in rows])
    norms = [torch.linalg.vector_norm(r, dim=1, dtype=torch.float64) for r in rows]
    return torch.cat(norms).float()


def _inverse(scales: torch.Tensor) -> torch.Tensor:
    return torch.where(scales > 0, scales.reciprocal(), torch.zeros_like(scales))


def encode_buckets(
    flat: torch.Tensor,
    *,
    bits: int,
    bucket_size: int,
    levels: int,
    exponential: bool,
    inf_norm: bool,
    generator: torch.Generator | None,
    table: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`.cpu.encode_buckets` for a CUDA tensor."""
    x = flat.detach().reshape(-1).contiguous()
    scales = bucket_scales(x, bucket_size, inf_norm)
    data = encode(
        x, _inverse(scales), bits=bits, bucket_size=bucket_size, levels=levels,
        mode=mode_of(exponential, table), key=generator_key(generator, x.device),
        table=table,
    )  # fmt: skip
    return data, scales


def decode_buckets(
    data: torch.Tensor,
    scales: torch.Tensor,
    *,
    bits: int,
    bucket_size: int,
    levels: int,
    exponential: bool,
    numel: int,
    out: torch.Tensor | None = None,
    table: torch.Tensor | None = None,
) -> torch.Tensor:
    """:func:`.cpu.decode_buckets` for CUDA tensors."""
    out = output_f32(out, data, numel)
    mode = mode_of(exponential, table)
    return decode(
        data, scales, out, bits=bits, bucket_size=bucket_size, levels=levels, mode=mode,
        table=table,
    )  # fmt: skip


def max_abs(flat: torch.Tensor) -> torch.Tensor:
    """Return ``flat.abs().amax()`` as a 0-d ``float32`` tensor (0 for an empty one)."""
    if not flat.numel():
        return flat.new_zeros((), dtype=torch.float32)
    return flat.abs().amax().float()


def encode_shared(
    flat: torch.Tensor,
    *,
    bits: int,
    levels: int,
    inverse: torch.Tensor,
    generator: torch.Generator | None,
    exponential: bool = False,
) -> torch.Tensor:
    """:func:`.cpu.encode_shared` for a CUDA tensor."""
    x = flat.detach().reshape(-1).contiguous()
    return encode(
        x, inverse.reshape(1), bits=bits, bucket_size=x.numel(), levels=levels,
        mode=EXPONENTIAL if exponential else SIGNED, key=generator_key(generator, x.device),
    )  # fmt: skip


def decode_shared(
    data: torch.Tensor,
    *,
    bits: int,
    numel: int,
    offset: int,
    step: torch.Tensor,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """:func:`.cpu.decode_shared` for CUDA tensors."""
    out = output_f32(out, data, numel)
    return decode(
        data, step.reshape(1), out, bits=bits, bucket_size=numel, levels=0, mode=SIGNED,
        offset=offset,
    )  # fmt: skip
