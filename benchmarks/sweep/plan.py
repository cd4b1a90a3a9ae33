"""Plan a sweep: which runs, in which order, and which of them cannot run here and why."""

from __future__ import annotations

import argparse
import itertools
from dataclasses import dataclass
from typing import Any

from benchmarks.tasks import TASKS
from lightning_quant.collectives import AUTO, Collective, choose_collective
from lightning_quant.hooks import Scheme, available_schemes, get_scheme, scheme_settings
from lightning_quant.hooks.groups import use_hierarchy
from lightning_quant.hooks.schemes import scheme_defaults

__all__ = [
    "BASELINE",
    "RunSpec",
    "known_schemes",
    "own_settings",
    "plan_runs",
    "wire_bits",
]

BASELINE = "fp32"  # every ratio is to plain fp32 DDP
BACKEND = "gloo"  # the sweep's ranks run on CPU


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
    coding: str = "packed"  # how the codes go on the wire (schemes without codes: packed)
    ranks_per_node: int = 1
    hierarchical: bool = False
    val_every: int = 0  # steps between validations (0: none)
    start_step: int = 0  # uncompressed warm-up steps
    settings: tuple[tuple[str, Any], ...] = ()  # --settings this scheme has
    link_change: tuple[int, str] | None = None  # (step, link): the sweep changes the link
    check_error: bool = False  # an fp32 all-reduce beside every bucket (the exact error)
    stop_at: float | None = None  # --race: stop once the target metric reaches this
    error_feedback: bool = False
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
        coded = " entropy" if self.coding == "entropy" else ""
        extra = "".join(f" {k}={v}" for k, v in self.settings)
        return (
            f"{self.task} {self.scheme} {self.bits}b{coded} {self.collective}{path} "
            f"{self.topology} {self.link}{extra} seed{self.seed}"
        )

    def quantizer_settings(self) -> dict[str, Any]:
        """Return the settings the ranks build the scheme with."""
        return scheme_settings_for(
            self.scheme, self.task, self.bits, self.bucket_size, self.settings, self.coding
        )


def scheme_settings_for(
    scheme: str,
    task: str,
    bits: int,
    bucket_size: int,
    settings: tuple[tuple[str, Any], ...],
    coding: str = "packed",
) -> dict[str, Any]:
    """Return the settings a run builds ``scheme`` with: those that run it at ``bits`` under
    the task's learning rate (:func:`~lightning_quant.hooks.schemes.scheme_defaults`),
    ``bucket_size`` and ``coding`` where it has them, then ``--settings``."""
    built = scheme_defaults(scheme, bits, TASKS[task].lr)
    takes = scheme_settings(scheme)
    if "bucket_size" in takes:
        built["bucket_size"] = bucket_size
    if "coding" in takes and coding != "packed":
        built["coding"] = coding
    return {**built, **dict(settings)}


def known_schemes() -> list[str]:
    """Return every name ``--schemes`` accepts: the registry's."""
    return available_schemes()


def wire_bits(scheme: str) -> int | None:
    """Return the fixed width of a scheme without a ``bits`` setting, else ``None``."""
    return None if "bits" in scheme_settings(scheme) else get_scheme(scheme).bits


def own_settings(scheme: str, settings: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
    """Return the ``--settings`` that ``scheme`` has, sorted."""
    fields = scheme_settings(scheme)
    return tuple(sorted((k, v) for k, v in settings.items() if k in fields))


def _collectives(
    scheme: str, built: dict[str, Any], world: int, requested: list[str]
) -> tuple[list[str], str | None]:
    """Return the collectives ``scheme``, built with ``built``, runs with among ``world``
    ranks (each once), or why it cannot run."""
    try:
        spec = get_scheme(scheme, **built)
    except ValueError as error:
        return [AUTO], f"unavailable: {error}"
    why = spec.unavailable(BACKEND)
    if why:
        return [Collective.ALLREDUCE], why
    if spec.per_bucket:  # auto: each bucket's own
        return [AUTO], None
    usable = []
    for wanted in requested:
        try:
            spec.check_collective(wanted)
        except ValueError:
            continue
        usable.append(wanted)
    chosen = [
        choose_collective(scheme, spec.collectives, wanted, world, spec.allreduce_limit())
        for wanted in usable or [AUTO]  # a scheme none of the asked ones suits: its own
    ]
    return list(dict.fromkeys(str(c) for c in chosen)), None


def _paths(scheme: Scheme, world: int, per_node: int, requested: list[bool | str]) -> list[bool]:
    """Return the paths (hierarchical or flat) a scheme runs on, each once.

    The baseline always runs flat too: every ratio is to plain fp32 DDP.
    """
    if not scheme.hierarchical:
        return [False]
    paths = [use_hierarchy(value, world, per_node) for value in requested]
    return list(dict.fromkeys([False, *paths] if scheme.name == BASELINE else paths))


def plan_runs(args: argparse.Namespace) -> list[RunSpec]:
    """Return the runs in the order they go: per link and topology, fp32 first.

    Schemes without a ``bits`` setting (floats, peers) run once per (link, topology,
    seed) at their own width, the rest once per ``--bits`` value and ``--coding``; each
    once per ``--hierarchical`` path and ``--collective`` it supports, as
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
        codings = getattr(args, "coding", None) or ["packed"]
        if "coding" not in scheme_settings(scheme):
            codings = ["packed"]  # floats and PyTorch's hooks send no codes
        for bits, coding, hierarchical in itertools.product(
            [fixed] if fixed is not None else args.bits,
            codings,
            _paths(get_scheme(scheme), world, per_node, args.hierarchical),
        ):
            reducing = nodes if hierarchical else world  # ranks the quantized collective spans
            built = scheme_settings_for(scheme, args.task, bits, args.bucket_size, settings, coding)
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
                        coding=coding,
                        ranks_per_node=per_node,
                        hierarchical=hierarchical,
                        val_every=args.val_every,
                        start_step=args.start_step,
                        settings=settings,
                        link_change=getattr(args, "link_change", None),
                        check_error=getattr(args, "check_error", False),
                        error_feedback=getattr(args, "error_feedback", False),
                        unavailable=why,
                    )
                )
    return specs
