"""Plan a sweep: which runs, in which order, and which of them cannot run here and why."""

from __future__ import annotations

import argparse
import itertools
from dataclasses import dataclass
from typing import Any

from benchmarks.tasks import TASKS
from lightning_quant.collectives import AUTO, Collective, check_collective, choose_collective
from lightning_quant.hooks import PEERS
from lightning_quant.hooks.state import use_hierarchy
from lightning_quant.quantizers import available_quantizers, get_quantizer, quantizer_settings

__all__ = [
    "BASELINE",
    "UNAVAILABLE_PEERS",
    "RunSpec",
    "known_schemes",
    "own_settings",
    "plan_runs",
    "wire_bits",
]

BASELINE = "fp32"
# PyTorch hooks a user might pick that cannot run here; why, as measured in PEERS.md.
UNAVAILABLE_PEERS = {
    "torch_bf16": (
        16,
        "unavailable on gloo/CPU: DDP refuses to register PyTorch's bf16_compress_hook "
        "unless CUDA with NCCL 2.10+ is present (gloo itself sums bf16; our 'bf16' "
        "baseline does that) - see PEERS.md",
    ),
    "torch_quantization": (
        8,
        "unavailable on gloo/CPU: PyTorch's quantization_pertensor_hook crashes in its "
        "decode step ('IndexError: invalid index of a 0-dim tensor'); it expects the "
        "nested all-gather output NCCL gives, gloo gives a flat one - see PEERS.md",
    ),
}


@dataclass(frozen=True)
class RunSpec:
    """One training run of the sweep; ``unavailable`` says why it cannot run, if it cannot."""

    task: str
    scheme: str
    bits: int
    world_size: int
    link: str
    seed: int
    steps: int
    warmup: int
    batch_size: int | None  # per rank; None: the task's
    bucket_size: int
    collective: str = Collective.ALLREDUCE
    ranks_per_node: int = 1
    hierarchical: bool = False
    val_every: int = 0  # steps between validations (0: none)
    start_step: int = 0  # uncompressed warm-up steps
    settings: tuple[tuple[str, Any], ...] = ()  # --settings this scheme has
    unavailable: str | None = None

    @property
    def nodes(self) -> int:
        return self.world_size // self.ranks_per_node

    @property
    def topology(self) -> str:
        """``"NxL"``: ``N`` nodes of ``L`` ranks."""
        return f"{self.nodes}x{self.ranks_per_node}"

    @property
    def name(self) -> str:
        path = " hierarchical" if self.hierarchical else ""
        extra = "".join(f" {k}={v}" for k, v in self.settings)
        return (
            f"{self.task} {self.scheme} {self.bits}b {self.collective}{path} {self.topology} "
            f"{self.link}{extra} seed{self.seed}"
        )

    def quantizer_settings(self) -> dict[str, Any]:
        """Return the settings the ranks build the scheme with."""
        return scheme_settings(self.scheme, self.task, self.bits, self.bucket_size, self.settings)


def scheme_settings(
    scheme: str, task: str, bits: int, bucket_size: int, settings: tuple[tuple[str, Any], ...]
) -> dict[str, Any]:
    """Return the settings a run builds ``scheme`` with: ``bits`` and ``bucket_size``
    where it has them (DQ-SGD: ``bits`` is its largest width, and its bound assumes the
    task's learning rate), then ``--settings``."""
    if scheme not in available_quantizers():
        return {}
    fields = quantizer_settings(scheme)
    built = {k: v for k, v in (("bits", bits), ("bucket_size", bucket_size)) if k in fields}
    if "max_bits" in fields:
        built.update(max_bits=bits, lr=TASKS[task].lr)
    return {**built, **dict(settings)}


def known_schemes() -> list[str]:
    """Return every name ``--schemes`` accepts: the registry, the peers, the unavailable."""
    return [*available_quantizers(), *PEERS, *UNAVAILABLE_PEERS]


