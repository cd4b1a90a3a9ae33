"""NUQSGD: nonuniform (exponential) levels.

Ramezani-Kebrya et al., JMLR 22(114) 2021, https://arxiv.org/abs/1908.06077. Each bucket
is scaled by its L2 norm as in QSGD, but the levels are ``{0, 2**-s, ..., 1/4, 1/2, 1}``
(the paper's level set with ratio 1/2, zero included); rounding between the two
neighbouring levels ``l_j <= r <= l_{j+1}`` goes up with probability
``(r - l_j) / (l_{j+1} - l_j)``, which is unbiased. ``bits`` buys ``s + 2 = 2**(bits-1)``
levels including zero, so ``s = 2**(bits-1) - 2`` (4 bits: 0 and 2**-6 .. 1).
"""

from __future__ import annotations

from lightning_quant.quantizers.base import register_quantizer
from lightning_quant.quantizers.bucketed import BucketedQuantizer

__all__ = ["NUQSGD"]


@register_quantizer("nuqsgd")
class NUQSGD(BucketedQuantizer):
    """NUQSGD: L2-norm scaling, exponential levels including zero, per bucket.

    Example::

        q = get_quantizer("nuqsgd", bits=4, bucket_size=512)
    """

    norm = "l2"
    exponential = True
