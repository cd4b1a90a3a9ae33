"""Error feedback's contraction: the factor that scales a payload before it is sent.

Error feedback needs a contractive compressor (``||C(v) - v|| < ||v||``); an unbiased
quantizer whose variance exceeds its input's energy is not. :meth:`Quantizer.contract
<lightning_quant.quantizers.base.Quantizer.contract>` scales each of a payload's scales by
a factor from :func:`fit_factors`; :mod:`lightning_quant.hooks.paths` explains the choice.
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
