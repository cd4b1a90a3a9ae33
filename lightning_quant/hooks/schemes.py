"""One object per scheme: every registered quantizer, and PyTorch's own hooks.

A :class:`Scheme` is what the strategy, :func:`~lightning_quant.hooks.make_comm_hook`, the
Lightning registry names (``ddp_<scheme>``), the sweep and the dashboard ask about a way
of exchanging gradients: its settings, the collectives it can reduce with, what DDP must
be given for it (PyTorch's PowerSGD: a single bucket), and how it builds its state and
hook for a process group. Nothing outside a scheme's own module names it.

* Quantizers register themselves (``@register_quantizer``); :class:`QuantizerScheme`
  serves each one through the quantized hook.
* PyTorch's hooks register a factory here (``@register_scheme``, in
  :mod:`~lightning_quant.hooks.peers`), as PyTorch's ``DDPCommHookType`` keeps partials
  that build a hook's state.

Example::

    scheme = get_scheme("nuqsgd", bits=4)
    state, hook = scheme.make_hook(process_group=None, error_feedback=True)
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import torch.distributed as dist

from lightning_quant.collectives import Collective, check_collective
from lightning_quant.hooks.hook import quantized_hook
from lightning_quant.hooks.state import QuantizedCommState
from lightning_quant.quantizers import Quantizer, available_quantizers, get_quantizer
from lightning_quant.quantizers.base import quantizer_defaults, quantizer_settings

__all__ = [
    "QuantizerScheme",
    "Scheme",
    "available_schemes",
    "get_scheme",
    "register_scheme",
    "scheme_defaults",
    "scheme_settings",
    "split_settings",
]

Hook = Callable[..., Any]  # PyTorch's comm-hook signature: (state, bucket) -> Future


class Scheme(ABC):
    """A configured way of exchanging gradients, as the registry serves it.

    Attributes:
        name: its registry name.
        bits: wire bits per coordinate at its settings.
        collectives: the collectives it can reduce with, in order of preference.
        hierarchical: whether it can take the hierarchical path.
        ddp_settings: what DDP must be given for it (PowerSGD on gloo: one bucket).
        hides_codec: whether its codec runs inside one opaque call (PyTorch's hooks), so
            its time cannot be told apart from communication's.
        per_bucket: whether it chooses each bucket's collective itself (``auto``).
    """

    name: str
    hierarchical: ClassVar[bool] = True
    per_bucket: ClassVar[bool] = False
    hides_codec: ClassVar[bool] = False
    ddp_settings: Mapping[str, Any] = {}

    @property
    @abstractmethod
    def bits(self) -> int: ...

    @property
    @abstractmethod
    def collectives(self) -> tuple[Collective, ...]: ...

    def allreduce_limit(self) -> int | None:
        """The most ranks whose payloads a SUM all-reduce adds exactly (``None``: any)."""
        return None

    def unavailable(self, backend: str) -> str | None:
        """Return why it cannot run on ``backend`` (``"gloo"``, ``"nccl"``), or ``None``."""
        return None

    def check_collective(self, requested: str) -> None:
        """Raise ``ValueError`` unless ``requested`` is ``"auto"`` or one it supports."""
        check_collective(self.name, self.collectives, requested)

    @abstractmethod
    def config_dict(self) -> dict[str, Any]:
        """Return its name and settings, as stored with every run."""

    def for_run(self, total_steps: int) -> Scheme:
        """Return it for a run of ``total_steps`` optimizer steps (DQ-SGD plans over them)."""
        return self

    @abstractmethod
    def make_hook(
        self, process_group: dist.ProcessGroup | None = None, **settings: Any
    ) -> tuple[QuantizedCommState, Hook]:
        """Return ``(state, hook)`` for DDP over ``process_group``.

        Args:
            settings: :class:`QuantizedCommState` keywords; a scheme that cannot use one
                ignores it (PyTorch's hooks keep only what counting bytes needs).
        """


class QuantizerScheme(Scheme):
    """A registered quantizer, exchanged by :func:`quantized_hook`."""

    def __init__(self, quantizer: Quantizer) -> None:
        self.quantizer = quantizer
        self.name = quantizer.name

    @property
    def bits(self) -> int:
        return self.quantizer.bits

    @property
    def collectives(self) -> tuple[Collective, ...]:
        return self.quantizer.reducible_with()

    def check_collective(self, requested: str) -> None:
        self.quantizer.check_collective(requested)

    def allreduce_limit(self) -> int | None:
        return self.quantizer.allreduce_limit()

    def config_dict(self) -> dict[str, Any]:
        return self.quantizer.config_dict()

    def for_run(self, total_steps: int) -> Scheme:
        planned = self.quantizer.for_run(total_steps)
        return self if planned is self.quantizer else QuantizerScheme(planned)

    def make_hook(
        self, process_group: dist.ProcessGroup | None = None, **settings: Any
    ) -> tuple[QuantizedCommState, Hook]:
        return QuantizedCommState(self.quantizer, process_group, **settings), quantized_hook

    def __repr__(self) -> str:
        return f"QuantizerScheme({self.quantizer!r})"


SchemeFactory = Callable[..., Scheme]
_FACTORIES: dict[str, tuple[SchemeFactory, frozenset[str]]] = {}


def register_scheme(
    name: str, settings: tuple[str, ...] = ()
) -> Callable[[SchemeFactory], SchemeFactory]:
    """Register a factory of a scheme that is not a quantizer, taking ``settings``."""

    def decorator(factory: SchemeFactory) -> SchemeFactory:
        if name in _FACTORIES or name in available_quantizers():
            raise ValueError(f"scheme {name!r} is registered twice")
        _FACTORIES[name] = (factory, frozenset(settings))
        return factory

    return decorator


def available_schemes() -> list[str]:
    """Return every scheme name: the quantizers (sorted), then the other registered ones."""
    return [*available_quantizers(), *_FACTORIES]


def scheme_settings(name: str) -> frozenset[str]:
    """Return the settings scheme ``name`` takes."""
    if name in _FACTORIES:
        return _FACTORIES[name][1]
    if name in available_quantizers():
        return quantizer_settings(name)
    raise KeyError(f"unknown scheme {name!r}; available: {', '.join(available_schemes())}")


def scheme_defaults(name: str, bits: int, lr: float | None = None) -> dict[str, Any]:
    """Return the settings that run scheme ``name`` at ``bits`` (where it has a width)
    under an optimizer of learning rate ``lr`` (where its rule assumes one)."""
    if name in _FACTORIES:
        return {}
    scheme_settings(name)  # an unknown name fails here, with the list
    return quantizer_defaults(name, bits, lr)


def get_scheme(scheme: str | Quantizer | Scheme, **settings: Any) -> Scheme:
    """Return the scheme ``scheme`` names, built with ``settings`` (checked now).

    Args:
        scheme: a name in :func:`available_schemes`, a :class:`Quantizer`, or a scheme.
        settings: the scheme's own settings (:func:`scheme_settings`).

    Raises:
        KeyError: an unknown name (the message lists the available ones).
        ValueError: a setting it does not take, or out of range.
    """
    if isinstance(scheme, Scheme | Quantizer):
        if settings:
            raise ValueError("pass settings either in the instance or with a name, not both")
        return scheme if isinstance(scheme, Scheme) else QuantizerScheme(scheme)
    if scheme in _FACTORIES:
        factory, allowed = _FACTORIES[scheme]
        unknown = sorted(set(settings) - allowed)
        if unknown:
            raise ValueError(
                f"{scheme} has no setting {', '.join(unknown)}; its settings are: "
                f"{', '.join(sorted(allowed)) or '(none)'}"
            )
        return factory(**settings)
    scheme_settings(scheme)  # an unknown name fails here, with the list
    return QuantizerScheme(get_quantizer(scheme, **settings))


def state_settings() -> frozenset[str]:
    """Return the keywords :class:`QuantizedCommState` takes besides its quantizer."""
    import inspect

    params = inspect.signature(QuantizedCommState).parameters.values()
    return frozenset(
        p.name
        for p in params
        if p.kind is not p.VAR_KEYWORD and p.name not in ("quantizer", "process_group")
    )


def split_settings(settings: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split keywords into (the state's, the scheme's)."""
    ours = state_settings()
    return (
        {k: v for k, v in settings.items() if k in ours},
        {k: v for k, v in settings.items() if k not in ours},
    )
