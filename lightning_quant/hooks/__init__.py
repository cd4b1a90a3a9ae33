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

from lightning_quant.hooks.hook import quantized_hook
from lightning_quant.hooks.peers import PEERS, Peer
from lightning_quant.hooks.state import DEFAULT_MIN_COMPRESS_NUMEL, QuantizedCommState
from lightning_quant.hooks.stats import STEP_METRICS, StepStats
from lightning_quant.quantizers import Quantizer

__all__ = [
    "DEFAULT_MIN_COMPRESS_NUMEL",
    "PEERS",
    "STEP_METRICS",
    "Peer",
    "QuantizedCommState",
    "StepStats",
    "make_comm_hook",
    "quantized_hook",
]


def make_comm_hook(
    scheme: str | Quantizer,
    process_group: ProcessGroup | None = None,
    powersgd_rank: int = 4,
    **settings: Any,
) -> tuple[QuantizedCommState, Any]:
    """Return ``(state, hook)`` for a registry scheme, a ``Quantizer``, or a PyTorch peer.

    Args:
        scheme: a quantizer registry name, a :class:`Quantizer`, or a name in
            :data:`PEERS` (``"torch_fp16"``, ``"torch_powersgd"``).
        process_group: the group to reduce over.
        powersgd_rank: PowerSGD's matrix approximation rank.
        **settings: :class:`QuantizedCommState` keywords (``error_feedback``, ``seed``,
            ``min_compress_numel``, ``compress_1d``, ``start_step``, ``collective``,
            ``ranks_per_node``, ``hierarchical``, ``mesh``, ``intra_dtype``) and quantizer
            settings (``bits``, ``bucket_size``...).

    Example::

        state, hook = make_comm_hook("nuqsgd", bits=4, seed=0)
        ddp_model.register_comm_hook(state.bind(ddp_model), hook)
    """
    if isinstance(scheme, str) and scheme in PEERS:
        peer = PEERS[scheme]
        kept = {k: v for k, v in settings.items() if k == "ranks_per_node"}  # for counting
        state = QuantizedCommState(peer.counted_as, process_group, **kept)
        if scheme == "torch_powersgd":
            from torch.distributed.algorithms.ddp_comm_hooks.powerSGD_hook import PowerSGDState

            state.powersgd = PowerSGDState(
                process_group=process_group,
                matrix_approximation_rank=powersgd_rank,
                start_powerSGD_iter=2,
                random_seed=settings.get("seed", 0),
            )
        return state, peer.hook
    return QuantizedCommState(scheme, process_group, **settings), quantized_hook
