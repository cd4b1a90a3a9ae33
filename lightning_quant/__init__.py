"""lightning-quant: quantized gradient exchange for data-parallel training.

Importing the package registers a Lightning strategy name ``ddp_<scheme>`` for every
scheme in :func:`available_schemes`: the quantizers (``ddp_qsgd``, ``ddp_nuqsgd``...),
the float baselines (``ddp_fp32``...) and PyTorch's own hooks (``ddp_torch_powersgd``...).
"""

from lightning_quant.hooks import (
    QuantizedCommState,
    Scheme,
    available_schemes,
    get_scheme,
    make_comm_hook,
    quantized_hook,
)
from lightning_quant.quantizers import available_quantizers, get_quantizer
from lightning_quant.strategy import STRATEGY_NAMES, QuantizedDDPStrategy

__version__ = "0.1.0"

__all__ = [
    "STRATEGY_NAMES",
    "QuantizedCommState",
    "QuantizedDDPStrategy",
    "Scheme",
    "__version__",
    "available_quantizers",
    "available_schemes",
    "get_quantizer",
    "get_scheme",
    "make_comm_hook",
    "quantized_hook",
]
