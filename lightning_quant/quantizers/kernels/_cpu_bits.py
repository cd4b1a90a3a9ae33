"""Bit-level building blocks of the Numba kernels: the noise stream, float bits, packing.

* noise: 24-bit uniforms from a counter-based stream, ``splitmix64(key + (i // 2 + 1) *
  GAMMA)`` for element ``i`` (two elements per hash, see :func:`uniforms`), keyed by one
  64-bit draw from the caller's ``torch.Generator``. Indexed by the element's position in
  the tensor, so the payload does not depend on how the work is split over threads;
* packing: code ``i`` at bits ``[i*b, (i+1)*b)`` of the byte stream, as ``packing.pack``.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

# the kernels also take _ABS_MASK, _f32_bits, _bits_f32, _pack and _unpack from here
__all__ = ["uniforms"]

_GAMMA = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_TO_UNIT = np.float32(2.0**-24)
_ABS_MASK = np.uint32(0x7FFFFFFF)


@intrinsic
def _f32_bits(typingctx, x):
    """Reinterpret a ``float32`` as its ``uint32`` bit pattern."""
    if x != types.float32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))

    return types.uint32(types.float32), codegen


@intrinsic
def _bits_f32(typingctx, x):
    """Reinterpret the low 32 bits of an integer as a ``float32``."""
    if not isinstance(x, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        value = args[0]
        if x.bitwidth > 32:
            value = builder.trunc(value, ir.IntType(32))
        elif x.bitwidth < 32:
            value = builder.zext(value, ir.IntType(32))
        return builder.bitcast(value, ir.FloatType())

    return types.float32(x), codegen


@njit(inline="always")
def _mix(state):
    """splitmix64's finalizer: a bijection of 64-bit words with full avalanche."""
    z = (state ^ (state >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    return z ^ (z >> np.uint64(31))


@njit(inline="always")
def _high(z):
    return np.float32(np.uint32(z >> np.uint64(40))) * _TO_UNIT


@njit(inline="always")
def _low(z):
    return np.float32(np.uint32((z >> np.uint64(8)) & np.uint64(0xFFFFFF))) * _TO_UNIT


@njit(cache=True, nogil=True)
def uniforms(key, start, out):
    """Fill ``out`` with the uniforms of elements ``start, start + 1, ...`` of stream ``key``.

    Element ``i`` takes 24 bits of ``h = splitmix64(key + (i // 2 + 1) * GAMMA)``: the top
    24 for even ``i``, bits 8 to 31 for odd ``i``. One hash serves two elements.
    """
    m = out.size
    head = start & 1  # an odd start takes the low half of the pair it starts inside
    state = key + np.uint64(start >> 1) * _GAMMA
    if head and m:
        state += _GAMMA
        out[0] = _low(_mix(state))
    pairs = (m - head) // 2
    for p in range(pairs):
        state += _GAMMA
        z = _mix(state)
        out[head + 2 * p] = _high(z)
        out[head + 2 * p + 1] = _low(z)
    if head + 2 * pairs < m:
        state += _GAMMA
        out[m - 1] = _high(_mix(state))


@njit(cache=True, nogil=True)
def _pack(codes, m, bits, out):
    """Pack ``codes[:m]`` into ``out`` (``ceil(m * bits / 8)`` bytes).

    ``codes`` must have room for ``m`` rounded up to a multiple of 8; the tail is zeroed.
    """
    padded = (m + 7) // 8 * 8
    codes[m:padded] = 0
    if bits == 8:
        for j in range(out.size):
            out[j] = codes[j]
    elif bits == 4:
        for j in range(out.size):
            out[j] = codes[2 * j] | (codes[2 * j + 1] << np.uint8(4))
    elif bits == 2:
        for j in range(out.size):
            out[j] = (
                codes[4 * j]
                | (codes[4 * j + 1] << np.uint8(2))
                | (codes[4 * j + 2] << np.uint8(4))
                | (codes[4 * j + 3] << np.uint8(6))
            )
    else:
        for g in range(padded // 8):
            word = np.uint64(0)
            for k in range(8):
                word |= np.uint64(codes[8 * g + k]) << np.uint64(bits * k)
            for k in range(min(bits, out.size - g * bits)):
                out[g * bits + k] = np.uint8((word >> np.uint64(8 * k)) & np.uint64(0xFF))


@njit(cache=True, nogil=True)
def _unpack(data, bits, codes):
    """Unpack every code of ``data`` into ``codes`` (room for ``8 * ceil(len / bits)``)."""
    if bits == 8:
        for j in range(data.size):
            codes[j] = data[j]
    elif bits == 4:
        for j in range(data.size):
            byte = data[j]
            codes[2 * j] = byte & np.uint8(0xF)
            codes[2 * j + 1] = byte >> np.uint8(4)
    elif bits == 2:
        for j in range(data.size):
            byte = data[j]
            codes[4 * j] = byte & np.uint8(3)
            codes[4 * j + 1] = (byte >> np.uint8(2)) & np.uint8(3)
            codes[4 * j + 2] = (byte >> np.uint8(4)) & np.uint8(3)
            codes[4 * j + 3] = byte >> np.uint8(6)
    else:
        mask = np.uint64((1 << bits) - 1)
        for g in range((data.size + bits - 1) // bits):
            word = np.uint64(0)
            for k in range(min(bits, data.size - g * bits)):
                word |= np.uint64(data[g * bits + k]) << np.uint64(8 * k)
            for k in range(8):
                codes[8 * g + k] = np.uint8((word >> np.uint64(bits * k)) & mask)
