"""Entropy-coded payloads on CPU: the codes of :mod:`.cpu`'s quantizers, rANS-coded.

Layout of a coded payload's ``data`` (the scales travel before it, as for packed codes):

* payloads whose packed codes would take under :data:`MIN_CODED_BYTES` are the packed
  codes, with nothing added (a header would cost more than coding saves);
* otherwise byte 0 is the format and bytes 1-4 a CRC-32 of the scales and of everything
  after it: format ``0``, then the packed codes (coding did not pay: the payload is the
  packed one plus 5 bytes, at most 0.5% more), or ``1``, then one header per task
  (``u32`` stream bytes, two ``u32`` final states, ``2**bits`` ``u16`` frequencies) and
  the tasks' streams, in task order (:mod:`._cpu_rans`).

Tasks are runs of whole buckets, up to ``CODED_TASK`` elements each, so a decoder knows
their number from the payload's element count and bucket size; they are coded and decoded
in parallel. The checksum, then every length, table and state, are checked before a value
is written: a payload cut short or corrupted raises ``ValueError``, and the streams are
never read out of bounds whatever their bytes.
"""

from __future__ import annotations

import zlib

import numpy as np
import torch

from lightning_quant.packing import packed_nbytes
from lightning_quant.quantizers.kernels import _cpu_rans
from lightning_quant.quantizers.kernels import levels as level_sets
from lightning_quant.quantizers.kernels.common import draw_key, output_f32
from lightning_quant.quantizers.kernels.cpu import (
    NO_LOOKUP,
    as_f32,
    bucket_scales,
    decode_packed,
    level_mode,
    quantize_packed,
    run_tasks,
)

__all__ = [
    "MIN_CODED_BYTES",
    "check_seal",
    "coded_applies",
    "header_bytes",
    "task_layout",
    "seal",
    "shared_size",
    "decode",
    "decode_buckets",
    "decode_shared",
    "encode",
    "encode_buckets",
    "encode_shared",
]

MIN_CODED_BYTES = 1024  # packed codes below this go as they are: a header would not pay
PACKED, RANS = 0, 1
PREFIX = 5  # the format byte and the CRC-32
_ERRORS = {
    _cpu_rans.TRUNCATED: "a stream ends before its symbols do",
    _cpu_rans.BAD_TABLE: "a frequency table does not sum to 2**14",
    _cpu_rans.BAD_STATE: "a stream does not end where its states say",
}


def coded_applies(numel: int, bits: int) -> bool:
    """Whether a payload of ``numel`` codes of ``bits`` is entropy-coded (has a header)."""
    return packed_nbytes(numel, bits) >= MIN_CODED_BYTES


