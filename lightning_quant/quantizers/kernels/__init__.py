"""Fused CPU kernels for the per-bucket codecs and Global-QSGD.

The eager codecs in :mod:`~lightning_quant.quantizers.bucketed` and
:mod:`~lightning_quant.quantizers.global_qsgd` make several passes over a tensor and draw
a ``float32`` of ``torch.rand`` per element. On CPU these kernels do the same work in one
pass, multi-threaded, with a counter-based random stream (splitmix64 of the element's
index under a key drawn from the caller's ``torch.Generator``):

* encode: bucket norm, stochastic rounding and bit packing, bucket by bucket in cache;
* decode: unpacking, level values and scaling in one pass.

The payloads are exactly the eager path's layout (same scales, same codes for the same
noise, the same little-endian packing as :func:`lightning_quant.packing.pack`); only the
noise differs, so a payload from either path decodes with either.

The stream key is one ``int64`` drawn from the generator (the eager path draws a float
per element), so the same generator state gives the same payload on either path's terms,
and the payload does not depend on the number of threads.

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
a step's figures. Where Numba cannot be imported the codecs use the eager path
(:func:`available`).

Example::

    from lightning_quant.quantizers import kernels

    if kernels.available():
        data, scales = kernels.encode_buckets(flat, bits=4, bucket_size=512, levels=7,
                                              exponential=False, inf_norm=False, generator=gen)
"""

from __future__ import annotations

import functools
import importlib
import itertools
import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from types import ModuleType

import numpy as np
import torch

from lightning_quant.packing import packed_nbytes
from lightning_quant.quantizers.base import Payload
from lightning_quant.quantizers.kernels import levels as level_sets

__all__ = [
    "available",
    "decode_buckets",
    "decode_shared",
    "draw_key",
    "encode_buckets",
    "encode_shared",
    "finish_decode",
    "output_f32",
    "max_abs",
    "supports",
    "uniforms",
    "writable_f32",
]

log = logging.getLogger(__name__)

_GAMMA = 0x9E3779B97F4A7C15
_MASK64 = 2**64 - 1

_module: ModuleType | None = None
_tried = False
_load_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None
_pool_pid = 0


def _kernels() -> ModuleType | None:
    global _module, _tried
    if not _tried:
        with _load_lock:
            if not _tried:
                try:
                    module = importlib.import_module(f"{__name__}._cpu")
                except ImportError as error:  # numba missing or broken: eager path
                    log.warning("fused CPU codec kernels unavailable (%s); using eager", error)
                    module = None
                _module, _tried = module, True
    return _module


def available() -> bool:
    """Return whether the fused CPU kernels can be used in this process."""
    return _kernels() is not None


@functools.cache
def gpu_kernels() -> ModuleType | None:
    """Return the Triton kernels for CUDA tensors, or ``None`` where Triton is missing."""
    try:
        return importlib.import_module(f"{__name__}._gpu")
    except ImportError as error:
        log.warning("fused CUDA codec kernels unavailable (%s); using eager", error)
        return None


def supports(tensor: torch.Tensor) -> bool:
    """Return whether ``tensor`` can go through fused kernels: the Numba ones on CPU, the
    Triton ones on CUDA."""
    if tensor.device.type == "cuda":
        return gpu_kernels() is not None
    return tensor.device.type == "cpu" and available()


def _triton_for(tensor: torch.Tensor) -> ModuleType | None:
    """The Triton kernels if ``tensor`` is on a GPU (the facade's functions defer to them)."""
    return gpu_kernels() if tensor.device.type != "cpu" else None


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


