"""Numba kernels of the entropy coder: the quantizer's codes, rANS-coded, task by task.

A task is a run of whole quantization buckets (up to :data:`CODED_TASK` elements). Its
encoder quantizes the task into a buffer that stays in cache (the same codes, from the
same noise, as the packed path), counts the symbols, normalizes the counts to a table of
frequencies summing to ``2**SCALE_BITS``, and codes the symbols with two interleaved
byte-wise rANS states (Duda's asymmetric numeral systems, in the form of Giesen's
``rans_byte.h``: 32-bit states, division by a precomputed reciprocal). Its decoder reads
the symbols back and writes each coordinate's value straight into the output.

Symbols are the codes, except that a zero level is one symbol: the sign a zero carries is
dropped (it is random, and decodes to the same value). A task's stream ends where its
states return to their start, which the decoder checks: a corrupted stream, or a table
that does not sum right, is reported, never decoded into garbage or read out of bounds.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from lightning_quant.quantizers.kernels._cpu import _levels, _quantize
from lightning_quant.quantizers.kernels._cpu_bits import uniforms

CODED_TASK = 1 << 18  # elements per coded task, at most: one table and two states each
SCALE_BITS = 14  # frequencies sum to 2**14
_M = np.uint64(1 << SCALE_BITS)
_MASK = np.uint64((1 << SCALE_BITS) - 1)
_L = np.uint64(1 << 23)  # the lower bound of a normalized state
_BYTE = np.uint64(0xFF)
_EIGHT = np.uint64(8)
_THIRTY_TWO = np.uint64(32)
_SCALE = np.uint64(SCALE_BITS)
_FREQ = np.uint64(0xFFFFFF)

# errors a decoding task reports (0: none)
TRUNCATED, BAD_TABLE, BAD_STATE = 1, 2, 3


@njit(cache=True, nogil=True)
def _symbols(codes, m, bits, zero_merge, counts):
    """Map ``codes[:m]`` to symbols in place (a zero level's sign dropped); count them,
    four at a time into four tallies, so that a symbol's repeats (zero's, mostly) do not
    wait on each other's stores."""
    tallies = np.zeros((4, counts.size), np.int64)
    magnitude = np.uint8((1 << (bits - 1)) - 1) if zero_merge else np.uint8(0xFF)
    for j in range(0, m - 3, 4):
        c0, c1, c2, c3 = codes[j], codes[j + 1], codes[j + 2], codes[j + 3]
        c0 = c0 if c0 & magnitude else np.uint8(0)
        c1 = c1 if c1 & magnitude else np.uint8(0)
        c2 = c2 if c2 & magnitude else np.uint8(0)
        c3 = c3 if c3 & magnitude else np.uint8(0)
        codes[j], codes[j + 1], codes[j + 2], codes[j + 3] = c0, c1, c2, c3
        tallies[0, c0] += 1
        tallies[1, c1] += 1
        tallies[2, c2] += 1
        tallies[3, c3] += 1
    for j in range(m - m % 4, m):
        c = codes[j] if codes[j] & magnitude else np.uint8(0)
        codes[j] = c
        tallies[0, c] += 1
    for k in range(counts.size):
        counts[k] = tallies[0, k] + tallies[1, k] + tallies[2, k] + tallies[3, k]