def wire_bits(scheme: str) -> int | None:
    """Return the fixed width of a scheme without a ``bits`` setting, else ``None``."""
    if scheme in PEERS:
        return PEERS[scheme].bits
    if scheme in UNAVAILABLE_PEERS:
        return UNAVAILABLE_PEERS[scheme][0]
    return None if "bits" in quantizer_settings(scheme) else get_quantizer(scheme).bits


def own_settings(scheme: str, settings: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
    """Return the ``--settings`` that ``scheme`` has, sorted."""
    if scheme not in available_quantizers():
        return ()
    fields = quantizer_settings(scheme)
    return tuple(sorted((k, v) for k, v in settings.items() if k in fields))


def _collectives(
    scheme: str, built: dict[str, Any], world: int, requested: list[str]
) -> tuple[list[str], str | None]:
    """Return the collectives ``scheme``, built with ``built``, runs with among ``world``
    ranks (each once), or why it cannot run."""
    if scheme in UNAVAILABLE_PEERS:
        return [Collective.ALLREDUCE], UNAVAILABLE_PEERS[scheme][1]
    if scheme in PEERS:
        return [Collective.ALLREDUCE], None  # PyTorch's hooks all-reduce
    try:
        q = get_quantizer(scheme, **built)
    except ValueError as error:
        return [AUTO], f"unavailable: {error}"
    usable = []
    for wanted in requested:
        try:
            check_collective(scheme, q.collectives, wanted)
        except ValueError:
            continue
        usable.append(wanted)
    chosen = [
        choose_collective(scheme, q.collectives, wanted, world, q.allreduce_limit())
        for wanted in usable or [AUTO]  # a scheme none of the asked ones suits: its own
    ]
    return list(dict.fromkeys(str(c) for c in chosen)), None


def _paths(scheme: str, world: int, per_node: int, requested: list[bool | str]) -> list[bool]:
    """Return the paths (hierarchical or flat) a scheme runs on, each once.

    The baseline always runs flat too: every ratio is to plain fp32 DDP.
    """
    if scheme in PEERS or scheme in UNAVAILABLE_PEERS:
        return [False]  # PyTorch's hooks know no hierarchy
    paths = [use_hierarchy(value, world, per_node) for value in requested]
    return list(dict.fromkeys([False, *paths] if scheme == BASELINE else paths))


def plan_runs(args: argparse.Namespace) -> list[RunSpec]:
    """Return the runs in the order they go: per link and topology, fp32 first.

    Schemes without a ``bits`` setting (floats, peers) run once per (link, topology,
    seed) at their own width, the rest once per ``--bits`` value; each once per
    ``--hierarchical`` path and ``--collective`` it supports, as
    :func:`lightning_quant.hooks.state.use_hierarchy` and
    :func:`lightning_quant.collectives.choose_collective` resolve them for that topology
    (values that resolve alike run once).
    """
    schemes = sorted(args.schemes, key=lambda s: s != BASELINE)  # stable: fp32 first
    specs = []
    for link, (nodes, per_node), seed, scheme in itertools.product(
        args.link, args.topology, args.seeds, schemes
    ):
        world = nodes * per_node
        fixed = wire_bits(scheme)
        settings = own_settings(scheme, getattr(args, "settings", None) or {})
        for bits, hierarchical in itertools.product(
            [fixed] if fixed is not None else args.bits,
            _paths(scheme, world, per_node, args.hierarchical),
        ):
            reducing = nodes if hierarchical else world  # ranks the quantized collective spans
            built = scheme_settings(scheme, args.task, bits, args.bucket_size, settings)
            collectives, why = _collectives(scheme, built, reducing, args.collective)
            for collective in collectives:
                specs.append(
                    RunSpec(
                        task=args.task,
                        scheme=scheme,
                        bits=bits,
                        world_size=world,
                        link=link,
                        seed=seed,
                        steps=args.steps,
                        warmup=args.warmup,
                        batch_size=args.batch_size,
                        bucket_size=args.bucket_size,
                        collective=collective,
                        ranks_per_node=per_node,
                        hierarchical=hierarchical,
                        val_every=args.val_every,
                        start_step=args.start_step,
                        settings=settings,
                        unavailable=why,
                    )
                )
    return specs
