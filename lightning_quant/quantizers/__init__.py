"""Gradient quantizers: one module per scheme, all reachable through the registry.

Example::

    from lightning_quant.quantizers import get_quantizer, available_quantizers

    q = get_quantizer("nuqsgd", bits=4)
    payload = q.encode(grad)
    payload.nbytes  # exact bytes on the wire
    grad_hat = q.decode(payload)
"""

from lightning_quant.quantizers import (  # noqa: F401
    dqsgd,
    floats,
    global_qsgd,
    global_qsgd_exp,
    nuqsgd,
    qsgd,
)
from lightning_quant.quantizers.base import (
    Payload,
    Quantizer,
    QuantizerConfig,
    available_quantizers,
    get_quantizer,
    quantizer_settings,
    register_quantizer,
)
from lightning_quant.quantizers.dqsgd import DQSGDPolicy

__all__ = [
    "DQSGDPolicy",
    "Payload",
    "Quantizer",
    "QuantizerConfig",
    "available_quantizers",
    "get_quantizer",
    "quantizer_settings",
    "register_quantizer",
]
