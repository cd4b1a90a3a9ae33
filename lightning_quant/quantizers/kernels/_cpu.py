"""Numba kernels behind :mod:`lightning_quant.quantizers.kernels` (imported lazily).

Everything here works on flat NumPy views of contiguous CPU tensors. Each element goes
through the eager path's ``float32`` operations in the same order, so the two paths differ
only in where the uniform noise comes from:

* noise: the counter-based stream of :mod:`._cpu_bits`, indexed by the element's position
  in the tensor, so the payload does not depend on how the work is split over threads;
* codes: the magnitude level index with the sign in the top bit (Global-QSGD: the offset
  lane ``level + s``);
* packing: :mod:`._cpu_bits`'s, as ``packing.pack``.

Work is cut into tasks of whole buckets that start on a byte boundary, so a thread takes a
bucket's norm, quantizes the bucket while it is still in cache and packs it: one pass
over the input. Buckets too large for a task take two passes (partial norms of pieces,
then quantize). Every driver runs a range of tasks and releases the GIL; the caller
spreads ranges over threads. Inner loops run over slices (no index arithmetic that could
be negative), which lets LLVM vectorize them.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from lightning_quant.quantizers.kernels._cpu_bits import (
    _ABS_MASK,
    _bits_f32,
    _f32_bits,
    _pack,
    _unpack,
    uniforms,
)
from lightning_quant.quantizers.kernels.levels import EXPONENTIAL, GUIDE_SHIFT, TABLE, UNIFORM

TASK = 1 << 15  # elements per task: a task's codes stay in L1/L2
PIECE = 1 << 15  # elements per partial norm of a bucket larger than a task


@njit(fastmath={"reassoc"}, cache=True, nogil=True)
def _sum_squares(xs):
    """Sum ``xs**2`` in ``float64``: squares are exact, only the order of the sum is free."""
    acc = 0.0
    for j in range(xs.size):
        v = np.float64(xs[j])
        acc += v * v
    return acc


@njit(cache=True, nogil=True)
def _max_abs_bits(bits):
    """Max of ``|x|`` taken on bit patterns: NaN beats Inf beats every finite value."""
    m = np.uint32(0)
    for j in range(bits.size):
        m = max(m, np.uint32(bits[j] & _ABS_MASK))
    return m


@njit(cache=True, nogil=True, inline="always")
def _inverse(scale):
    return np.float32(1.0) / scale if scale > np.float32(0.0) else np.float32(0.0)


# --- quantize one run of one bucket into codes --------------------------------------------


@njit(cache=True, nogil=True)
def _quantize_uniform(xs, inv, s, noise, sign_bit, codes):
    one, zero = np.float32(1.0), np.float32(0.0)
    sf, top = np.float32(s), np.int32(s)
    for j in range(xs.size):
        v = xs[j]
        r = abs(v) * inv
        r = one if r > one else r
        r = r if r == r else zero
        x = r * sf
        lower = np.int32(x)  # >= 0, so truncation is floor
        # up with probability frac(x): x + u >= lower + 1, without rounding x + u
        q = lower + np.int32(1) if noise[j] >= one - (x - np.float32(lower)) else lower
        q = q if q < top else top
        codes[j] = np.uint8(q + sign_bit if v < zero else q)


@njit(cache=True, nogil=True)
def _quantize_exponential(xs, inv, s, noise, sign_bit, codes):
    one, zero = np.float32(1.0), np.float32(0.0)
    top = np.int32(s + 1)  # level j > 0 is 2**(j - top); level 0 is 0
    smallest = np.float32(2.0**-s)
    for j in range(xs.size):
        v = xs[j]
        r = abs(v) * inv
        r = one if r > one else r
        r = r if r == r else zero
        # The lower neighbour: level floor(log2 r) + top, whose value 2**floor(log2 r) is r
        # with its mantissa cleared; below level 1 it is level 0 (value 0). The gap to the
        # upper neighbour equals the lower value (2**-s above level 0).
        bits = _f32_bits(r)
        lower = np.int32(bits >> np.uint32(23)) - np.int32(127) + top
        low = _bits_f32(bits & np.uint32(0x7F800000))
        base = low if lower > 0 else zero
        gap = low if lower > 0 else smallest
        lower = lower if lower > 0 else np.int32(0)
        q = lower + np.int32(1) if noise[j] * gap < r - base else lower
        q = q if q < top else top
        codes[j] = np.uint8(q + sign_bit if v < zero else q)


@njit(cache=True, nogil=True)
def _quantize_signed(xs, inv, s, noise, codes):
    one, zero = np.float32(1.0), np.float32(0.0)
    sf = np.float32(s)
    for j in range(xs.size):
        r = xs[j] * inv
        r = r if r == r else zero
        r = one if r > one else r
        r = -one if r < -one else r
        x = r * sf
        lower = np.floor(x)
        q = lower + one if noise[j] >= one - (x - lower) else lower  # as the uniform levels
        codes[j] = np.uint8(np.int32(q + sf))


@njit(cache=True, nogil=True)
def _quantize_table(xs, inv, lookup, noise, sign_bit, codes):
    """Round ``|x| * inv`` between its neighbours in the ascending ``table`` of magnitudes.

    With a zero level (``table[0] == 0``) the sign is the value's. Without one, a value
    below ``a = table[0]`` rounds between ``-a`` and ``+a`` (up with probability
    ``(v + a) / (2a)`` for the signed ratio ``v``): unbiased across zero.
    """
    table, guide = lookup
    one, zero, two = np.float32(1.0), np.float32(0.0), np.float32(2.0)
    top = np.int32(table.size - 1)
    smallest = table[0]
    for j in range(xs.size):
        v = xs[j]
        r = abs(v) * inv
        r = one if r > one else r
        r = r if r == r else zero
        k = np.int32(guide[_f32_bits(r) >> np.uint32(GUIDE_SHIFT)])
        k = k + np.int32(1) if k < top and table[k + 1] <= r else k
        following = k + np.int32(1) if k < top else k
        low, high = table[k], table[following]
        q = following if noise[j] * (high - low) < r - low else k
        code = q + sign_bit if v < zero else q
        # Below the smallest level (only without a zero level): -a or +a.
        signed = -r if v < zero else r
        plus = noise[j] * (two * smallest) < signed + smallest
        crossing = np.int32(0) if plus else sign_bit
        codes[j] = np.uint8(crossing if r < smallest else code)


@njit(cache=True, nogil=True, inline="always")
def _quantize(mode, xs, inv, s, lookup, noise, bits, codes):
    """Round the run ``xs`` of one bucket into ``codes``, with one uniform of ``noise`` each."""
    sign_bit = np.int32(1 << (bits - 1))
    if mode == UNIFORM:
        _quantize_uniform(xs, inv, s, noise, sign_bit, codes)
    elif mode == EXPONENTIAL:
        _quantize_exponential(xs, inv, s, noise, sign_bit, codes)
    elif mode == TABLE:
        _quantize_table(xs, inv, lookup, noise, sign_bit, codes)
    else:
        _quantize_signed(xs, inv, s, noise, codes)


# --- packing ------------------------------------------------------------------------------


# --- drivers: each runs a range of tasks, so that callers can spread tasks over threads ---


def task_layout(n, size):
    """Return ``(fused, tasks)`` for ``n`` elements in buckets of ``size``.

    Fused tasks hold whole byte-aligned runs of buckets (norm, quantize and pack in one
    pass); otherwise tasks are ``TASK`` elements and the norms come first, in pieces.
    """
    nb = -(-n // size)
    group = 8 // math.gcd(size, 8)  # buckets per byte-aligned unit
    unit = group * size
    if unit > TASK:
        return False, -(-n // TASK)
    units = -(-nb // group)
    return True, -(-units // (TASK // unit))


@njit(cache=True, nogil=True)
def fused_tasks(t0, t1, x, xbits, bits, size, s, mode, lookup, inf_norm, key, out, scales):
    """Encode fused tasks ``t0 .. t1 - 1``: fill their ``scales`` and packed ``out`` bytes.

    ``xbits`` is ``x`` viewed as ``uint32`` (for the max norm); ``mode`` picks the levels.
    """
    n = x.size
    nb = scales.size
    group = 8 // math.gcd(size, 8)
    unit = group * size
    per_task = TASK // unit
    codes = np.empty(per_task * unit + 8, np.uint8)
    noise = np.empty(per_task * unit, np.float32)
    for t in range(t0, t1):
        base = t * per_task * unit
        end = min(base + per_task * unit, n)
        uniforms(key, base, noise[: end - base])  # the whole task's noise in one go
        for k in range(t * per_task * group, min((t + 1) * per_task * group, nb)):
            a = k * size
            b = min(a + size, n)
            scale = _bucket_norm(x, xbits, a, b, inf_norm)
            scales[k] = scale
            run = slice(a - base, b - base)
            _quantize(mode, x[a:b], _inverse(scale), s, lookup, noise[run], bits, codes[run])
        _pack(codes, end - base, bits, out[base * bits // 8 : (end * bits + 7) // 8])


@njit(cache=True, nogil=True)
def bucket_norms(k0, k1, x, xbits, size, inf_norm, scales, inverse):
    """Scales (L2 or max norms) of buckets ``k0 .. k1 - 1`` and their inverses, each summed
    over the whole bucket, as the packed path's fused tasks sum them."""
    n = x.size
    for k in range(k0, k1):
        scale = _bucket_norm(x, xbits, k * size, min(k * size + size, n), inf_norm)
        scales[k] = scale
        inverse[k] = _inverse(scale)


