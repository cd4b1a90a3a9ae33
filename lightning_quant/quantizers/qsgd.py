"""QSGD and its max-norm variant QSGDinf.

QSGD (Alistarh et al., NeurIPS 2017, https://arxiv.org/abs/1610.02132): each bucket is
scaled by its L2 norm and every coordinate is rounded stochastically to one of the
uniform levels ``{0, 1/s, ..., 1}``. ``bits`` buys ``s = 2**(bits-1) - 1`` levels
(2 bits: ternary, s=1; 4 bits: s=7; 8 bits: s=127). Unbiased, with
``E||Q(v) - v||^2 <= min(d/s^2, sqrt(d)/s) ||v||^2`` for a bucket of ``d`` coordinates.

QSGDinf scales by the bucket's max norm instead (the variant QSGD's experiments ran):
still unbiased, lower variance in practice, no sparsity guarantee.
"""

from __future__ import annotations

from lightning_quant.quantizers.base import register_quantizer
from lightning_quant.quantizers.bucketed import BucketedQuantizer

__all__ = ["QSGD", "QSGDInf"]


@register_quantizer("qsgd")
class QSGD(BucketedQuantizer):
    """QSGD: L2-norm scaling, uniform levels, stochastic rounding, per bucket.

    Example::

        q = get_quantizer("qsgd", bits=4, bucket_size=512)
    """

    norm = "l2"


@register_quantizer("qsgd_inf")
class QSGDInf(BucketedQuantizer):
    """QSGDinf: max-norm scaling, uniform levels, stochastic rounding, per bucket."""

    norm = "inf"
