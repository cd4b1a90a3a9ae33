"""The quantizer interface, the wire format and the registry of schemes."""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import torch

__all__ = [
    "Payload",
    "Quantizer",
    "QuantizerConfig",
    "available_quantizers",
    "get_quantizer",
    "register_quantizer",
]

SCALE_DTYPE = torch.float32


@dataclass(frozen=True)
class Payload:
    """What one worker puts on the wire for one tensor.

    ``data`` and ``scales`` are exactly the bytes the DDP hook hands to the collective
    (``to_wire`` concatenates them); ``nbytes`` counts them and nothing else. Everything
    else (shape, dtype, bits, levels) is agreed by all ranks in advance and never sent.

    Attributes:
        data: packed codes, 1-D ``uint8``.
        scales: one ``float32`` scale per bucket (Global-QSGD: the one shared scale).
        shape: shape of the encoded tensor.
        numel: number of elements of the encoded tensor.
        dtype: dtype the decoder restores.
        bits: wire bits per coordinate, sign included.
        levels: positive quantization levels ``s`` the codes refer to (0 for floats).
        summands: how many workers' codes ``data`` holds summed (Global-QSGD allreduce).
    """

    data: torch.Tensor
    scales: torch.Tensor
    shape: torch.Size
    numel: int
    dtype: torch.dtype
    bits: int
    levels: int = 0
    summands: int = 1

    @property
    def nbytes(self) -> int:
        """Bytes this payload puts on the wire: packed codes plus scales."""
        return self.data.numel() + self.scales.numel() * self.scales.element_size()

    def to_wire(self) -> torch.Tensor:
        """Return the one ``uint8`` buffer that crosses the wire: scales, then codes."""
        return torch.cat([self.scales.reshape(-1).view(torch.uint8), self.data])

    def read_wire(self, wire: torch.Tensor) -> Payload:
        """Return a payload of this layout whose bytes are read from ``wire``."""
        if wire.numel() != self.nbytes:
            raise ValueError(
                f"wire buffer has {wire.numel()} bytes, this layout needs {self.nbytes}"
            )
        split = self.scales.numel() * self.scales.element_size()
        scales = wire[:split].clone().view(self.scales.dtype)
        return dataclasses.replace(self, data=wire[split:], scales=scales)


@dataclass(frozen=True)
class QuantizerConfig:
    """Settings shared by every scheme; schemes subclass it with their own fields."""

    def __post_init__(self) -> None:
        """Check the settings; subclasses raise ``ValueError`` saying what to change."""


ConfigT = TypeVar("ConfigT", bound=QuantizerConfig)


class Quantizer(ABC):
    """Encode a tensor into a :class:`Payload` and decode it back.

    Quantizers are stateless: everything that changes during training lives in the
    DDP hook's state. Stochastic schemes draw from the ``generator`` passed to ``encode``.
    """

    name: ClassVar[str] = ""
    config_class: ClassVar[type[QuantizerConfig]] = QuantizerConfig
    stochastic: ClassVar[bool] = True
    reducible: ClassVar[bool] = False  # payloads can be summed by a plain allreduce

    def __init__(self, config: QuantizerConfig | None = None) -> None:
        self.config = config if config is not None else self.config_class()

    @abstractmethod
    def encode(self, tensor: torch.Tensor, generator: torch.Generator | None = None) -> Payload:
        """Quantize ``tensor`` into a payload."""

    @abstractmethod
    def decode(self, payload: Payload, out: torch.Tensor | None = None) -> torch.Tensor:
        """Rebuild a tensor of the payload's shape and dtype (into ``out`` if given)."""

    @abstractmethod
    def wire_nbytes(self, numel: int) -> int:
        """Return the exact ``Payload.nbytes`` of a tensor of ``numel`` elements."""

    def config_dict(self) -> dict[str, Any]:
        """Return the scheme name and its settings, as stored with every run."""
        return {"name": self.name, **dataclasses.asdict(self.config)}

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in dataclasses.asdict(self.config).items())
        return f"{type(self).__name__}({fields})"


_REGISTRY: dict[str, type[Quantizer]] = {}

QuantizerT = TypeVar("QuantizerT", bound=type[Quantizer])


def register_quantizer(name: str) -> Callable[[QuantizerT], QuantizerT]:
    """Register a quantizer class under ``name`` (class decorator)."""

    def decorator(cls: QuantizerT) -> QuantizerT:
        if name in _REGISTRY:
            raise ValueError(f"quantizer {name!r} is registered twice")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorator


def available_quantizers() -> list[str]:
    """Return the registered scheme names, sorted."""
    return sorted(_REGISTRY)


def get_quantizer(name: str, **config: Any) -> Quantizer:
    """Build the quantizer registered as ``name`` with the given settings.

    Args:
        name: a registry name, e.g. ``"qsgd"``; see :func:`available_quantizers`.
        **config: fields of that scheme's config dataclass, e.g. ``bits=4``.

    Raises:
        KeyError: ``name`` is not registered (the message lists the available names).
        ValueError: a setting is unknown or out of range (the message says what is allowed).

    Example::

        q = get_quantizer("qsgd", bits=4, bucket_size=512)
        x_hat = q.decode(q.encode(torch.randn(1000)))
    """
    try:
        cls = _REGISTRY[name]
    except KeyError:
        raise KeyError(
            f"unknown quantizer {name!r}; available: {', '.join(available_quantizers())}"
        ) from None
    fields = {f.name for f in dataclasses.fields(cls.config_class)}
    unknown = sorted(set(config) - fields)
    if unknown:
        raise ValueError(
            f"{name} has no setting {', '.join(unknown)}; its settings are: "
            f"{', '.join(sorted(fields)) or '(none)'}"
        )
    return cls(cls.config_class(**config))
