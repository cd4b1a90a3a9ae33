"""What one optimizer step's communication cost this rank, by name."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from lightning_quant.figures import STEP_METRICS, compression_ratio

__all__ = ["METRIC_PREFIX", "STEP_METRICS", "StepStats"]

METRIC_PREFIX = "comm/"  # loggers receive the step figures as comm/<name>


@dataclass
class StepStats:
    """Communication figures of one optimizer step, on this rank.

    Attributes:
        raw_bytes: the gradient's bytes (the buckets as DDP hands them over);
            ``uncompressed_bytes`` of them went at full precision (small and 1-D
            tensors, warm-up steps), the rest compressed.
        payload_bytes: bytes this rank handed to collectives (its encoded payloads).
        sent_bytes: bytes this rank transmitted, from the algorithms of the collectives it
            launched (:mod:`lightning_quant.collectives`); ``inter_node_bytes`` of them
            went to other nodes.
        collectives / rounds: collectives launched, and their sequential message rounds.
        encode_s / decode_s: codec time; on CUDA, measured on the device between CUDA
            events and read when the figures are (:meth:`as_dict`), so the hook never waits.
        rel_error / rel_variance / exact_rel_error / fallbacks: the step's compression
            error (:mod:`~lightning_quant.hooks.errors`), filled in when the ranks' error
            sums arrive (``QuantizedCommState.compression_stats``).
    """

    step: int = 0
    buckets: int = 0
    raw_bytes: int = 0
    uncompressed_bytes: int = 0  # of raw_bytes, what went at full precision
    payload_bytes: int = 0
    sent_bytes: int = 0
    inter_node_bytes: int = 0
    collectives: int = 0
    rounds: int = 0
    encode_s: float = 0.0
    communicate_s: float = 0.0
    decode_s: float = 0.0
    step_s: float = 0.0  # the whole optimizer step, timed by the strategy (0 in plain DDP)
    bits: int = 0
    rel_error: float = 0.0  # estimated ||m^ - m||^2 / ||m||^2 (hooks/errors.py)
    rel_variance: float = 0.0  # measured ||Q(v) - v||^2 / ||v||^2 of what was encoded
    exact_rel_error: float = 0.0  # against an fp32 all-reduce, with check_error
    fallbacks: int = 0  # buckets sent wider or as fp32 (NaN/Inf, or over budget)
    link_bytes_per_s: float = 0.0  # the ranks' mean fitted bandwidth (0: not fitted yet)
    world_size: int = 1
    # future callbacks run on gloo/NCCL threads, possibly two at once
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    # (counter, start, end) CUDA events not yet read
    pending: list[tuple[str, torch.cuda.Event, torch.cuda.Event]] = field(
        default_factory=list, repr=False
    )

    @property
    def compression_ratio(self) -> float:
        """:func:`~lightning_quant.figures.compression_ratio` of this step (0 when nothing
        went)."""
        return compression_ratio(self.raw_bytes, self.sent_bytes, self.world_size) or 0.0

    def add(self, **amounts: float) -> None:
        """Add to counters from any thread."""
        with self.lock:
            for name, value in amounts.items():
                setattr(self, name, getattr(self, name) + value)

    @contextmanager
    def timed(self, name: str, device: torch.device | None = None) -> Iterator[None]:
        """Add the seconds the block takes to the counter ``name``: on a CUDA ``device``,
        the time its work takes on the current stream; elsewhere, on the host."""
        if device is not None and device.type == "cuda":
            start, end = (torch.cuda.Event(enable_timing=True) for _ in range(2))
            start.record()
            try:
                yield
            finally:
                end.record()
                with self.lock:
                    self.pending.append((name, start, end))
            return
        began = time.perf_counter()
        try:
            yield
        finally:
            self.add(**{name: time.perf_counter() - began})

    def settle(self) -> None:
        """Add the device times recorded so far, waiting for their work to finish."""
        with self.lock:
            pending, self.pending = self.pending, []
        for name, start, end in pending:
            end.synchronize()
            self.add(**{name: start.elapsed_time(end) / 1e3})

    @property
    def intra_node_bytes(self) -> int:
        return self.sent_bytes - self.inter_node_bytes

    def as_dict(self) -> dict[str, float]:
        """Return ``step`` and every figure of :data:`~lightning_quant.figures.STEP_METRICS`."""
        self.settle()
        return {"step": self.step, **{name: getattr(self, name) for name in STEP_METRICS}}
