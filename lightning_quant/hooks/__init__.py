"""DDP communication hooks that send quantized gradients, and the state they share.

Usable with plain PyTorch DDP::

    state, hook = make_comm_hook("qsgd", bits=4, collective="auto", seed=0)
    ddp_model.register_comm_hook(state.bind(ddp_model), hook)
    ...
    state.compression_stats()  # the last step's bytes and seconds

A scheme declares the collectives it supports (``Quantizer.collectives``); the state
picks one for the world size (``collective="auto"``: all-gather at 2 ranks, the
re-quantizing reduce-scatter from 3, Global-QSGD's single ``uint8`` all-reduce while its
lanes hold the ranks), and :mod:`~lightning_quant.hooks.paths` has one path per
collective. Parameters under ``min_compress_numel`` elements, and 1-D ones unless
``compress_1d``, go uncompressed, as one fp32 all-reduce per bucket; so does everything
before ``start_step``.
Every collective is launched from a hook body, in an order that depends only on the
bucket sequence (:mod:`~lightning_quant.hooks.pipeline`); PyTorch's own PowerSGD hook
breaks that rule and aborts gloo with several buckets.
"""

from typing import Any

from torch.distributed import ProcessGroup

from lightning_quant.hooks import auto_scheme, peers  # noqa: F401 - register their schemes
from lightning_quant.hooks.hook import quantized_hook
from lightning_quant.hooks.schemes import (
    Scheme,
    available_schemes,
    get_scheme,
    scheme_settings,
    split_settings,
)
from lightning_quant.hooks.state import DEFAULT_MIN_COMPRESS_NUMEL, QuantizedCommState
from lightning_quant.hooks.stats import STEP_METRICS, StepStats
from lightning_quant.quantizers import Quantizer

__all__ = [
    "DEFAULT_MIN_COMPRESS_NUMEL",
    "STEP_METRICS",
    "QuantizedCommState",
    "Scheme",
    "StepStats",
    "available_schemes",
    "get_scheme",
    "make_comm_hook",
    "quantized_hook",
    "scheme_settings",
]


def make_comm_hook(
    scheme: str | Quantizer | Scheme,
    process_group: ProcessGroup | None = None,
    **settings: Any,
) -> tuple[QuantizedCommState, Any]:
    """Return ``(state, hook)`` for a scheme: a registry name, a ``Quantizer``, a ``Scheme``.

    Args:
        scheme: a name in :func:`available_schemes` (every quantizer, and PyTorch's hooks
            ``"torch_fp16"``, ``"torch_powersgd"``, ``"torch_bf16"``), a :class:`Quantizer`
            or a :class:`Scheme`.
        process_group: the group to reduce over.
        **settings: :class:`QuantizedCommState` keywords (``error_feedback``, ``seed``,
            ``min_compress_numel``, ``compress_1d``, ``start_step``, ``collective``,
            ``ranks_per_node``, ``hierarchical``, ``mesh``, ``intra_dtype``) and the
            scheme's own settings (:func:`scheme_settings`: ``bits``, ``bucket_size``,
            ``coding``..., PowerSGD's ``matrix_approximation_rank``).

    Example::

        state, hook = make_comm_hook("nuqsgd", bits=4, seed=0)
        ddp_model.register_comm_hook(state.bind(ddp_model), hook)
    """
    state_settings, own = split_settings(settings)
    return get_scheme(scheme, **own).make_hook(process_group, **state_settings)
