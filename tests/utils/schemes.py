"""The schemes as the tests name them: every registered one, plus settings that change a
scheme's level set enough to be tested as a scheme of its own."""

from __future__ import annotations

from typing import Any

from lightning_quant.quantizers import Quantizer, available_quantizers, get_quantizer

VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "nuqsgd_reference": ("nuqsgd", {"levels": "reference"}),
}
ALL = [*available_quantizers(), *VARIANTS]
STOCHASTIC = [
    "qsgd",
    "qsgd_inf",
    "nuqsgd",
    "nuqsgd_reference",
    "dqsgd",
    "global_qsgd",
    "global_qsgd_exp",
]
SHARED_SCALE = ["global_qsgd", "global_qsgd_exp"]
BUCKETED = ["qsgd", "qsgd_inf", "nuqsgd", "nuqsgd_reference", "dqsgd"]


def make(scheme: str, **config: Any) -> Quantizer:
    """Build the quantizer a test scheme names, with ``config`` on top of its preset."""
    name, preset = VARIANTS.get(scheme, (scheme, {}))
    return get_quantizer(name, **{**preset, **config})
