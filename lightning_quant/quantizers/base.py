"""The quantizer interface and the registry of schemes (the wire format: :mod:`.payload`)."""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, TypeVar

import torch

from lightning_quant.collectives import Collective, check_collective
from lightning_quant.quantizers import kernels
from lightning_quant.quantizers.contraction import RESIDUAL_BOUND, fit_factors, row_sums
from lightning_quant.quantizers.payload import CODINGS, SCALE_DTYPE, Payload, check_coding

__all__ = [
    "SCALE_DTYPE",
    "CODINGS",
    "Payload",
    "check_coding",
    "Quantizer",
    "QuantizerConfig",
    "Share",
    "StepPolicy",
    "available_quantizers",
    "get_quantizer",
    "quantizer_defaults",
    "quantizer_settings",
    "register_quantizer",
    "round_stochastically",
]

# ``share(tensor)`` starts summing ``tensor`` over the ranks and returns a function that
# waits for it and gives the mean: what the hook's state hands a policy once a step.
Share = Callable[[torch.Tensor], Callable[[], torch.Tensor]]


class StepPolicy(Protocol):
    """What a scheme keeps from step to step in the hook's state (DQ-SGD's width rule).

    The hook calls :meth:`begin_step` at a step's first bucket, :meth:`observe` with the
    elements it compresses (before they are reduced), and :meth:`end_step` after the
    step's last collective is launched, so anything it shares goes in the same order on
    every rank. The policy saves and restores itself with the hook's checkpoints.
    """

    def begin_step(self) -> int:
        """Return this step's width."""
        ...

    def observe(self, values: torch.Tensor) -> None:
        """See elements this rank compresses in this step."""
        ...

    def end_step(self, share: Share) -> None:
        """Share what the next step's choice needs (once per step, on every rank)."""
        ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@dataclass(frozen=True)
class QuantizerConfig:
    """Settings shared by every scheme; schemes subclass it with their own fields."""

    def __post_init__(self) -> None:
        """Check the settings; subclasses raise ``ValueError`` saying what to change."""

    @classmethod
    def settings_for(cls, bits: int, lr: float | None = None) -> dict[str, Any]:
        """Return the settings that run the scheme at ``bits``, where it has a width, under
        an optimizer of learning rate ``lr``, where its rule assumes one (a sweep's runs)."""
        return {"bits": bits} if "bits" in {f.name for f in dataclasses.fields(cls)} else {}


ConfigT = TypeVar("ConfigT", bound=QuantizerConfig)