def task_layout(numel: int, size: int) -> tuple[int, int]:
    """``(buckets per task, tasks)`` of a coded payload of buckets of ``size``."""
    per_task = max(1, _cpu_rans.CODED_TASK // size)
    buckets = -(-numel // size)
    return per_task, -(-buckets // per_task)


def header_bytes(tasks: int, bits: int) -> int:
    """Bytes of a rANS-coded payload's data that are not its streams."""
    return PREFIX + tasks * (12 + 2 * (1 << bits))


def seal(data: np.ndarray, scales: np.ndarray) -> None:
    """Write into a coded payload's ``data`` the CRC-32 of its ``scales`` and of what
    follows the checksum. Called where the payload is made and where it goes on the wire:
    error feedback rescales a payload's scales between the two."""
    data[1:PREFIX] = np.frombuffer(_crc(data, scales).to_bytes(4, "little"), np.uint8)


def check_seal(data: np.ndarray, scales: np.ndarray, numel: int, size: int, bits: int) -> None:
    """Raise ``ValueError`` unless a coded payload's checksum matches its scales and data
    (the bytes its header accounts for; padding after them is not its own).

    ``size`` is the payload's bucket size (a shared scale's: :func:`shared_size`).
    """
    expected = _expected_bytes(data, numel, size, bits)
    if _crc(data[:expected], scales) != int.from_bytes(data[1:PREFIX].tobytes(), "little"):
        raise ValueError("corrupted entropy-coded payload: its checksum does not match")


def shared_size(numel: int) -> int:
    """The buckets a payload of one shared scale is cut into (they only cut its tasks)."""
    return max(1, min(numel, _cpu_rans.CODED_TASK))


def _expected_bytes(data: np.ndarray, numel: int, size: int, bits: int) -> int:
    """The bytes a coded payload's header accounts for; raise if it holds fewer."""
    if data.size < PREFIX or data[0] not in (PACKED, RANS):
        raise ValueError("corrupted entropy-coded payload: no format byte and checksum")
    if data[0] == PACKED:
        expected: int | None = packed_nbytes(numel, bits) + PREFIX
    else:
        expected = _size(data, task_layout(numel, size)[1], bits)
    if expected is None or data.size < expected:
        raise ValueError(f"an entropy-coded payload of {data.size} bytes is cut short")
    return expected


def _crc(data: np.ndarray, scales: np.ndarray) -> int:
    return zlib.crc32(data[PREFIX:].tobytes(), zlib.crc32(scales.tobytes()))


def encode(
    x: np.ndarray,
    size: int,
    inverse: np.ndarray,
    *,
    levels: int,
    mode: int,
    lookup: tuple[np.ndarray, np.ndarray],
    key: np.uint64,
    bits: int,
    zero_merge: bool,
) -> np.ndarray:
    """Quantize ``x`` (buckets of ``size``, each against its ``inverse``) and code it;
    return the payload's data: the packed codes alone where they are too few to code
    (:func:`coded_applies`), else with the format byte and room for the checksum that
    :func:`seal` writes."""
    n = x.size
    packed = packed_nbytes(n, bits)
    if not coded_applies(n, bits):
        out = np.empty(packed, np.uint8)
        if n:
            quantize_packed(x, size, inverse, levels, mode, lookup, key, bits, out)
        return out
    per_task, tasks = task_layout(n, size)
    span = per_task * size
    stride = 2 * span + 16  # at most two bytes a symbol, and slack
    scratch = np.empty(tasks * stride, np.uint8)
    lengths = np.zeros(tasks, np.int64)
    states = np.zeros((tasks, 2), np.uint64)
    freqs = np.zeros((tasks, 1 << bits), np.int64)
    run_tasks(
        _cpu_rans.coded_tasks, tasks, x, size, per_task, inverse, levels, mode, lookup, key,
        bits, zero_merge, scratch, stride, lengths, states, freqs, grain=1,
    )  # fmt: skip
    total = header_bytes(tasks, bits) + int(lengths.sum())
    if total > packed + PREFIX:  # coding did not pay: the packed codes, flagged
        out = np.empty(packed + PREFIX, np.uint8)
        quantize_packed(x, size, inverse, levels, mode, lookup, key, bits, out[PREFIX:])
        out[0] = PACKED
        return out
    out = np.empty(total, np.uint8)
    header = np.zeros(tasks, dtype=_task_header(bits))
    header["length"] = lengths
    header["states"] = states
    header["freqs"] = freqs
    end = header_bytes(tasks, bits)
    out[PREFIX:end] = header.view(np.uint8)
    for t in range(tasks):
        stream = scratch[(t + 1) * stride - lengths[t] : (t + 1) * stride]
        out[end : end + stream.size] = stream
        end += stream.size
    out[0] = RANS
    return out


def decode(
    data: np.ndarray,
    scales: np.ndarray,
    size: int,
    *,
    numel: int,
    levels: int,
    mode: int,
    lookup: tuple[np.ndarray, np.ndarray],
    bits: int,
    offset: int,
    out: np.ndarray,
) -> None:
    """Write the values of a payload's ``data`` (as :func:`encode` made it) into ``out``
    (``numel`` of them).

    Raises:
        ValueError: the payload is cut short, or corrupted (it says where).
    """
    if not coded_applies(numel, bits):
        if data.size < packed_nbytes(numel, bits):
            raise ValueError(f"a payload of {numel} codes of {bits} bits is cut short")
        decode_packed(data, bits, size, levels, mode, lookup, scales, offset, out)
        return
    per_task, tasks = task_layout(numel, size)
    data = data[: _expected_bytes(data, numel, size, bits)]  # what follows is padding
    if data[0] == PACKED:
        decode_packed(data[PREFIX:], bits, size, levels, mode, lookup, scales, offset, out)
        return
    start = header_bytes(tasks, bits)
    header = np.frombuffer(data[PREFIX:start].tobytes(), dtype=_task_header(bits))
    lengths = header["length"].astype(np.int64)
    offsets = start + np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    if tasks and int(offsets[-1] + lengths[-1]) > data.size:
        raise ValueError("an entropy-coded payload is cut short: its streams run past it")
    errors = np.zeros(tasks, np.int64)
    run_tasks(
        _cpu_rans.decode_coded_tasks, tasks, data, offsets, lengths,
        header["states"].astype(np.uint64), header["freqs"].astype(np.int64), size,
        per_task, bits, levels, mode, lookup, scales, offset, out, errors, grain=1,
    )  # fmt: skip
    if errors.any():
        task = int(np.flatnonzero(errors)[0])
        raise ValueError(
            f"corrupted entropy-coded payload: task {task} of {tasks}: {_ERRORS[int(errors[task])]}"
        )


# --- the backend's operations, as cpu.py's for packed codes ------------------------------


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
    """:func:`.cpu.encode_buckets`, the codes entropy-coded: ``(data, scales)``.

    The same generator state gives the same codes as the packed encoder (one key is
    drawn), so the payloads decode to the same values.
    """
    x = as_f32(flat)
    n = x.numel()
    scales = torch.empty(-(-n // bucket_size), dtype=torch.float32)
    key = np.uint64(draw_key(generator))
    mode, lookup = level_mode(exponential, table)
    xs = x.numpy()
    inverse = bucket_scales(xs, bucket_size, inf_norm, scales.numpy())
    zero_merge = mode != level_sets.TABLE or float(lookup[0][0]) == 0.0
    data = encode(
        xs, bucket_size, inverse, levels=levels, mode=mode, lookup=lookup, key=key, bits=bits,
        zero_merge=zero_merge,
    )  # fmt: skip
    return torch.from_numpy(data), scales


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
    """:func:`.cpu.decode_buckets` of an entropy-coded payload."""
    out = output_f32(out, data, numel)
    if numel:
        mode, lookup = level_mode(exponential, table)
        values = as_f32(scales).numpy()
        decode(
            data.contiguous().numpy(), values, bucket_size, numel=numel, levels=levels,
            mode=mode, lookup=lookup, bits=bits, offset=0, out=out.numpy(),
        )  # fmt: skip
    return out


def encode_shared(
    flat: torch.Tensor,
    *,
    bits: int,
    levels: int,
    inverse: torch.Tensor,
    generator: torch.Generator | None,
    exponential: bool = False,
) -> torch.Tensor:
    """:func:`.cpu.encode_shared`, the codes entropy-coded (zero is one symbol for the
    exponential codes; Global-QSGD's offset lanes carry no sign)."""
    x = as_f32(flat)
    n = x.numel()
    key = np.uint64(draw_key(generator))
    size = shared_size(n)
    inverses = np.full(-(-n // size), float(inverse.reshape(-1)[0]), np.float32)
    mode = level_sets.EXPONENTIAL if exponential else level_sets.SIGNED
    data = encode(
        x.numpy(), size, inverses, levels=levels, mode=mode, lookup=NO_LOOKUP, key=key,
        bits=bits, zero_merge=exponential,
    )  # fmt: skip
    return torch.from_numpy(data)


def decode_shared(
    data: torch.Tensor,
    *,
    bits: int,
    numel: int,
    offset: int,
    step: torch.Tensor,
    out: torch.Tensor | None = None,
    levels: int = 0,
    exponential: bool = False,
) -> torch.Tensor:
    """:func:`.cpu.decode_shared` of an entropy-coded payload (``exponential``: the
    sign-and-exponent codes of ``levels`` exponents, scaled by ``step``)."""
    out = output_f32(out, data, numel)
    if numel:
        size = shared_size(numel)
        steps = np.full(-(-numel // size), float(step.reshape(-1)[0]), np.float32)
        mode = level_sets.EXPONENTIAL if exponential else level_sets.SIGNED
        decode(
            data.contiguous().numpy(), steps, size, numel=numel, levels=levels, mode=mode,
            lookup=NO_LOOKUP, bits=bits, offset=offset, out=out.numpy(),
        )  # fmt: skip
    return out


def _size(data: np.ndarray, tasks: int, bits: int) -> int | None:
    """The bytes a coded payload says it holds, or None if its header is cut short."""
    start = header_bytes(tasks, bits)
    if data.size < start:
        return None
    header = np.frombuffer(data[PREFIX:start].tobytes(), dtype=_task_header(bits))
    return start + int(header["length"].astype(np.int64).sum())


def _task_header(bits: int) -> np.dtype:
    """One task's header: stream bytes, final states, frequencies (little-endian)."""
    return np.dtype([("length", "<u4"), ("states", "<u4", (2,)), ("freqs", "<u2", (1 << bits,))])