@njit(cache=True, nogil=True)
def _normalize(counts, total, freqs):
    """Frequencies summing to ``2**SCALE_BITS``, at least 1 for every symbol present."""
    m = 1 << SCALE_BITS
    acc = 0
    best = 0
    for k in range(counts.size):
        c = counts[k]
        if c == 0:
            freqs[k] = 0
            continue
        f = max((c * m) // total, 1)
        freqs[k] = f
        acc += f
        if c > counts[best]:
            best = k
    freqs[best] += m - acc
    while freqs[best] < 1:  # rounding up rare symbols overdrew the largest: spread it
        top = 0
        for k in range(freqs.size):
            if freqs[k] > freqs[top]:
                top = k
        freqs[top] -= 1
        freqs[best] += 1


@njit(cache=True, nogil=True)
def _encoder_table(freqs, table):
    """Per symbol, rans_byte.h's ``RansEncSymbol``: ``table[k]`` holds the state bound,
    the reciprocal of the frequency, its shift, the bias and the complement."""
    start = 0
    for k in range(freqs.size):
        f = freqs[k]
        if f > 0:
            table[k, 0] = np.uint64(((1 << 23) >> SCALE_BITS) << 8) * np.uint64(f)
            table[k, 4] = np.uint64((1 << SCALE_BITS) - f)
            if f < 2:
                table[k, 1] = np.uint64(0xFFFFFFFF)
                table[k, 2] = np.uint64(0)
                table[k, 3] = np.uint64(start + (1 << SCALE_BITS) - 1)
            else:
                s = 0
                while f > (1 << s):
                    s += 1
                table[k, 1] = np.uint64(((1 << (s + 31)) + f - 1) // f)
                table[k, 2] = np.uint64(s - 1)
                table[k, 3] = np.uint64(start)
        start += f


@njit(cache=True, nogil=True, inline="always")
def _put(x, k, table, buf, p):
    """Encode symbol ``k`` into state ``x`` (bytes out below ``p``); return ``(x, p)``."""
    limit = table[k, 0]
    while x >= limit:
        p -= 1
        buf[p] = np.uint8(x & _BYTE)
        x >>= _EIGHT
    q = ((x * table[k, 1]) >> _THIRTY_TWO) >> table[k, 2]
    return x + table[k, 3] + q * table[k, 4], p


@njit(cache=True, nogil=True)
def _encode_symbols(symbols, m, table, buf, end):
    """rANS-code ``symbols[:m]`` backwards into ``buf`` ending at ``end``; return
    ``(start, x0, x1)``: the stream is ``buf[start:end]``. Even positions go to state
    ``x0``, odd ones to ``x1``: two independent chains the CPU overlaps."""
    x0 = _L
    x1 = _L
    p = end
    i = m - 1
    if i >= 0 and i & 1 == 0:  # an odd count: the last symbol, alone
        x0, p = _put(x0, symbols[i], table, buf, p)
        i -= 1
    while i > 0:
        x1, p = _put(x1, symbols[i], table, buf, p)
        x0, p = _put(x0, symbols[i - 1], table, buf, p)
        i -= 2
    return p, x0, x1


@njit(cache=True, nogil=True)
def coded_tasks(
    t0, t1, x, size, per_task, inverse, s, mode, lookup, key, bits, zero_merge, scratch,
    stride, lengths, states, freqs,
):  # fmt: skip
    """Quantize and code tasks ``t0 .. t1 - 1`` of ``per_task`` buckets of ``size``, each
    bucket against its ``inverse`` scale. Task ``t`` codes into the end of
    ``scratch[t * stride : (t + 1) * stride]``: ``lengths[t]`` bytes, with its final
    ``states[t]`` and its table ``freqs[t]``."""
    n = x.size
    nb = inverse.size
    span = per_task * size
    codes = np.empty(span + 8, np.uint8)
    noise = np.empty(span, np.float32)
    k_count = 1 << bits
    counts = np.zeros(k_count, np.int64)
    table = np.zeros((k_count, 5), np.uint64)  # per symbol: xmax, rcp, shift, bias, cmpl
    for t in range(t0, t1):
        base = t * span
        end = min(base + span, n)
        m = end - base
        uniforms(key, base, noise[:m])
        for k in range(t * per_task, min((t + 1) * per_task, nb)):
            a = k * size
            b = min(a + size, n)
            run = slice(a - base, b - base)
            _quantize(mode, x[a:b], inverse[k], s, lookup, noise[run], bits, codes[run])
        _symbols(codes, m, bits, zero_merge, counts)
        row = freqs[t]
        _normalize(counts, m, row)
        _encoder_table(row, table)
        start, x0, x1 = _encode_symbols(codes, m, table, scratch, (t + 1) * stride)
        lengths[t] = (t + 1) * stride - start
        states[t, 0] = x0
        states[t, 1] = x1


@njit(cache=True, nogil=True, inline="always")
def _get(x, slots, data, p, end):
    """Decode one symbol from state ``x``, reading bytes from ``data[p:end]``; return
    ``(symbol, x, p)``, with ``p = end + 1`` once the stream has run out."""
    e = slots[x & _MASK]
    x = ((e >> _EIGHT) & _FREQ) * (x >> _SCALE) + (e >> _THIRTY_TWO)
    while x < _L:
        if p >= end:
            return np.uint8(0), _L, end + 1
        x = (x << _EIGHT) | np.uint64(data[p])
        p += 1
    return np.uint8(e & _BYTE), x, p


@njit(cache=True, nogil=True)
def decode_coded_tasks(
    t0, t1, data, offsets, lengths, states, freqs, size, per_task, bits, s, mode, lookup,
    scales, offset, out, errors,
):  # fmt: skip
    """Decode tasks ``t0 .. t1 - 1``: task ``t``'s stream is ``data[offsets[t]:][:lengths[t]]``;
    write every coordinate's value into ``out``; ``errors[t]`` says what was wrong, if
    anything (then its values are not written)."""
    n = out.size
    span = per_task * size
    codes = np.empty(span, np.uint8)
    k_count = 1 << bits
    slots = np.empty(1 << SCALE_BITS, np.uint64)  # symbol | frequency << 8 | offset << 32
    for t in range(t0, t1):
        base = t * span
        m = min(base + span, n) - base
        row = freqs[t]
        total = 0
        for k in range(k_count):
            f = row[k]
            if f < 0 or total + f > (1 << SCALE_BITS):
                total = -1
                break
            for slot in range(total, total + f):
                slots[slot] = np.uint64(k | (f << 8) | ((slot - total) << 32))
            total += f
        if total != (1 << SCALE_BITS):
            errors[t] = BAD_TABLE
            continue
        x0 = np.uint64(states[t, 0])
        x1 = np.uint64(states[t, 1])
        if x0 < _L or x1 < _L or x0 >= (_L << _EIGHT) or x1 >= (_L << _EIGHT):
            errors[t] = BAD_STATE
            continue
        p = offsets[t]
        end = p + lengths[t]
        i = 0
        while i + 1 < m and p <= end:
            codes[i], x0, p = _get(x0, slots, data, p, end)
            codes[i + 1], x1, p = _get(x1, slots, data, p, end)
            i += 2
        if i < m and p <= end:  # an odd count: the last symbol
            codes[i], x0, p = _get(x0, slots, data, p, end)
        if p > end:
            errors[t] = TRUNCATED
            continue
        if x0 != _L or x1 != _L or p != end:
            errors[t] = BAD_STATE
            continue
        a = base
        while a < base + m:
            k = a // size
            b = min((k + 1) * size, base + m)
            _levels(mode, codes[a - base : b - base], bits, s, lookup, scales[k], offset, out[a:b])
            a = b