class Quantizer(ABC):
    """Encode a tensor into a :class:`Payload` and decode it back.

    Quantizers are stateless: everything that changes during training lives in the
    DDP hook's state. Stochastic schemes draw from the ``generator`` passed to ``encode``.

    A scheme declares here what the DDP hook may do with it, and the hook dispatches on
    these declarations only:

    * ``collectives``: the collectives it can reduce with, in order of preference
      (:func:`lightning_quant.collectives.choose_collective` picks one);
    * ``shared_scale``: every rank encodes against one scale, the max of ``|g|`` over
      ranks, got with a scalar ``allreduce(MAX)`` first;
    * ``lossy``: whether error feedback applies (not to the float baselines);
    * :meth:`allreduce_limit`: how many ranks' payloads sum without overflow;
    * :meth:`make_policy`: per-step state (DQ-SGD's choice of width), or ``None``.
    """

    name: ClassVar[str] = ""
    config_class: ClassVar[type[QuantizerConfig]] = QuantizerConfig
    collectives: ClassVar[tuple[Collective, ...]] = (
        Collective.ALLGATHER,
        Collective.REDUCE_SCATTER,
    )
    shared_scale: ClassVar[bool] = False
    lossy: ClassVar[bool] = True  # error feedback carries what encoding loses

    def __init__(self, config: QuantizerConfig | None = None) -> None:
        self.config = config if config is not None else self.config_class()

    @property
    def bits(self) -> int:
        """Wire bits per coordinate at the configured width."""
        return int(getattr(self.config, "bits"))  # noqa: B009 - every scheme but floats

    @property
    def coding(self) -> str:
        """How the codes go on the wire: ``"packed"``, or ``"entropy"`` (rANS-coded)."""
        return str(getattr(self.config, "coding", "packed"))

    def own_scale(self, x: torch.Tensor) -> torch.Tensor | None:
        """Return this rank's part of the shared scale, for schemes that declare one:
        ``max |x|`` as one ``float32`` (0 for no elements, Inf where ``x`` holds NaN or Inf,
        as a MAX of NaN is unreliable); ``None`` for the others."""
        if not self.shared_scale:
            return None
        scale = x.detach().abs().amax().float().reshape(1) if x.numel() else x.new_zeros(1).float()
        return scale if torch.isfinite(scale).all() else scale.fill_(float("inf"))

    def check_collective(self, requested: str) -> None:
        """Raise ``ValueError`` unless ``requested`` is ``"auto"`` or a collective it can
        reduce with at its settings; the message says what to choose."""
        if requested == Collective.ALLREDUCE and self.coding == "entropy":
            raise ValueError(
                f"{self.name}: an all-reduce sums payloads, and entropy-coded ones do not "
                "add up; use collective='auto' or coding='packed'"
            )
        check_collective(self.name, self.reducible_with(), requested)

    def reducible_with(self) -> tuple[Collective, ...]:
        """The collectives it can reduce with at its settings: entropy-coded payloads are
        not fixed-width lanes, so no SUM all-reduce can add them."""
        if self.coding == "entropy":
            return tuple(c for c in self.collectives if c is not Collective.ALLREDUCE)
        return self.collectives

    @abstractmethod
    def encode(
        self,
        tensor: torch.Tensor,
        generator: torch.Generator | None = None,
        *,
        bits: int | None = None,
        scale: torch.Tensor | None = None,
    ) -> Payload:
        """Quantize ``tensor`` into a payload that decodes on its own.

        Args:
            tensor: floating-point tensor of any shape.
            generator: random stream of the stochastic rounding.
            bits: this step's width, for schemes whose width changes (DQ-SGD).
            scale: the shared scale, for schemes that declare ``shared_scale``.
        """

    @abstractmethod
    def decode(self, payload: Payload, out: torch.Tensor | None = None) -> torch.Tensor:
        """Rebuild a tensor of the payload's shape and dtype (into ``out`` if given)."""

    @abstractmethod
    def wire_nbytes(self, numel: int, bits: int | None = None) -> int:
        """Return the exact ``Payload.nbytes`` of a tensor of ``numel`` elements."""

    @property
    def alignment(self) -> int:
        """Elements that share one scale: a shard of a bucket holds whole multiples of it."""
        return 1

    @property
    def scale_unit(self) -> int | None:
        """Elements that share one scale of a payload (``None``: one scale for all of it)."""
        return None

    def contract(
        self, payload: Payload, target: torch.Tensor, fresh: torch.Tensor
    ) -> tuple[Payload, torch.Tensor]:
        """Rescale ``payload`` for error feedback; return it and the flat ``float32`` it decodes to.

        ``target`` is what was encoded: the step's gradient ``fresh`` plus the residual
        carried in. Each scale is multiplied by a factor in ``[0, 1]`` (:func:`fit_factors`):
        1 where the residual left, ``target - decoded``, is within :data:`RESIDUAL_BOUND`
        times the norm of ``fresh`` on that scale's elements; else the largest factor that
        keeps it there; else, where none does, the least-squares factor (EF-SGD's scaled
        sign in general form). Then ``||target - decoded|| <= ||target||`` for every
        realization: the compressor is contractive where it must be, which error feedback
        needs (an unbiased one whose variance exceeds the input's energy is not, and its
        residual grows geometrically), and unbiased where the residual is small. The
        scales are on the wire, so this costs no bytes.
        """
        decoded = self.decode(payload).reshape(-1).float()
        unit = self.scale_unit or max(payload.numel, 1)
        fresh_energy = row_sums(fresh.reshape(-1).float().pow(2), unit)
        allowed = RESIDUAL_BOUND**2 * fresh_energy
        factors = fit_factors(target.reshape(-1).float(), decoded, unit, allowed)
        scales = (payload.scales * factors).to(payload.scales.dtype)
        fitted = decoded * factors.repeat_interleave(unit)[: decoded.numel()]
        return dataclasses.replace(payload, scales=scales), fitted

    def allreduce_limit(self) -> int | None:
        """Return the most ranks whose payloads a SUM all-reduce adds exactly (None: any)."""
        return None

    def for_run(self, total_steps: int) -> Quantizer:
        """Return this scheme for a run of ``total_steps`` optimizer steps (the strategy knows
        them from the trainer); a scheme that plans over the run's length reads them."""
        return self

    def check_reduction(self, workers: int, collective: Collective) -> None:
        """Warn where reducing over ``workers`` with ``collective`` makes this scheme do harm
        a user would not expect (nothing by default)."""
        return None

    def warm_up(self, device: torch.device) -> None:
        """Encode and decode a small tensor on ``device``, so that the codec's kernels are
        compiled now (Numba caches them on disk) and not inside the first timed step.

        Raises:
            ValueError: its coding cannot run on ``device`` (entropy coding off CPU).
        """
        kernels.backend(device, self.coding)
        x = torch.linspace(-1.0, 1.0, 2 * self.alignment + 3, device=device)
        generator = torch.Generator(device=device).manual_seed(0)
        self.decode(self.encode(x, generator, scale=self.own_scale(x)))

    def make_policy(self, workers: int = 1, two_stage: bool = False) -> StepPolicy | None:
        """Return the per-step state this scheme keeps in the hook's state, or ``None``.

        Args:
            workers: ranks whose payloads are averaged (nodes, on the hierarchical path).
            two_stage: whether the mean is quantized again (the reduce-scatter path).
        """
        return None

    # --- schemes that declare ALLREDUCE: payloads that add up -----------------------------

    def encode_summable(
        self,
        tensor: torch.Tensor,
        generator: torch.Generator | None,
        *,
        world_size: int,
        scale: torch.Tensor | None = None,
    ) -> Payload:
        """Quantize ``tensor`` so that ``world_size`` ranks' payloads can be summed."""
        raise NotImplementedError(f"{self.name} payloads do not sum")

    def summable(self, payload: Payload) -> torch.Tensor:
        """Return the tensor of ``payload`` that a SUM all-reduce adds up."""
        raise NotImplementedError(f"{self.name} payloads do not sum")

    def decode_own(self, payload: Payload, world_size: int) -> torch.Tensor:
        """Decode one rank's :meth:`encode_summable` payload in the gradient's own units."""
        return self.decode(payload)

    def decode_sum(
        self, payload: Payload, summed: torch.Tensor, world_size: int, out: torch.Tensor
    ) -> torch.Tensor:
        """Write the mean of ``world_size`` ranks into ``out`` from their ``summed`` payloads."""
        raise NotImplementedError(f"{self.name} payloads do not sum")

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