def uniforms(key: int, start: int, count: int) -> torch.Tensor:
    """Return the kernels' uniform noise for elements ``start .. start + count - 1``."""
    module = _require()
    out = torch.empty(count, dtype=torch.float32)
    module.uniforms(_u64(key), start, out.numpy())
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
    if gpu := _triton_for(flat):
        return gpu.encode_buckets(  # type: ignore[no-any-return]
            flat, bits=bits, bucket_size=bucket_size, levels=levels, exponential=exponential,
            inf_norm=inf_norm, generator=generator, table=table,
        )  # fmt: skip
    module = _require()
    x = _as_f32(flat)
    n = x.numel()
    data = torch.empty(packed_nbytes(n, bits), dtype=torch.uint8)
    scales = torch.empty(-(-n // bucket_size), dtype=torch.float32)
    key = draw_key(generator)
    if n == 0:
        return data, scales
    mode, lookup = _mode(exponential, table)
    xs, out, scale_array = x.numpy(), data.numpy(), scales.numpy()
    fused, tasks = module.task_layout(n, bucket_size)
    common = (bits, bucket_size, levels, mode, lookup, inf_norm, _u64(key), out, scale_array)
    if fused:
        _run(module.fused_tasks, tasks, xs, xs.view("u4"), *common)
        return data, scales
    per_bucket = -(-min(bucket_size, n) // module.PIECE)  # pieces of PIECE per bucket
    pieces = scale_array.size * per_bucket
    partial_squares = np.zeros(pieces, np.float64)
    partial_max = np.zeros(pieces, np.uint32)
    inverse = np.empty(scale_array.size, np.float32)
    norms = (xs, xs.view("u4"), bucket_size, per_bucket, inf_norm, partial_squares, partial_max)
    _run(module.norm_pieces, pieces, *norms, grain=16)
    module.combine_pieces(per_bucket, inf_norm, partial_squares, partial_max, scale_array, inverse)
    quantize = (xs, bucket_size, inverse, levels, mode, lookup, _u64(key), bits, out)
    _run(module.quantize_tasks, -(-n // module.TASK), *quantize)
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
    """Rebuild ``numel`` ``float32`` values from packed codes and per-bucket scales.

    ``out``, if given, is a contiguous ``float32`` tensor of ``numel`` elements on the
    data's device that receives the values (see :func:`writable_f32`); otherwise a new
    tensor is returned.
    """
    if gpu := _triton_for(data):
        return gpu.decode_buckets(  # type: ignore[no-any-return]
            data, scales, bits=bits, bucket_size=bucket_size, levels=levels,
            exponential=exponential, numel=numel, out=out, table=table,
        )  # fmt: skip
    module = _require()
    out = output_f32(out, data, numel)
    if numel == 0:
        return out
    _check_packed(data, bits, numel)
    scale_array = _as_f32(scales).numpy()
    if scale_array.size < -(-numel // bucket_size):
        raise ValueError(
            f"{numel} values in buckets of {bucket_size} need {-(-numel // bucket_size)} "
            f"scales, got {scale_array.size}"
        )
    mode, lookup = _mode(exponential, table)
    args = (
        data.contiguous().numpy(), bits, bucket_size, levels, mode, lookup, scale_array, 0,
        out.numpy(),
    )  # fmt: skip
    _run(module.decode_tasks, -(-numel // module.TASK), *args, grain=32)
    return out


def max_abs(flat: torch.Tensor) -> torch.Tensor:
    """Return ``flat.abs().amax()`` as a 0-d ``float32`` tensor (NaN wins, then Inf)."""
    if flat.device.type != "cpu":
        return (
            flat.abs().amax().float() if flat.numel() else flat.new_zeros((), dtype=torch.float32)
        )
    module = _require()
    x = _as_f32(flat)
    if x.numel() == 0:
        return torch.zeros((), dtype=torch.float32)
    bits = x.numpy().view("u4")
    pieces = -(-bits.size // module.PIECE)
    partial = np.zeros(pieces, np.uint32)
    _run(module.max_abs_pieces, pieces, bits, partial, grain=16)
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
    if gpu := _triton_for(flat):
        return gpu.encode_shared(  # type: ignore[no-any-return]
            flat, bits=bits, levels=levels, inverse=inverse, generator=generator,
            exponential=exponential,
        )  # fmt: skip
    module = _require()
    x = _as_f32(flat)
    data = torch.empty(packed_nbytes(x.numel(), bits), dtype=torch.uint8)
    key = draw_key(generator)
    n = x.numel()
    if n:
        inverses = _as_f32(inverse).numpy()[:1]
        mode = level_sets.EXPONENTIAL if exponential else level_sets.SIGNED
        args = (x.numpy(), n, inverses, levels, mode, _NO_LOOKUP, _u64(key), bits, data.numpy())
        _run(module.quantize_tasks, -(-n // module.TASK), *args)
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
    if gpu := _triton_for(data):
        return gpu.decode_shared(  # type: ignore[no-any-return]
            data, bits=bits, numel=numel, offset=offset, step=step, out=out
        )
    module = _require()
    out = output_f32(out, data, numel)
    if numel == 0:
        return out
    _check_packed(data, bits, numel)
    steps = _as_f32(step.reshape(1)).numpy()
    args = (
        data.contiguous().numpy(), bits, numel, 0, level_sets.SIGNED, _NO_LOOKUP, steps, offset,
        out.numpy(),
    )  # fmt: skip
    _run(module.decode_tasks, -(-numel // module.TASK), *args, grain=32)
    return out


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


# the level modes that need no table get this one
_NO_LOOKUP = (np.zeros(1, np.float32), np.zeros(1, np.uint8))


def _mode(
    exponential: bool, table: torch.Tensor | None
) -> tuple[int, tuple[np.ndarray, np.ndarray]]:
    if table is not None:
        return level_sets.TABLE, cached_lookup(table)
    return (level_sets.EXPONENTIAL if exponential else level_sets.UNIFORM), _NO_LOOKUP


def cached_lookup(table: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Return :func:`.levels.lookup` of ``table``, computed once per table."""
    return _lookup(table.detach().to(torch.float32).cpu().numpy().tobytes())


@functools.lru_cache(maxsize=64)
def _lookup(table: bytes) -> tuple[np.ndarray, np.ndarray]:
    return level_sets.lookup(np.frombuffer(table, np.float32))


def _require() -> ModuleType:
    module = _kernels()
    if module is None:
        raise RuntimeError("the fused CPU kernels need numba; use the eager path")
    return module


def _as_f32(tensor: torch.Tensor) -> torch.Tensor:
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


def _run(kernel: Callable[..., None], tasks: int, *args: object, grain: int = 8) -> None:
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
    with _load_lock:
        if _pool is None or _pool_pid != os.getpid():
            _pool = ThreadPoolExecutor(os.cpu_count() or 1, thread_name_prefix="lq-codec")
            _pool_pid = os.getpid()
        return _pool
