"""lightning-quant: quantized gradient exchange for data-parallel training.

Importing the package registers a Lightning strategy name ``ddp_<scheme>`` for every
scheme (``ddp_qsgd``, ``ddp_qsgd_inf``, ``ddp_nuqsgd``, ``ddp_dqsgd``, ``ddp_global_qsgd``,
``ddp_global_qsgd_exp``), the baselines (``ddp_fp32``, ``ddp_fp16``, ``ddp_bf16``) and
PyTorch's peers (``ddp_torch_fp16``, ``ddp_torch_powersgd``).
"""

from lightning_quant.hooks import QuantizedCommState, make_comm_hook, quantized_hook
from lightning_quant.quantizers import available_quantizers, get_quantizer
from lightning_quant.strategy import STRATEGY_NAMES, QuantizedDDPStrategy

__version__ = "0.1.0"

__all__ = [
    "STRATEGY_NAMES",
    "QuantizedCommState",
    "QuantizedDDPStrategy",
    "__version__",
    "available_quantizers",
    "get_quantizer",
    "make_comm_hook",
    "quantized_hook",
]
