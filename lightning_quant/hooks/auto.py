"""Per-bucket choices: the configuration each DDP bucket is reduced with, the safe
fallback, and ``quantizer="auto"``, which chooses from what it measures.

A :class:`Choice` is a quantizer and the collective it reduces with. Every bucket starts on
the state's own; a bucket moves when

* its measured relative variance exceeds ``max_rel_variance``: from the next step on it
  goes to twice the width, and from 8 bits, or for a scheme that picks its own width, to
  fp32 (:func:`wider`);
* ``auto`` decides (:class:`AutoChooser`).

Every bucket starts on ``start_scheme`` at ``start_bits`` (4-bit NUQSGD). How ``auto``
decides, for each bucket of ``d`` coordinates over ``n`` ranks, at the ``probe_steps``-th
step, every ``redecide_every`` steps after, and when the
fitted bandwidth has moved by more than ``bandwidth_change`` (:meth:`AutoChooser.watch`):

1. Every rank encodes a sample of its own gradient in the bucket (``sample_numel``
   coordinates) with every candidate: fp32, the fp16/bf16 casts, and every registered
   scheme without a per-step policy at each width and coding. It measures the relative
   variance ``||Q(v)-v||^2/||v||^2``, the wire bytes per coordinate (coded sizes depend on
   the data) and the encode and decode seconds per coordinate on its device; once per
   decision step it times the link (:func:`probe_link`).
2. One all-reduce averages these and the links over the ranks: every rank then holds
   the same numbers, so makes the same decision, and replicas stay bit-identical.
3. Among the candidates within the budget it takes the least predicted time::

       T = rounds * alpha + sent_bytes(collective, d * bytes_per_coord, n) / beta
           + d * (encodes * encode_s + decodes * decode_s)

   with the collective the candidate would use at ``n`` ranks (rounds and bytes from
   :mod:`lightning_quant.collectives`, plus the coded paths' size stages and the NaN
   guard), and the codec passes that path makes (an all-gather decodes ``n`` payloads).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from lightning_quant.collectives import Collective, choose_collective
from lightning_quant.hooks.costs import measure, predicted_seconds, probe_link
from lightning_quant.hooks.errors import BucketError
from lightning_quant.hooks.groups import Group
from lightning_quant.hooks.link import DEFAULT_LINK, LinkModel
from lightning_quant.hooks.pipeline import all_reduce
from lightning_quant.hooks.stats import StepStats
from lightning_quant.quantizers import Quantizer, available_quantizers, get_quantizer
from lightning_quant.quantizers.base import quantizer_defaults

__all__ = [
    "DEFAULT_MAX_REL_VARIANCE",
    "AutoChooser",
    "AutoConfig",
    "Choice",
    "candidates",
    "over_budget",
    "wider",
]

log = logging.getLogger(__name__)

# nuqsgd at 4 bits (0.09 on lm's gradients) reached fp32 DDP's loss in the lm race and
# qsgd at 4 bits (1.55) did not; 0.25 admits the first and qsgd_inf at 3 bits (0.22)
DEFAULT_MAX_REL_VARIANCE = 0.25
WIDEST = 8


@dataclass(frozen=True)
class Choice:
    """How one bucket is reduced: a quantizer and its collective."""

    quantizer: Quantizer
    collective: Collective

    @property
    def label(self) -> str:
        """``fp32``, ``fp16``, ``qsgd-4``, ``qsgd-4-entropy``..."""
        q = self.quantizer
        if not q.lossy:
            return q.name
        return f"{q.name}-{q.bits}" + ("-entropy" if q.coding == "entropy" else "")

    @property
    def plain(self) -> bool:
        """Whether it is the uncompressed fp32 all-reduce."""
        return self.quantizer.name == "fp32"

    def state_dict(self) -> dict[str, Any]:
        """Return it as a checkpoint keeps it."""
        return {"quantizer": self.quantizer.config_dict(), "collective": str(self.collective)}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Choice:
        """Rebuild a choice :meth:`state_dict` saved."""
        config = dict(state["quantizer"])
        return cls(get_quantizer(config.pop("name"), **config), Collective(state["collective"]))


def plain_choice() -> Choice:
    return Choice(get_quantizer("fp32"), Collective.ALLREDUCE)


def _choice(quantizer: Quantizer, workers: int) -> Choice:
    collective = choose_collective(
        quantizer.name, quantizer.reducible_with(), "auto", workers, quantizer.allreduce_limit()
    )
    return Choice(quantizer, collective)


def wider(choice: Choice, workers: int, own_width: bool) -> Choice:
    """Return the fallback of a bucket whose error exceeded the budget: twice the width up
    to 8 bits, else fp32 (also for schemes whose width a step policy picks: ``own_width``)."""
    q = choice.quantizer
    config = dataclasses.asdict(q.config)
    if not q.lossy or own_width or "bits" not in config or q.bits >= WIDEST:
        return plain_choice()
    try:
        return _choice(
            get_quantizer(q.name, **{**config, "bits": min(WIDEST, 2 * q.bits)}), workers
        )
    except ValueError:  # a width the scheme does not take
        return plain_choice()


def over_budget(
    buckets: Mapping[int, BucketError],
    choices: dict[int, Choice],
    default: Choice,
    budget: float,
    workers: int,
    own_width: bool,
    step: int,
) -> int:
    """Move every bucket whose relative variance exceeded ``budget`` to :func:`wider` in
    ``choices`` (from the next step on); return how many moved."""
    moved = 0
    for index, bucket in buckets.items():
        current = choices.get(index, default)
        if bucket.rel_variance > budget and current.quantizer.lossy:
            choices[index] = wider(current, workers, own_width)
            log.warning(
                "step %d bucket %d: relative variance %.3g over the budget %.3g; %s -> %s",
                step, index, bucket.rel_variance, budget, current.label, choices[index].label,
            )  # fmt: skip
            moved += 1
    return moved


@dataclass(frozen=True)
class AutoConfig:
    """Settings of ``quantizer="auto"``.

    Attributes:
        schemes: the quantizers to consider (``None``: every registered one whose width
            is not a per-step policy's, i.e. all but DQ-SGD).
        widths: the widths to try each at.
        codings: the codings to try (``"entropy"`` only where the device can code).
        start_scheme / start_bits: what every bucket uses before the first decision (its
            collectives fit the link): a scheme within the default budget that sends 8x
            fewer bytes than fp32, so neither a slow link nor a fast one pays much for it.
        probe_steps: steps sent that way before the first decision.
        redecide_every: steps between decisions.
        bandwidth_change: decide again when the fitted bandwidth is off the last
            decision's by more than a factor ``1 + bandwidth_change`` two steps in a row.
        sample_numel: coordinates of each bucket every candidate is measured on.
    """

    schemes: tuple[str, ...] | None = None
    widths: tuple[int, ...] = (2, 3, 4, 5, 6, 8)
    codings: tuple[str, ...] = ("packed", "entropy")
    start_scheme: str = "nuqsgd"
    start_bits: int = 4
    probe_steps: int = 1
    redecide_every: int = 50
    bandwidth_change: float = 0.5
    sample_numel: int = 1 << 18

    def __post_init__(self) -> None:
        if self.probe_steps < 1 or self.redecide_every < 1 or self.sample_numel < 1:
            raise ValueError("probe_steps, redecide_every and sample_numel must be >= 1")
        if not self.bandwidth_change > 0:
            raise ValueError(f"bandwidth_change must be > 0, got {self.bandwidth_change}")
        get_quantizer(self.start_scheme, **quantizer_defaults(self.start_scheme, self.start_bits))
        unknown = set(self.codings) - {"packed", "entropy"}
        if unknown:
            raise ValueError(f"unknown codings {sorted(unknown)}; use packed and/or entropy")


def candidates(config: AutoConfig, workers: int, device: torch.device) -> list[Choice]:
    """Return the choices ``auto`` weighs: fp32, the casts, then scheme x width x coding."""
    found = [plain_choice(), *(_choice(get_quantizer(n), workers) for n in ("fp16", "bf16"))]
    codings = [c for c in config.codings if c == "packed" or device.type == "cpu"]
    for name in config.schemes or available_quantizers():
        if name in ("fp32", "fp16", "bf16"):
            continue
        for bits in config.widths:
            for coding in codings:
                try:
                    q = get_quantizer(name, **{**quantizer_defaults(name, bits), "coding": coding})
                except (ValueError, TypeError):  # a width or coding it does not take
                    continue
                if q.make_policy(workers=workers) is not None:
                    break  # its width is its own per-step choice (DQ-SGD)
                found.append(_choice(q, workers))
    return found


def spread_sample(values: torch.Tensor, numel: int, pieces: int = 64) -> torch.Tensor:
    """Return ``numel`` of ``values``: ``pieces`` runs of consecutive elements, evenly
    spread, so every layer of a bucket shows, each run whole quantization buckets long."""
    if values.numel() <= numel:
        return values
    run = max(numel // pieces, 1)
    starts = torch.linspace(0, values.numel() - run, pieces).long().tolist()
    return torch.cat([values[a : a + run] for a in starts])


class AutoChooser:
    """``quantizer="auto"``: decides each bucket's :class:`Choice` (module doc).

    Args:
        config: its settings.
        budget: the largest relative variance a candidate may have.
        workers: ranks whose payloads are averaged.
        device: where the codecs run.
    """

    def __init__(
        self, config: AutoConfig, budget: float, workers: int, device: torch.device
    ) -> None:
        self.config = config
        self.budget = budget
        self.workers = workers
        self.choices = candidates(config, workers, device)
        self.labels = [c.label for c in self.choices]
        self.decisions: list[tuple[int, int, str]] = []  # (step, bucket, label)
        self.explained: list[dict[str, Any]] = []  # each decision's inputs and front-runners
        self._decided_bandwidth: float | None = None
        self._redecide_at: int | None = None
        self._moved_steps = 0  # consecutive steps the bandwidth was off the decision's
        self._probe, self._probed_at = DEFAULT_LINK, -1
        self._watch_from = 0

    def due(self, step: int) -> bool:
        """Whether buckets decide again at ``step`` (the same on every rank)."""
        probe = self.config.probe_steps
        if step < probe:
            return False
        return (step - probe) % self.config.redecide_every == 0 or step == self._redecide_at

    def watch(self, step: int, link: LinkModel | None) -> None:
        """After ``step``, with the ranks' averaged link: decide again next step once its
        bandwidth has been off the last decision's by more than a factor
        ``1 + bandwidth_change`` for two steps in a row (one noisy step is not a move)."""
        if link is None or step < self._watch_from:
            return
        if self._decided_bandwidth is None:  # the first fit since the last decision
            self._decided_bandwidth = link.bytes_per_s
            return
        ratio = link.bytes_per_s / self._decided_bandwidth
        moved = max(ratio, 1 / ratio) - 1
        self._moved_steps = self._moved_steps + 1 if moved > self.config.bandwidth_change else 0
        if self._moved_steps >= 2:
            log.info("auto: bandwidth moved %.1fx by step %d; deciding again", ratio, step)
            self._redecide_at = step + 1
            self._decided_bandwidth = link.bytes_per_s  # one decision per move
            self._moved_steps = 0

    def decide(
        self,
        step: int,
        bucket: int,
        values: torch.Tensor,
        group: Group,
        generator: torch.Generator,
        stats: StepStats,
    ) -> Choice:
        """Measure every candidate on ``values`` (this rank's compressed gradient in the
        bucket), agree with the other ranks, and return the fastest within budget."""
        if self._probed_at != step:  # the link, timed once per decision step
            self._probe = probe_link(group, stats, values.device)
            self._probed_at = step
            group.link.clear()  # the online fit starts afresh with the new choices
            self._watch_from = step + 2  # from the first whole step on them
        sample = spread_sample(values.detach().reshape(-1), self.config.sample_numel).float()
        n = group.size
        rows = [measure(c, sample, generator, n) for c in self.choices]
        own = self._probe
        shared = torch.tensor(
            [x for row in rows for x in row] + [own.latency_s, 1.0 / own.bytes_per_s],
            dtype=torch.float32,
            device=values.device,
        )
        if dist.is_initialized() and n > 1:
            all_reduce(stats, group, shared).wait()
            shared /= n
        agreed = shared.double().cpu().tolist()
        latency, inverse = agreed[-2], agreed[-1]
        agreed_link = LinkModel(max(latency, 0.0), 1.0 / inverse if inverse > 0 else 1e12)
        weighed = []  # (predicted s, index, variance, bits per coordinate) within budget
        for index, choice in enumerate(self.choices):
            variance, per_coord, encode_s, decode_s = agreed[4 * index : 4 * index + 4]
            if choice.quantizer.lossy and not variance <= self.budget:
                continue
            seconds = predicted_seconds(
                choice, values.numel(), n, agreed_link, per_coord, encode_s, decode_s
            )
            weighed.append((seconds, index, variance, 8 * per_coord))
        weighed.sort()
        best_s, best = weighed[0][:2]
        self._decided_bandwidth = None  # the online fit's, at the next watch
        self.decisions.append((step, bucket, self.labels[best]))
        self.explained.append({
            "step": step, "bucket": bucket, "numel": values.numel(), "ranks": n,
            "latency_us": 1e6 * agreed_link.latency_s,
            "link_mbit_s": 8 * agreed_link.bytes_per_s / 1e6,
            "fastest": [
                {"choice": self.labels[i], "predicted_ms": 1e3 * s, "rel_variance": v,
                 "wire_bits": b}
                for s, i, v, b in weighed[:3]
            ],
            "fp32_predicted_ms": 1e3 * next(s for s, i, _, _ in weighed if i == 0),
        })  # fmt: skip
        log.info("auto: %s", self.explained[-1])
        return self.choices[best]

    def index(self, label: str) -> int:
        """Return the position of the configuration ``label`` names among the candidates
        (-1 if it is not one: a fallback's wider width)."""
        return self.labels.index(label) if label in self.labels else -1
