"""Every figure a run reports, defined once: its name, its unit, how a run sums it up.

A step's figures come from the hook (:class:`~lightning_quant.hooks.stats.StepStats`) and
reach every logger as ``comm/<name>``; a run's summary takes the total or the mean of
some of them, named ``total_<name>`` and ``mean_<name>``. The hook, the logger, the typed
run record and the sweep derive their lists from here, and one test checks the run
store's models, sort fields and comparison against it (``tests/test_figures.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

from lightning_quant.collectives import fp32_allreduce_bytes

__all__ = [
    "RUN_FIGURES",
    "RUN_MEANS",
    "RUN_TOTALS",
    "STEP_FIGURES",
    "STEP_METRICS",
    "Figure",
    "compression_ratio",
]


@dataclass(frozen=True)
class Figure:
    """One figure of a step.

    Attributes:
        name: as the hook reports it (loggers get ``comm/<name>``).
        unit: ``"count"``, ``"bytes"``, ``"s"``, ``"bits"``, ``"ratio"`` or ``"bytes/s"``.
        run: how a run's summary takes it: ``"total"``, ``"mean"``, or ``None``.
    """

    name: str
    unit: str
    run: str | None = None


STEP_FIGURES: tuple[Figure, ...] = (
    Figure("buckets", "count"),
    Figure("raw_bytes", "bytes", "total"),  # the gradient, as DDP hands it over
    Figure("uncompressed_bytes", "bytes"),  # of raw_bytes, what went at full precision
    Figure("payload_bytes", "bytes", "total"),  # what this rank handed to collectives
    Figure("sent_bytes", "bytes", "total"),  # what it transmitted
    Figure("inter_node_bytes", "bytes", "total"),  # of sent_bytes, to other nodes
    Figure("intra_node_bytes", "bytes"),
    Figure("compression_ratio", "ratio"),  # :func:`compression_ratio`
    Figure("collectives", "count"),
    Figure("rounds", "count"),  # sequential message rounds
    Figure("encode_s", "s", "mean"),
    Figure("communicate_s", "s", "mean"),
    Figure("decode_s", "s", "mean"),
    Figure("step_s", "s", "mean"),  # the whole optimizer step (the strategy times it)
    Figure("bits", "bits"),  # this step's width
    Figure("rel_error", "ratio", "mean"),  # estimated ||m^ - m||^2 / ||m||^2 of the mean
    Figure("rel_variance", "ratio", "mean"),  # ||Q(v) - v||^2 / ||v||^2 of what was encoded
    Figure("exact_rel_error", "ratio"),  # the same as rel_error, exact (check_error only)
    Figure("fallbacks", "count", "total"),  # buckets moved wider or to fp32
    Figure("link_bytes_per_s", "bytes/s"),  # the ranks' fitted link bandwidth (hooks/link.py)
)
STEP_METRICS = tuple(figure.name for figure in STEP_FIGURES)
RUN_TOTALS = tuple(figure.name for figure in STEP_FIGURES if figure.run == "total")
RUN_MEANS = tuple(figure.name for figure in STEP_FIGURES if figure.run == "mean")
# a run's summary figures, as the run store keeps them
RUN_FIGURES = (
    "final_loss",
    "final_accuracy",
    *(f"total_{name}" for name in RUN_TOTALS),
    "compression_ratio",
    *(f"mean_{name}" for name in RUN_MEANS),
    "predicted_step_s",  # a performance model's, where one predicts the run
    "steps",  # optimizer steps that reported figures
    "wall_s",  # seconds from the run's start to its end
)


def compression_ratio(raw_bytes: float, sent_bytes: float, world_size: int) -> float | None:
    """Return what plain fp32 DDP sends per rank at ``world_size`` for ``raw_bytes`` of
    gradient (a ring all-reduce), over ``sent_bytes``; ``None`` when nothing was sent."""
    if not sent_bytes:
        return None
    return fp32_allreduce_bytes(raw_bytes, world_size) / sent_bytes