@njit(cache=True, nogil=True, inline="always")
def _bucket_norm(x, xbits, a, b, inf_norm):
    """The scale of ``x[a:b]``: its max norm, or its L2 norm summed in one pass."""
    if inf_norm:
        return _bits_f32(_max_abs_bits(xbits[a:b]))
    return np.float32(math.sqrt(_sum_squares(x[a:b])))


@njit(cache=True, nogil=True)
def norm_pieces(p0, p1, x, xbits, size, pieces, inf_norm, partial_squares, partial_max):
    """Partial norms of pieces ``p0 .. p1 - 1``: each bucket is cut into ``pieces`` runs
    of ``PIECE`` (the last ones may be short or empty)."""
    n = x.size
    for p in range(p0, p1):
        a = (p // pieces) * size + (p % pieces) * PIECE
        b = min(a + PIECE, (p // pieces + 1) * size, n)
        if a < b:
            if inf_norm:
                partial_max[p] = _max_abs_bits(xbits[a:b])
            else:
                partial_squares[p] = _sum_squares(x[a:b])


@njit(cache=True, nogil=True)
def max_abs_pieces(p0, p1, xbits, partial_max):
    """``partial_max[p]``: the max of ``|x|``'s bit patterns over piece ``p`` of ``PIECE``."""
    for p in range(p0, p1):
        partial_max[p] = _max_abs_bits(xbits[p * PIECE : (p + 1) * PIECE])


@njit(cache=True, nogil=True)
def combine_pieces(pieces, inf_norm, partial_squares, partial_max, scales, inverse):
    """Fill ``scales`` and their inverses from the partial norms, piece by piece in order."""
    for k in range(scales.size):
        if inf_norm:
            scale = _bits_f32(_max_abs_bits(partial_max[k * pieces : (k + 1) * pieces]))
        else:
            acc = 0.0
            for j in range(k * pieces, (k + 1) * pieces):
                acc += partial_squares[j]
            scale = np.float32(math.sqrt(acc))
        scales[k] = scale
        inverse[k] = _inverse(scale)


@njit(cache=True, nogil=True)
def quantize_tasks(t0, t1, x, size, inverse, s, mode, lookup, key, bits, out):
    """Quantize and pack tasks ``t0 .. t1 - 1`` of ``TASK`` elements, given the inverses."""
    n = x.size
    codes = np.empty(TASK + 8, np.uint8)
    noise = np.empty(TASK, np.float32)
    for t in range(t0, t1):
        base = t * TASK
        end = min(base + TASK, n)
        uniforms(key, base, noise[: end - base])
        a = base
        while a < end:
            k = a // size
            b = min((k + 1) * size, end)
            run = slice(a - base, b - base)
            _quantize(mode, x[a:b], inverse[k], s, lookup, noise[run], bits, codes[run])
            a = b
        _pack(codes, end - base, bits, out[base * bits // 8 : (end * bits + 7) // 8])


@njit(cache=True, nogil=True)
def decode_tasks(t0, t1, data, bits, size, s, mode, lookup, scales, offset, out):
    """Write ``level(code i) * scales[i // size]`` for the elements of tasks ``t0 .. t1 - 1``.

    ``mode`` UNIFORM: ``±(index / s)``; EXPONENTIAL: ``±2**(index - s - 1)`` (0 for index
    0); TABLE: ``±table[index]``; SIGNED: ``code - offset``. Each in ``float32``, as the
    eager decoder computes it.
    """
    n = out.size
    codes = np.empty(TASK + 8, np.uint8)
    for t in range(t0, t1):
        base = t * TASK
        end = min(base + TASK, n)
        _unpack(data[base * bits // 8 : (end * bits + 7) // 8], bits, codes)
        a = base
        while a < end:
            k = a // size
            b = min((k + 1) * size, end)
            _levels(mode, codes[a - base : b - base], bits, s, lookup, scales[k], offset, out[a:b])
            a = b


# --- decode: level values -----------------------------------------------------------------


@njit(cache=True, nogil=True)
def _levels(mode, codes, bits, s, lookup, scale, offset, ys):
    mask = np.int32((1 << (bits - 1)) - 1)
    sign_bit = np.int32(1 << (bits - 1))
    if mode == UNIFORM:
        sf = np.float32(s)
        for j in range(codes.size):
            c = np.int32(codes[j])
            m = np.float32(c & mask) / sf
            ys[j] = (-m if c >= sign_bit else m) * scale
    elif mode == TABLE:
        table = lookup[0]
        for j in range(codes.size):
            c = np.int32(codes[j])
            m = table[c & mask]
            ys[j] = (-m if c >= sign_bit else m) * scale
    elif mode == EXPONENTIAL:
        top = np.int32(s + 1)
        zero = np.float32(0.0)
        for j in range(codes.size):
            c = np.int32(codes[j])
            index = c & mask
            m = _bits_f32(np.uint32((index - top + np.int32(127)) << np.int32(23)))
            m = m if index > 0 else zero
            ys[j] = (-m if c >= sign_bit else m) * scale
    else:
        off = np.float32(offset)
        for j in range(codes.size):
            ys[j] = (np.float32(codes[j]) - off) * scale
