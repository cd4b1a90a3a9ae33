"""DQ-SGD: QSGD whose bit width is chosen afresh at every step.

Yan, Huang, Lan, Song, "DQ-SGD: Dynamic Quantization in SGD for Communication-Efficient
Distributed Learning", https://arxiv.org/abs/2107.14575. The paper minimizes the bits
sent over training subject to a bound on the final convergence error, and obtains a
per-step level count from the gradient norm, the remaining steps and the target error.

The paper's own closed form could not be read here (the stored copies hold its abstract
and introduction only), so the rule below is derived the way the paper describes, and
is documented so that it can be checked against the paper:

For SGD with step ``eta`` on a ``mu``-strongly convex, smooth loss, the error after ``T``
steps is bounded by a contraction term plus ``sum_t (1 - mu eta)^(T-1-t) * V_t`` where
``V_t = d ||g_t||^2 / (4 s_t^2)`` is QSGD's quantization variance at step ``t`` with
``s_t`` uniform levels on buckets of ``d`` coordinates. Minimizing the bits
``sum_t d log2(s_t)`` subject to ``sum_t (1 - mu eta)^(T-1-t) V_t <= epsilon``
(Lagrange multipliers) gives every step the same share ``epsilon / T`` of the budget::

    s_t = ||g_t|| * sqrt(T * d * (1 - mu eta)^(T-1-t) / (4 epsilon))
    bits_t = clip(1 + ceil(log2(s_t + 1)), min_bits, max_bits)

so larger gradients and later steps (whose noise decays less before the end) get more
levels. ``||g_t||`` must be the same on every rank: the DDP hook feeds the previous
step's, as the root of the mean over ranks of each rank's own squared norm (of the
elements it compresses), summed by one all-reduce of a float per step. Not the norm of
the decoded mean: quantization noise inflates that (1.4-1.8x at 4 bits, 2.2-3x at 3, two
stages on 4 ranks), by an amount that depends on the width just used, so a narrow step
would make the next one wider.

With ``n`` workers the error that reaches the model is that of the aggregate, so ``V_t``
is the aggregate's variance, and the same Lagrange argument gives every step the same
share again, with ``V_t`` scaled by a factor ``kappa``::

    s_t = ||g_t|| * sqrt(kappa * T * d * (1 - mu eta)^(T-1-t) / (4 epsilon))

* one stage (all-gather: the mean of ``n`` independent quantizations of gradients of
  about ``||g_t||`` each): the variance is divided by ``n``, ``kappa = 1/n``;
* two stages (the re-quantizing reduce-scatter): the mean is rounded once more, adding
  ``b ||m||^2`` to ``(b + b^2)/n^2 sum_i ||g_i||^2`` (see :mod:`lightning_quant.hooks.paths`),
  so ``kappa = 1 + 1/n``, the ``b^2`` term dropped (it matters only where one step's
  error is as large as the gradient itself).

One worker and one stage is ``kappa = 1``, the formula above. ``epsilon`` keeps its
meaning: the budget for the quantization error of the updates the model really takes.
On the hierarchical path ``n`` is the number of nodes: inside a node nothing is
quantized, and the ranks' norms overstate those of the node means that are, so the rule
errs towards more bits there.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from lightning_quant.quantizers.base import Share, register_quantizer
from lightning_quant.quantizers.bucketed import (
    MAX_BITS,
    MIN_BITS,
    BucketConfig,
    BucketedQuantizer,
    check_bits,
)

__all__ = ["DEFAULT_TOTAL_STEPS", "DQSGD", "DQSGDConfig", "DQSGDPolicy"]

DEFAULT_TOTAL_STEPS = 1000  # the run's length where nothing says it


@dataclass(frozen=True)
class DQSGDConfig(BucketConfig):
    """Settings of DQ-SGD.

    Args:
        bits: width used before the first gradient norm is known.
        bucket_size: coordinates sharing one scale (the ``d`` of the rule).
        min_bits: smallest width the policy may choose (2 to 8).
        max_bits: largest width the policy may choose (``min_bits`` to 8).
        target_error: ``epsilon``, the total quantization-error budget, > 0.
        total_steps: ``T``, the optimizer steps of the run, >= 1; ``None`` (default): the
            trainer's estimated steps under the strategy (:meth:`DQSGD.for_run`), else
            :data:`DEFAULT_TOTAL_STEPS`.
        lr: ``eta``, the SGD step size the bound assumes, > 0.
        mu: ``mu``, the strong-convexity constant the bound assumes, >= 0, ``mu*lr < 1``.
    """

    min_bits: int = 2
    max_bits: int = 8
    target_error: float = 1.0
    total_steps: int | None = None
    lr: float = 0.1
    mu: float = 0.01

    @classmethod
    def settings_for(cls, bits: int, lr: float | None = None) -> dict[str, Any]:
        """``bits`` is the widest the rule may choose, and its bound assumes ``lr``."""
        return {"bits": bits, "max_bits": bits, **({"lr": lr} if lr is not None else {})}

    def __post_init__(self) -> None:
        super().__post_init__()
        check_bits(self.min_bits)
        check_bits(self.max_bits)
        if self.min_bits > self.max_bits:
            raise ValueError(
                f"min_bits ({self.min_bits}) must not exceed max_bits ({self.max_bits})"
            )
        if not self.target_error > 0:
            raise ValueError(f"target_error must be > 0, got {self.target_error!r}")
        if self.total_steps is not None and (
            not isinstance(self.total_steps, int) or self.total_steps < 1
        ):
            raise ValueError(f"total_steps must be a positive integer, got {self.total_steps!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr!r}")
        if not 0 <= self.mu * self.lr < 1:
            raise ValueError(f"mu * lr must lie in [0, 1), got mu={self.mu!r}, lr={self.lr!r}")


class DQSGDPolicy:
    """The per-step choice of bits, and the gradient norm it is made from.

    The hook's state drives it as a :class:`~lightning_quant.quantizers.base.StepPolicy`:
    every rank sums the squares of the elements it compresses (:meth:`observe`); after
    the step's last collective one all-reduce of that float gives the mean over ranks
    (:meth:`end_step`), read at the next step's first bucket (:meth:`begin_step`), whose
    width :meth:`choose` picks from it.

    Example::

        policy = DQSGDPolicy(q.config, workers=4, two_stage=True)
        bits = policy.choose(grad_norm)   # once per optimizer step, same norm on all ranks
        payload = q.encode(bucket, generator, bits=bits)
    """

    def __init__(self, config: DQSGDConfig, workers: int = 1, two_stage: bool = False) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.config = config
        self.workers = workers
        self.two_stage = two_stage
        # the aggregate's variance over one worker's (module docstring)
        self.kappa = 1.0 + 1.0 / workers if two_stage else 1.0 / workers
        self.step = 0
        self.bits = config.bits
        self.widths: dict[int, int] = {}  # steps taken at each width (bounded, unlike a log)
        self.last_grad_norm: float | None = None  # the ranks' previous step, once known
        self._squares: torch.Tensor | None = None  # this step's, so far, on this rank
        self._shared: Callable[[], torch.Tensor] | None = None  # the mean over ranks, pending

    # --- as the hook's step policy --------------------------------------------------------

    def begin_step(self) -> int:
        """Read the previous step's shared norm and return this step's width."""
        self._settle()
        return self.choose(self.last_grad_norm)

    def observe(self, values: torch.Tensor) -> None:
        """Add the squares of elements this rank compresses in this step."""
        total = values.detach().float().pow(2).sum().reshape(1)
        self._squares = total if self._squares is None else self._squares + total

    def end_step(self, share: Share) -> None:
        """Start averaging this step's squared norm over the ranks (one float)."""
        if self._squares is not None:
            self._shared = share(self._squares)
            self._squares = None

    def _settle(self) -> None:
        if self._shared is not None:
            self.last_grad_norm = math.sqrt(float(self._shared()))
            self._shared = None

    # --- the rule -------------------------------------------------------------------------

    def levels_for(self, grad_norm: float, step: int) -> float:
        """Return the rule's (real-valued) level count ``s_t`` at ``step``."""
        c = self.config
        total = c.total_steps or DEFAULT_TOTAL_STEPS
        remaining = max(total - 1 - step, 0)
        decay = (1.0 - c.mu * c.lr) ** remaining
        budget = self.kappa * total * c.bucket_size * decay / (4 * c.target_error)
        return grad_norm * math.sqrt(budget)

    def bits_for(self, grad_norm: float, step: int) -> int:
        """Return the width the rule gives for ``grad_norm`` at ``step``, clipped."""
        if not math.isfinite(grad_norm):
            return self.config.max_bits
        s = self.levels_for(grad_norm, step)
        bits = 1 + math.ceil(math.log2(s + 1)) if s > 0 else MIN_BITS
        return min(max(bits, self.config.min_bits, MIN_BITS), self.config.max_bits, MAX_BITS)

    def choose(self, grad_norm: float | None) -> int:
        """Pick this step's width from the shared gradient norm and advance one step.

        ``None`` (no gradient norm yet, at the first step) keeps the configured bits.
        """
        if grad_norm is not None:
            self.bits = self.bits_for(float(grad_norm), self.step)
            if self.bits != self.config.bits and not self.widths.keys() - {self.config.bits}:
                self._warn_width_moved()
        self.widths[self.bits] = self.widths.get(self.bits, 0) + 1
        self.step += 1
        return self.bits

    def _warn_width_moved(self) -> None:
        """Tell the user, once, that ``bits`` no longer sets the width."""
        c = self.config
        warnings.warn(
            f"dqsgd: bits={c.bits} set only the first step's width; at step {self.step} its "
            f"rule chose {self.bits} bits (between min_bits={c.min_bits} and "
            f"max_bits={c.max_bits}, for target_error={c.target_error}). Steer it with "
            "target_error, min_bits and max_bits",
            UserWarning,
            stacklevel=3,
        )

    def state_dict(self) -> dict[str, Any]:
        self._settle()  # a pending norm belongs to the step being saved
        return {
            "step": self.step,
            "bits": self.bits,
            "widths": dict(self.widths),
            "last_grad_norm": self.last_grad_norm,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])
        self.bits = int(state["bits"])
        self.widths = {int(b): int(n) for b, n in state.get("widths", {}).items()}
        self.last_grad_norm = state.get("last_grad_norm")
        self._squares = self._shared = None


@register_quantizer("dqsgd")
class DQSGD(BucketedQuantizer):
    """QSGD (L2 norm, uniform levels) at the width a :class:`DQSGDPolicy` picks each step.

    ``encode(tensor, generator, bits=...)`` takes the step's width; without it, the
    configured ``bits`` is used.
    """

    config_class = DQSGDConfig
    config: DQSGDConfig

    def make_policy(self, workers: int = 1, two_stage: bool = False) -> DQSGDPolicy:
        """Return a fresh policy for a training run: the hook asks it for every step's width."""
        return DQSGDPolicy(self.config, workers, two_stage)

    def for_run(self, total_steps: int) -> DQSGD:
        """Plan over a run of ``total_steps`` steps, unless ``total_steps`` was set."""
        if self.config.total_steps is not None:
            return self
        return DQSGD(dataclasses.replace(self.config, total_steps=total_steps))
