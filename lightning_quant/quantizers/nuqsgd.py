"""NUQSGD: nonuniform (exponential) levels.

Ramezani-Kebrya et al., JMLR 22(114) 2021, https://arxiv.org/abs/1908.06077. Each bucket
is scaled by its L2 norm as in QSGD, but the magnitude levels are powers of a base ``m``;
rounding between the two neighbouring levels ``l_j <= r <= l_{j+1}`` goes up with
probability ``(r - l_j) / (l_{j+1} - l_j)``, which is unbiased. Two layouts of the
``2**(bits-1)`` magnitude codes (the top bit is the sign):

* ``levels="paper"``: ``{0, m**s, ..., m, 1}`` with ``s = 2**(bits-1) - 2``, zero
  included (the paper's level set; at ``m = 1/2`` the kernels compute it directly);
* ``levels="reference"``: ``{m**(K-1), ..., m, 1}`` with ``K = 2**(bits-1)``, no zero
  level, as the authors' code (``get_exp_levels`` and ``qdqL2`` in their
  ``nuq/quantize.py``) lays them out: a value below ``a = m**(K-1)`` rounds between
  ``-a`` and ``+a``.

The base matters more than the layout: levels that halve at every step reach ``2**-126``
at 8 bits, far below anything a bucket holds, and leave too few where the values are.
The default base is chosen per width (:data:`DEFAULT_BASES`), measured so that the
variance is at most QSGD's at every width from 2 to 8 bits on Gaussian and heavy-tailed
vectors (``python -m benchmarks.codec --nuqsgd-bases``): the authors' own choices (their
comments: 0.1 at 2 bits, 0.5 at 4, 0.9 at 6, 0.95 at 8), completed for the widths
between.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from lightning_quant.quantizers.base import register_quantizer
from lightning_quant.quantizers.bucketed import BucketConfig, BucketedQuantizer

__all__ = ["DEFAULT_BASES", "LAYOUTS", "NUQSGD", "NUQSGDConfig", "magnitudes", "variance_bound"]

LAYOUTS = ("paper", "reference")
MAX_BASE = 0.99
# The base of the levels per width and layout; see the module docstring and
# benchmarks/README.md for the variance they give.
DEFAULT_BASES: dict[str, dict[int, float]] = {
    "paper": {2: 0.5, 3: 0.2, 4: 0.5, 5: 0.7, 6: 0.85, 7: 0.9, 8: 0.95},
    "reference": {2: 0.1, 3: 0.3, 4: 0.5, 5: 0.7, 6: 0.85, 7: 0.9, 8: 0.95},
}


@dataclass(frozen=True)
class NUQSGDConfig(BucketConfig):
    """Settings of NUQSGD.

    Args:
        bits: wire bits per coordinate, sign included, 2 to 8.
        bucket_size: coordinates sharing one scale.
        levels: ``"paper"`` (zero included) or ``"reference"`` (the authors' code).
        base: the levels' ratio ``m`` in ``(0, 0.99]`` (the kernels find a level in one
            step for levels at least 1% apart); ``None`` takes the width's default
            (:data:`DEFAULT_BASES`).
    """

    levels: str = "paper"
    base: float | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.levels not in LAYOUTS:
            raise ValueError(f"levels must be one of {LAYOUTS}, got {self.levels!r}")
        if self.base is not None and not 0.0 < self.base <= MAX_BASE:
            raise ValueError(f"base must lie in (0, {MAX_BASE}], got {self.base!r}")

    def base_for(self, bits: int) -> float:
        return self.base if self.base is not None else DEFAULT_BASES[self.levels][bits]


def magnitudes(bits: int, base: float, levels: str = "paper") -> torch.Tensor:
    """Return the ascending ``float32`` magnitudes of a layout at ``bits`` and ``base``."""
    codes = 2 ** (bits - 1)
    if levels == "paper":
        powers = [base**j for j in range(codes - 2, -1, -1)]
        return torch.tensor([0.0, *powers], dtype=torch.float32)
    return torch.tensor([base**j for j in range(codes - 1, -1, -1)], dtype=torch.float32)


def variance_bound(bits: int, base: float, levels: str, d: int) -> float:
    """Bound ``E||Q(v) - v||^2 / ||v||^2`` for buckets of ``d`` (derived here, see below).

    Between neighbouring levels ``l < r < h`` the rounding variance ``(h - r)(r - l)`` is at
    most ``r**2 (h - l)**2 / (4 l h)``, which is ``r**2 (1 - m)**2 / (4 m)`` for levels a
    ratio ``m`` apart. Below the smallest level ``a``: with a zero level ``r (a - r)``,
    summing to at most ``min(d a**2 / 4, sqrt(d) a)`` as ``||r||_2 = 1``; without one
    (rounding to ``+-a``) ``a**2 - r**2``, at most ``d a**2``. At ``m = 1/2`` in the
    paper's layout this is the paper's ``1/8 + min(d / 2**(2s+2), sqrt(d) / 2**s)``.
    """
    table = magnitudes(bits, base, levels)
    geometric = (1 - base) ** 2 / (4 * base) if table.numel() > 2 or levels != "paper" else 0.0
    if levels == "paper":
        a = float(table[1])
        return geometric + min(d * a * a / 4, math.sqrt(d) * a)
    a = float(table[0])
    return geometric + d * a * a


@register_quantizer("nuqsgd")
class NUQSGD(BucketedQuantizer):
    """NUQSGD: L2-norm scaling, exponential levels of a base per width, per bucket.

    Example::

        q = get_quantizer("nuqsgd", bits=4, bucket_size=512)
        q = get_quantizer("nuqsgd", bits=8, levels="reference", base=0.95)
    """

    config_class = NUQSGDConfig
    config: NUQSGDConfig
    norm = "l2"

    @property
    def exponential(self) -> bool:
        """The paper's layout at base 1/2 (at the configured width): computed in the kernels
        without a table."""
        return self.config.levels == "paper" and self.config.base_for(self.config.bits) == 0.5

    def levels(self, bits: int) -> int:
        return 2 ** (bits - 1) - (2 if self.config.levels == "paper" else 1)

    def table(self, bits: int) -> torch.Tensor | None:
        if self.exponential and bits == self.config.bits:
            return None
        return magnitudes(bits, self.config.base_for(bits), self.config.levels)
