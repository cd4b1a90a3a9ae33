"""What a step's compression cost in accuracy, per bucket, agreed by every rank.

Each rank measures, whenever it encodes (it decodes its own payload once, or reuses the
decoding error feedback does anyway):

* ``encode_sq = ||Q(t) - t||^2`` and ``input_sq = ||t||^2``, ``t`` what was encoded: the
  scheme's relative variance on this bucket is ``sum encode_sq / sum input_sq`` over ranks
  (the figure ``rel_variance``, the one ``max_rel_variance`` bounds);
* its share of the error of the mean, ``mean_sq``. Paths combine it as the two-stage
  algebra of :mod:`lightning_quant.hooks.paths` says: the mean of ``n`` independent
  roundings errs by ``(1/n^2) sum_i ||e_i||^2`` in expectation, ``e_i = Q(t_i) - g_i``
  against the rank's fresh gradient ``g_i`` (so error feedback's carried residual counts),
  and the re-encoding of a shard's mean adds the owner's own ``||e||^2``.

At the end of a step the sums go to every rank in one all-reduce, launched after every
other collective of the step. The mean ``m^`` the hook returns is identical on every
rank, so ``||m^||^2`` needs no exchange, and the step's relative error of the mean is::

    rel_error = sum mean_sq / (||m^||^2 - sum mean_sq)

(``E||m^||^2 = ||m||^2 + E||m^ - m||^2`` for an unbiased scheme). The same all-reduce
carries each rank's fitted link, so every rank sees the same averaged one.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from lightning_quant.hooks.link import LinkModel

__all__ = ["BucketError", "ErrorSums", "StepErrors", "relative", "step_errors"]

_FIELDS = 3  # encode_sq, input_sq, mean_sq


class ErrorSums:
    """One bucket's error sums on this rank (a ``float32`` tensor on its device)."""

    def __init__(self) -> None:
        self.sums: torch.Tensor | None = None

    def add(
        self, decoded: torch.Tensor, target: torch.Tensor, fresh: torch.Tensor, weight: float
    ) -> None:
        """Add an encoding: ``decoded`` from ``target``, whose fresh gradient is ``fresh``;
        ``weight`` is its share in the error of the mean (``1/n^2`` for a rank's own)."""
        t, f = target.reshape(-1).float(), fresh.reshape(-1).float()
        error = decoded - t
        error_sq = error.dot(error)
        # without error feedback what was encoded is the fresh gradient: one difference
        off = decoded - f if f.data_ptr() != t.data_ptr() else None
        off_sq = error_sq if off is None else off.dot(off)
        row = torch.stack([error_sq, t.dot(t), off_sq * weight])
        self.sums = row if self.sums is None else self.sums + row


@dataclass(frozen=True)
class BucketError:
    """One bucket's agreed errors in one step."""

    encode_sq: float  # sum over ranks of ||Q(t) - t||^2
    input_sq: float  # sum over ranks of ||t||^2
    mean_sq: float  # the estimate of ||m^ - m||^2
    output_sq: float  # ||m^||^2

    @property
    def encoded(self) -> bool:
        return self.input_sq > 0

    @property
    def rel_variance(self) -> float:
        """``sum encode_sq / sum input_sq`` (0 where nothing was encoded)."""
        return self.encode_sq / self.input_sq if self.input_sq > 0 else 0.0

    @property
    def rel_error(self) -> float:
        return relative(self.mean_sq, self.output_sq)


def relative(error_sq: float, output_sq: float) -> float:
    """Return ``error / (output - error)``: the error relative to the exact mean's energy."""
    exact = output_sq - error_sq
    if not math.isfinite(exact) or not math.isfinite(error_sq):
        return math.nan
    return error_sq / exact if exact > 0 else (math.inf if error_sq > 0 else 0.0)


class StepErrors:
    """The error sums of one step's buckets on this rank, and ``||m^||^2`` of each."""

    def __init__(self) -> None:
        self._sums: dict[int, ErrorSums] = {}
        self._output_sq: dict[int, float] = {}
        self._exact: dict[int, tuple[float, float]] = {}
        self._lock = threading.Lock()

    @property
    def encoded(self) -> bool:
        """Whether any bucket of the step was encoded (not all sent as fp32)."""
        return bool(self._sums)

    def bucket(self, index: int) -> ErrorSums:
        """Return bucket ``index``'s sums, for its paths to add to."""
        return self._sums.setdefault(index, ErrorSums())

    def output(self, index: int, mean: torch.Tensor) -> None:
        """Record ``||m^||^2`` of bucket ``index``'s result (from a future's callback)."""
        m = mean.detach().reshape(-1).float()
        value = float(m.dot(m))
        with self._lock:
            self._output_sq[index] = value

    def exact(self, index: int, mean: torch.Tensor, exact_mean: torch.Tensor) -> None:
        """Record the exact error of bucket ``index``, against an fp32 all-reduce's mean."""
        m = mean.detach().reshape(-1).float()
        error = float((m - exact_mean.reshape(-1)).pow(2).sum())
        with self._lock:
            self._exact[index] = (error, float(exact_mean.pow(2).sum()))

    def shared(self, buckets: int, link: LinkModel | None, device: torch.device) -> torch.Tensor:
        """Return what this rank shares at the step's end: its ``(buckets, 3)`` sums (zero
        where a bucket encoded nothing), then its link fit ``[alpha, 1/beta, 1]``."""
        table = torch.zeros(buckets, _FIELDS, dtype=torch.float32, device=device)
        for index, sums in self._sums.items():
            if sums.sums is not None and index < buckets:
                table[index] = sums.sums.to(device)
        fit = [link.latency_s, 1 / link.bytes_per_s, 1.0] if link else [0.0, 0.0, 0.0]
        return torch.cat([table.reshape(-1), torch.tensor(fit, device=device)])

    def agreed(self, summed: torch.Tensor) -> tuple[dict[int, BucketError], LinkModel | None]:
        """Return each bucket's errors and the ranks' mean link from the summed
        :meth:`shared` of every rank."""
        values = summed.double().cpu().tolist()
        latency, inverse, fitted = values[-3:]
        link = LinkModel(max(latency / fitted, 0.0), fitted / inverse) if fitted else None
        with self._lock:
            output = dict(self._output_sq)
        rows = [values[i : i + _FIELDS] for i in range(0, len(values) - 3, _FIELDS)]
        buckets = {
            index: BucketError(encode_sq, input_sq, mean_sq, output.get(index, 0.0))
            for index, (encode_sq, input_sq, mean_sq) in enumerate(rows)
        }
        return buckets, link

    def exact_rel_error(self) -> float | None:
        """Return the step's error against fp32 all-reduces, where they were run."""
        with self._lock:
            exact = list(self._exact.values())
        if not exact:
            return None
        error = sum(e for e, _ in exact)
        energy = sum(m for _, m in exact)
        return error / energy if energy > 0 else 0.0


def step_errors(buckets: Mapping[int, BucketError]) -> tuple[float, float]:
    """Return a step's ``(rel_error, rel_variance)`` from its buckets' errors."""
    every = buckets.values()
    energy = sum(b.input_sq for b in every)
    rel_variance = sum(b.encode_sq for b in every) / energy if energy > 0 else 0.0
    return relative(sum(b.mean_sq for b in every), sum(b.output_sq for b in every)), rel_variance
