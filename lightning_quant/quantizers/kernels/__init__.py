"""Fused codec kernels: two backends behind one interface, chosen once per device type.

* :mod:`.cpu`: Numba kernels, multi-threaded, on CPU tensors;
* :mod:`.gpu`: Triton kernels on CUDA tensors;
* :mod:`.coded`: the CPU kernels with the codes entropy-coded (``coding="entropy"``).

Both take and give the eager path's exact wire layout, and draw the same counter-based
noise (the same key gives the same payload, to the bit, on either device). A backend is a
module with ``encode_buckets``, ``decode_buckets``, ``encode_shared``, ``decode_shared``
and ``max_abs``; :func:`backend` returns the one for a device, or ``None`` where its
compiler is missing (then the codecs run the eager path).

Example::

    from lightning_quant.quantizers import kernels

    fused = kernels.backend(tensor.device)
    if fused is not None:
        data, scales = fused.encode_buckets(tensor, bits=4, bucket_size=512, levels=7,
                                            exponential=False, inf_norm=False, generator=gen)
"""

from __future__ import annotations

import functools
import importlib
import logging
from types import ModuleType

import torch

from lightning_quant.quantizers.kernels.common import (
    draw_key,
    finish_decode,
    output_f32,
    writable_f32,
)

__all__ = [
    "available",
    "backend",
    "draw_key",
    "finish_decode",
    "output_f32",
    "supports",
    "writable_f32",
]

log = logging.getLogger(__name__)

_MODULES = {"cpu": "cpu", "cuda": "gpu"}  # device type -> backend module


@functools.cache
def _backend(device_type: str) -> ModuleType | None:
    name = _MODULES.get(device_type)
    if name is None:
        return None
    try:
        return importlib.import_module(f"{__name__}.{name}")
    except ImportError as error:  # numba or triton missing or broken: the eager path
        log.warning("fused %s codec kernels unavailable (%s); using eager", device_type, error)
        return None


def backend(device: torch.device | str, coding: str = "packed") -> ModuleType | None:
    """Return the fused kernels for tensors on ``device``, or ``None`` (use the eager path).

    Raises:
        ValueError: ``coding="entropy"`` off CPU, or without Numba: the coder has no eager
            path, and no GPU run has proved one yet.
    """
    device_type = torch.device(device).type
    if coding != "entropy":
        return _backend(device_type)
    if device_type != "cpu" or _backend("cpu") is None:
        raise ValueError(
            f"entropy coding runs on CPU tensors with Numba only (got {device_type}): no GPU "
            "run has proved a coder yet; use coding='packed' there"
        )
    return importlib.import_module(f"{__name__}.coded")


def supports(tensor: torch.Tensor) -> bool:
    """Return whether ``tensor`` can go through fused kernels."""
    return backend(tensor.device) is not None


def available() -> bool:
    """Return whether the fused CPU kernels can be used in this process."""
    return backend("cpu") is not None
