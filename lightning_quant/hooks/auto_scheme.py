"""``auto`` as a scheme: the strategy, ``make_comm_hook`` and the sweep ask for it by name.

Its state starts every bucket on ``AutoConfig.start_scheme`` and lets
:class:`~lightning_quant.hooks.auto.AutoChooser` pick each bucket's configuration; the
budget of relative variance also drives the fallback of buckets that exceed it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch.distributed as dist

from lightning_quant.collectives import Collective, check_collective
from lightning_quant.hooks.auto import DEFAULT_MAX_REL_VARIANCE, AutoConfig
from lightning_quant.hooks.hook import quantized_hook
from lightning_quant.hooks.schemes import Hook, Scheme, register_scheme
from lightning_quant.hooks.state import QuantizedCommState
from lightning_quant.quantizers import get_quantizer
from lightning_quant.quantizers.base import quantizer_defaults

__all__ = ["AutoScheme"]

_SETTINGS = ("max_rel_variance", *(f.name for f in dataclasses.fields(AutoConfig)))


class AutoScheme(Scheme):
    """Each bucket's scheme, width and coding chosen while training (``hooks/auto.py``)."""

    name = "auto"
    per_bucket = True

    def __init__(self, config: AutoConfig, max_rel_variance: float) -> None:
        if not max_rel_variance > 0:
            raise ValueError(f"max_rel_variance must be > 0, got {max_rel_variance}")
        self.config = config
        self.max_rel_variance = max_rel_variance

    @property
    def bits(self) -> int:
        return self.config.start_bits  # where every bucket starts; each one's own after

    @property
    def collectives(self) -> tuple[Collective, ...]:
        return (Collective.ALLREDUCE, Collective.ALLGATHER, Collective.REDUCE_SCATTER)

    def check_collective(self, requested: str) -> None:
        if check_collective(self.name, self.collectives, requested) is not None:
            raise ValueError("auto chooses each bucket's collective itself; use collective='auto'")

    def config_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "max_rel_variance": self.max_rel_variance,
            **dataclasses.asdict(self.config),
        }

    def make_hook(
        self, process_group: dist.ProcessGroup | None = None, **settings: Any
    ) -> tuple[QuantizedCommState, Hook]:
        settings.pop("collective", None)
        if settings.get("max_rel_variance") is None:
            settings["max_rel_variance"] = self.max_rel_variance
        start = self.config.start_scheme
        quantizer = get_quantizer(start, **quantizer_defaults(start, self.config.start_bits))
        state = QuantizedCommState(quantizer, process_group, auto=self.config, **settings)
        return state, quantized_hook


@register_scheme("auto", settings=_SETTINGS)
def _auto(max_rel_variance: float = DEFAULT_MAX_REL_VARIANCE, **config: Any) -> Scheme:
    for name in ("schemes", "widths", "codings"):  # lists from JSON or a command line
        if config.get(name) is not None:
            config[name] = tuple(config[name])
    return AutoScheme(AutoConfig(**config), max_rel_variance)
