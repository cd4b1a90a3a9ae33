"""Error feedback's contraction: the factor that scales a payload before it is sent.

Error feedback covers both stages, as DeepSpeed's compressed allreduce does: every rank
keeps a residual of its own encoding of the whole bucket, and the owner of a shard keeps
a second residual of its re-encoding of the mean. Over ``T`` steps the sum of the outputs
then differs from ``T`` times the true mean by exactly the residuals left at the end
(``- mean_i e1_i - e2``). That identity holds whatever the residuals' size; they stay
bounded only if the compressor is contractive, ``||C(v) - v||^2 <= (1 - delta) ||v||^2``
(Stich and Karimireddy 2019; Richtarik et al., EF21, 2021). An unbiased quantizer whose
variance exceeds the input's energy (``b > 1``: QSGD at 4 bits on buckets of 512 has
``b`` up to 3.2, about 1.6 measured) is not, and its residual grows geometrically: 4-bit
QSGD's reached 100x the gradient in 30 steps, and SGD with momentum diverged. So with
error feedback every payload is contracted before it is sent (``Quantizer.contract``): on
each quantization bucket the scale keeps its factor 1 where the residual left is
within ``RESIDUAL_BOUND = 3`` times the norm of the step's own gradient there (the
worker's gradient; the decoded mean, for the owner), takes the largest factor in
``[0, 1]`` that keeps it there otherwise, and the least-squares factor (error
``||v||^2 sin^2(theta) < ||v||^2``) where none does; at no cost in bytes. Residuals then
stay within 3x the gradient, or near ``sqrt(b)`` times it where even the best factor
contracts less (ternary QSGD on buckets of 512, ``b ~ 17``: about 4x). The largest
factor rather than the least-squares one because error feedback delays what it holds
back: with SGD and momentum 0.9, two least-squares stages in series diverged on a small
byte-level GPT, where these end within 5% of fp32 DDP (and on a 6x384 GPT-2 8.6% above
it: ``benchmarks/README.md``).
"""

from __future__ import annotations

import torch

__all__ = ["RESIDUAL_BOUND", "fit_factors", "row_sums"]

# Error feedback's bound: a contracted payload leaves at most this many times the norm of
# the step's own gradient as residual, on each scale's elements, where it can
# (Quantizer.contract). Larger keeps payloads less biased (less delay), smaller holds less.
RESIDUAL_BOUND = 3.0


def fit_factors(
    target: torch.Tensor,
    decoded: torch.Tensor,
    unit: int,
    allowed: torch.Tensor | None = None,
) -> torch.Tensor:
    """Return, per run of ``unit`` elements, the factor ``a`` in ``[0, 1]`` that scales
    ``decoded`` for error feedback.

    With ``allowed`` (an error energy per run) it is the largest ``a <= 1`` whose error
    ``||target - a decoded||^2`` stays within it (1 where ``decoded`` already does), or the
    least-squares factor where none does. Without, the least-squares factor
    ``<target, decoded> / ||decoded||^2``, clamped.

    A run that decodes to zeros, or holds non-finite values, keeps the factor 1 (NaN and
    Inf reach the loss scaler unchanged).
    """
    products = torch.stack([target * decoded, decoded * decoded, target * target])
    dot, energy, norm = row_sums(products, unit)
    factors = dot / energy
    if allowed is not None:
        # the larger root of a^2 ||d||^2 - 2 a <t, d> + ||t||^2 - allowed = 0, if any
        discriminant = dot * dot - energy * (norm - allowed)
        reachable = discriminant >= 0
        factors = torch.where(reachable, (dot + discriminant.clamp(min=0).sqrt()) / energy, factors)
    factors = factors.clamp_(0.0, 1.0)
    unchanged = ~torch.isfinite(dot) | ~torch.isfinite(energy) | (energy == 0)
    return factors.masked_fill_(unchanged, 1.0)


def row_sums(values: torch.Tensor, unit: int) -> torch.Tensor:
    """Sum the last dimension of ``values`` in runs of ``unit`` (the last run may be short)."""
    numel = values.shape[-1]
    rows = -(-numel // unit)
    padded = torch.nn.functional.pad(values, (0, rows * unit - numel))
    return padded.view(*values.shape[:-1], rows, unit).sum(-1)
