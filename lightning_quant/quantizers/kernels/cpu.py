"""The CPU backend: the Numba kernels of :mod:`._cpu`, fed flat NumPy views.

The eager codecs in :mod:`~lightning_quant.quantizers.bucketed` and
:mod:`~lightning_quant.quantizers.global_qsgd` make several passes over a tensor and draw
a ``float32`` of ``torch.rand`` per element. Here the same work takes one pass,
multi-threaded, with a counter-based random stream (splitmix64 of the element's index
under a key drawn from the caller's ``torch.Generator``):

* encode: bucket norm, stochastic rounding and bit packing, bucket by bucket in cache;
* decode: unpacking, level values and scaling in one pass.

The payloads are exactly the eager path's layout (same scales, same codes for the same
noise, the same little-endian packing as :func:`lightning_quant.packing.pack`); only the
noise differs, so a payload from either path decodes with either.

Threads: a call uses up to ``torch.get_num_threads()`` threads (the kernels release the
GIL; a tensor stays in the calling thread until each thread would get at least 256K
elements to encode or 1M to decode). The helper pool is per process, so forked
children (DataLoader workers, ``ddp_fork``) are safe; no Numba threading layer is used.

Compilation: the kernels are compiled by Numba on first use and cached on disk
(``cache=True``, beside this file, or in the user's cache directory where the package is
read-only). A cold cache costs several seconds of compilation once per environment (5 s
for qsgd's kernels here, 11 s seen on a busy machine; each DDP rank that finds it cold
compiles too); with the cache warm the first call takes about 0.4 s. The DDP hook's state
runs its codec once when it is bound (``Quantizer.warm_up``), so compilation never lands in
a step's figures.

Importing this module imports Numba; where that fails the codecs use the eager path.
"""

from __future__ import annotations

import functools
import itertools
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from lightning_quant.packing import packed_nbytes
from lightning_quant.quantizers.kernels import _cpu
from lightning_quant.quantizers.kernels import levels as level_sets
from lightning_quant.quantizers.kernels.common import draw_key, output_f32

__all__ = [
    "decode_buckets",
    "decode_shared",
    "encode_buckets",
    "encode_shared",
    "max_abs",
    "uniforms",
]

_pool: ThreadPoolExecutor | None = None
_pool_pid = 0
_pool_lock = threading.Lock()