def _scheme_class(name: str) -> type[Quantizer]:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(
            f"unknown quantizer {name!r}; available: {', '.join(available_quantizers())}"
        ) from None


def quantizer_settings(name: str) -> frozenset[str]:
    """Return the names of the settings scheme ``name`` takes (its config's fields)."""
    return frozenset(f.name for f in dataclasses.fields(_scheme_class(name).config_class))


def quantizer_defaults(name: str, bits: int, lr: float | None = None) -> dict[str, Any]:
    """Return :meth:`QuantizerConfig.settings_for` of scheme ``name``."""
    return _scheme_class(name).config_class.settings_for(bits, lr)


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
    cls = _scheme_class(name)
    fields = quantizer_settings(name)
    unknown = sorted(set(config) - fields)
    if unknown:
        raise ValueError(
            f"{name} has no setting {', '.join(unknown)}; its settings are: "
            f"{', '.join(sorted(fields)) or '(none)'}"
        )
    return cls(cls.config_class(**config))


def round_stochastically(x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Round ``x`` down, or up with probability ``frac(x)``, given uniforms ``noise``.

    Up when ``x + u`` reaches the next integer, tested as ``u >= 1 - frac(x)``: adding in
    ``float32`` would round ``x + u`` up for ``u`` within an ulp of 1 and move values that
    lie on a level.
    """
    lower = x.floor()
    return lower.add_((noise >= 1 - (x - lower)).to(x.dtype))