def uniforms(key: int, start: int, count: int) -> torch.Tensor:
    """Return the kernels' uniform noise for elements ``start .. start + count - 1``."""
    out = torch.empty(count, dtype=torch.float32)
    _cpu.uniforms(_u64(key), start, out.numpy())
    return out


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
    """Quantize a flat CPU tensor bucket by bucket, as ``BucketedQuantizer.encode`` does.

    Args:
        flat: 1-D floating-point CPU tensor (other dtypes are converted to ``float32``).
        bits: wire bits per coordinate, sign included, 2 to 8.
        bucket_size: coordinates per scale.
        levels: positive levels ``s``.
        exponential: NUQSGD's levels ``{0, 2**-s, ..., 1}`` instead of ``{0, 1/s, ..., 1}``.
        inf_norm: scale by the max norm instead of the L2 norm.
        generator: random stream; one 64-bit key is drawn from it.
        table: an ascending ``float32`` table of magnitudes to round between instead
            (code = index); without a zero level, values below its first entry round
            between plus and minus it.

    Returns:
        ``(data, scales)``: packed ``uint8`` codes and one ``float32`` scale per bucket.
    """
    x = as_f32(flat)
    n = x.numel()
    data = torch.empty(packed_nbytes(n, bits), dtype=torch.uint8)
    scales = torch.empty(-(-n // bucket_size), dtype=torch.float32)
    key = draw_key(generator)
    if n == 0:
        return data, scales
    mode, lookup = level_mode(exponential, table)
    xs, out, scale_array = x.numpy(), data.numpy(), scales.numpy()
    fused, tasks = _cpu.task_layout(n, bucket_size)
    common = (bits, bucket_size, levels, mode, lookup, inf_norm, _u64(key), out, scale_array)
    if fused:
        run_tasks(_cpu.fused_tasks, tasks, xs, xs.view("u4"), *common)
        return data, scales
    inverse = bucket_scales(xs, bucket_size, inf_norm, scale_array)
    quantize_packed(xs, bucket_size, inverse, levels, mode, lookup, _u64(key), bits, out)
    return data, scales


def quantize_packed(
    xs: np.ndarray,
    size: int,
    inverse: np.ndarray,
    levels: int,
    mode: int,
    lookup: tuple[np.ndarray, np.ndarray],
    key: np.uint64,
    bits: int,
    out: np.ndarray,
) -> None:
    """Quantize ``xs`` (buckets of ``size``, each against its ``inverse`` scale) into the
    packed codes ``out``."""
    args = (xs, size, inverse, levels, mode, lookup, key, bits, out)
    run_tasks(_cpu.quantize_tasks, -(-xs.size // _cpu.TASK), *args)


def decode_packed(
    raw: np.ndarray,
    bits: int,
    size: int,
    levels: int,
    mode: int,
    lookup: tuple[np.ndarray, np.ndarray],
    scales: np.ndarray,
    offset: int,
    out: np.ndarray,
) -> None:
    """Write the values of the packed codes ``raw`` into ``out`` (all of it): each bucket
    of ``size`` scaled by its entry of ``scales``, lanes shifted by ``offset``."""
    args = (raw, bits, size, levels, mode, lookup, scales, offset, out)
    run_tasks(_cpu.decode_tasks, -(-out.size // _cpu.TASK), *args, grain=32)


def bucket_scales(xs: np.ndarray, size: int, inf_norm: bool, scales: np.ndarray) -> np.ndarray:
    """Fill ``scales`` with each bucket's norm, summed as the packed encoder sums it (whole
    buckets where its tasks are fused, partial norms of pieces otherwise); return their
    inverses."""
    n = xs.size
    inverse = np.empty(scales.size, np.float32)
    if _cpu.task_layout(n, size)[0]:
        run_tasks(_cpu.bucket_norms, scales.size, xs, xs.view("u4"), size, inf_norm, scales,
                  inverse, grain=64)  # fmt: skip
        return inverse
    per_bucket = -(-min(size, n) // _cpu.PIECE)  # pieces of PIECE per bucket
    pieces = scales.size * per_bucket
    partial_squares = np.zeros(pieces, np.float64)
    partial_max = np.zeros(pieces, np.uint32)
    norms = (xs, xs.view("u4"), size, per_bucket, inf_norm, partial_squares, partial_max)
    run_tasks(_cpu.norm_pieces, pieces, *norms, grain=16)
    _cpu.combine_pieces(per_bucket, inf_norm, partial_squares, partial_max, scales, inverse)
    return inverse


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
    """Rebuild ``numel`` ``float32`` values from packed codes and per-bucket scales.

    ``out``, if given, is a contiguous ``float32`` tensor of ``numel`` elements on the
    data's device that receives the values (see :func:`writable_f32`); otherwise a new
    tensor is returned.
    """
    out = output_f32(out, data, numel)
    if numel == 0:
        return out
    _check_packed(data, bits, numel)
    scale_array = as_f32(scales).numpy()
    if scale_array.size < -(-numel // bucket_size):
        raise ValueError(
            f"{numel} values in buckets of {bucket_size} need {-(-numel // bucket_size)} "
            f"scales, got {scale_array.size}"
        )
    mode, lookup = level_mode(exponential, table)
    raw = data.contiguous().numpy()
    decode_packed(raw, bits, bucket_size, levels, mode, lookup, scale_array, 0, out.numpy())
    return out


def max_abs(flat: torch.Tensor) -> torch.Tensor:
    """Return ``flat.abs().amax()`` as a 0-d ``float32`` tensor (NaN wins, then Inf)."""
    x = as_f32(flat)
    if x.numel() == 0:
        return torch.zeros((), dtype=torch.float32)
    bits = x.numpy().view("u4")
    pieces = -(-bits.size // _cpu.PIECE)
    partial = np.zeros(pieces, np.uint32)
    run_tasks(_cpu.max_abs_pieces, pieces, bits, partial, grain=16)
    return torch.from_numpy(partial.max(keepdims=True).view(np.float32)).reshape(())


def encode_shared(
    flat: torch.Tensor,
    *,
    bits: int,
    levels: int,
    inverse: torch.Tensor,
    generator: torch.Generator | None,
    exponential: bool = False,
) -> torch.Tensor:
    """Quantize against one shared scale: Global-QSGD's offset lanes ``level + s``, or
    with ``exponential`` its sign-and-exponent codes (levels ``{0, 2**-s, ..., 1}``).

    Args:
        flat: 1-D floating-point CPU tensor.
        bits: lane width (2, 4 or 8), or code width (2 to 8) with ``exponential``.
        levels: the worker's positive levels ``s_w``, or the exponents' ``s``.
        inverse: ``1 / scale``, a 1-element ``float32`` tensor (0 for a zero scale).
        generator: random stream; one 64-bit key is drawn from it.
        exponential: round to signed powers of two instead of linear lanes.
    """
    x = as_f32(flat)
    data = torch.empty(packed_nbytes(x.numel(), bits), dtype=torch.uint8)
    key = draw_key(generator)
    n = x.numel()
    if n:
        inverses = as_f32(inverse).numpy()[:1]
        mode = level_sets.EXPONENTIAL if exponential else level_sets.SIGNED
        args = (x.numpy(), n, inverses, levels, mode, NO_LOOKUP, _u64(key), bits, data.numpy())
        quantize_packed(*args)
    return data


def decode_shared(
    data: torch.Tensor,
    *,
    bits: int,
    numel: int,
    offset: int,
    step: torch.Tensor,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Global-QSGD: return ``(lane - offset) * step`` for ``numel`` lanes, in ``float32``."""
    out = output_f32(out, data, numel)
    if numel == 0:
        return out
    _check_packed(data, bits, numel)
    steps = as_f32(step.reshape(1)).numpy()
    raw = data.contiguous().numpy()
    decode_packed(raw, bits, numel, 0, level_sets.SIGNED, NO_LOOKUP, steps, offset, out.numpy())
    return out


# the level modes that need no table get this one
NO_LOOKUP = (np.zeros(1, np.float32), np.zeros(1, np.uint8))


def level_mode(
    exponential: bool, table: torch.Tensor | None
) -> tuple[int, tuple[np.ndarray, np.ndarray]]:
    lookup = cached_lookup(table) if table is not None else NO_LOOKUP
    return level_sets.mode_of(exponential, table), lookup


def cached_lookup(table: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Return :func:`.levels.lookup` of ``table``, computed once per table."""
    return _lookup(table.detach().to(torch.float32).cpu().numpy().tobytes())


@functools.lru_cache(maxsize=64)
def _lookup(table: bytes) -> tuple[np.ndarray, np.ndarray]:
    return level_sets.lookup(np.frombuffer(table, np.float32))


def as_f32(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().reshape(-1).to(torch.float32).contiguous()


def _u64(key: int) -> np.uint64:
    return np.uint64(key)


def _check_packed(data: torch.Tensor, bits: int, numel: int) -> None:
    need = packed_nbytes(numel, bits)
    if data.dtype != torch.uint8 or data.dim() != 1 or data.numel() < need:
        raise ValueError(
            f"{numel} codes of {bits} bits need a 1-D uint8 tensor of {need} bytes, "
            f"got {data.dtype} {tuple(data.shape)}"
        )


def run_tasks(kernel: Callable[..., None], tasks: int, *args: object, grain: int = 8) -> None:
    """Run ``kernel(t0, t1, *args)`` over tasks ``0 .. tasks - 1``, spread over threads.

    The kernels release the GIL, so plain threads run them in parallel: this thread and
    up to ``torch.get_num_threads() - 1`` pool threads take chunks of tasks until none is
    left (two chunks per thread, so a thread that gets descheduled holds up little).
    Each thread gets at least ``grain`` tasks: waking a pool thread costs some 50 us, the
    time to encode about 64K elements. The pool is per process, so a forked child builds
    its own.
    """
    threads = min(torch.get_num_threads(), os.cpu_count() or 1, tasks // grain)
    if threads < 2:
        kernel(0, tasks, *args)
        return
    chunks = min(tasks, 2 * threads)
    counter = itertools.count()

    def work() -> None:
        while (chunk := next(counter)) < chunks:
            kernel(chunk * tasks // chunks, (chunk + 1) * tasks // chunks, *args)

    helpers = [_thread_pool().submit(work) for _ in range(threads - 1)]
    work()
    for helper in helpers:
        helper.result()


def _thread_pool() -> ThreadPoolExecutor:
    global _pool, _pool_pid
    with _pool_lock:
        if _pool is None or _pool_pid != os.getpid():
            _pool = ThreadPoolExecutor(os.cpu_count() or 1, thread_name_prefix="lq-codec")
            _pool_pid = os.getpid()
        return _pool
