"""The state a quantized DDP hook keeps: settings, per-step memory and statistics."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import DeviceMesh

from lightning_quant.collectives import AUTO, Collective, choose_collective
from lightning_quant.hooks.auto import (
    DEFAULT_MAX_REL_VARIANCE,
    AutoChooser,
    AutoConfig,
    Choice,
    over_budget,
)
from lightning_quant.hooks.errors import StepErrors, step_errors
from lightning_quant.hooks.feedback import ResidualMemory
from lightning_quant.hooks.groups import (
    Group,
    detect_ranks_per_node,
    mesh_groups,
    node_mesh,
    use_hierarchy,
    world_group,
)
from lightning_quant.hooks.link import LinkModel
from lightning_quant.hooks.pipeline import Pipeline, all_reduce
from lightning_quant.hooks.plan import BucketPlan
from lightning_quant.hooks.stats import StepStats
from lightning_quant.quantizers import Quantizer, get_quantizer

__all__ = ["DEFAULT_MIN_COMPRESS_NUMEL", "QuantizedCommState"]

log = logging.getLogger(__name__)

DEFAULT_MIN_COMPRESS_NUMEL = 1024


class QuantizedCommState:
    """Settings, per-bucket memory and statistics of :func:`quantized_hook`.

    Args:
        quantizer: a :class:`Quantizer` or a registry name (then ``**quantizer_config``).
        process_group: the group to reduce over (default: the whole world).
        error_feedback: add each bucket's previous quantization error before encoding.
        min_compress_numel: parameters with fewer elements go uncompressed (one fp32
            all-reduce per bucket of what it holds of them), as PyTorch's PowerSGD and
            CGX keep small layers at full precision.
        compress_1d: also quantize 1-D parameters (biases, norms' scales); by default they
            go uncompressed.
        start_step: the first optimizer steps go uncompressed (a warm-up, as PowerSGD's
            ``start_powerSGD_iter`` and DeepSpeed's ``freeze_step``).
        seed: base seed; rank ``r`` draws from its own stream seeded ``seed + r``.
        collective: ``"auto"``, or one the scheme declares (``"allgather"``,
            ``"reduce_scatter"``, ``"allreduce"``); see
            :func:`lightning_quant.collectives.choose_collective`.
        ranks_per_node: ranks on each node, ordered by node (global rank ``r`` is on node
            ``r // ranks_per_node``): for counting the bytes that leave a node, and the
            hierarchical path's layout. ``None`` (default) takes it from the launcher
            (:func:`~lightning_quant.hooks.groups.detect_ranks_per_node`).
        hierarchical: reduce inside each node at full precision and quantize only between
            nodes (:func:`~lightning_quant.hooks.paths.hierarchical`); ``"auto"`` (default)
            does when there is more than one node and more than one rank per node, and
            ``True`` on one node, or with one rank per node, is turned off with a warning.
        mesh: the (node, local) :class:`~torch.distributed.device_mesh.DeviceMesh` of the
            hierarchical path; built from ``ranks_per_node`` when not given (collectively:
            every rank must construct its state).
        intra_dtype: the float dtype the hierarchical path reduces in inside a node.
        max_rel_variance: the budget of a bucket's measured relative variance
            ``||Q(v)-v||^2/||v||^2``: a bucket over it goes to a wider width, or fp32, from
            the next step on (:func:`~lightning_quant.hooks.auto.wider`). ``None``: no
            budget (``auto`` defaults it to
            :data:`~lightning_quant.hooks.auto.DEFAULT_MAX_REL_VARIANCE`).
        fallback: send a bucket holding NaN or Inf on any rank as fp32 for that step, and
            apply ``max_rel_variance``; ``False`` turns both off.
        check_error: also all-reduce every bucket in fp32 (one more collective per bucket,
            not counted in the figures) and report the exact ``exact_rel_error`` beside
            the estimate ``rel_error``.
        auto: settings of ``quantizer="auto"`` (then ``quantizer`` is where buckets start),
            which chooses each bucket's configuration
            (:class:`~lightning_quant.hooks.auto.AutoChooser`).
    """

    def __init__(
        self,
        quantizer: Quantizer | str = "qsgd",
        process_group: dist.ProcessGroup | None = None,
        error_feedback: bool = False,
        min_compress_numel: int = DEFAULT_MIN_COMPRESS_NUMEL,
        seed: int = 0,
        collective: str = AUTO,
        compress_1d: bool = False,
        start_step: int = 0,
        ranks_per_node: int | None = None,
        hierarchical: bool | str = AUTO,
        mesh: DeviceMesh | None = None,
        intra_dtype: torch.dtype = torch.float32,
        max_rel_variance: float | None = None,
        fallback: bool = True,
        check_error: bool = False,
        auto: AutoConfig | None = None,
        **quantizer_config: Any,
    ) -> None:
        # settings
        if isinstance(quantizer, str):
            quantizer = get_quantizer(quantizer, **quantizer_config)
        elif quantizer_config:
            raise ValueError("pass settings either in the Quantizer instance or as keywords")
        if min_compress_numel < 0:
            raise ValueError(f"min_compress_numel must be >= 0, got {min_compress_numel}")
        if start_step < 0:
            raise ValueError(f"start_step must be >= 0, got {start_step}")
        if ranks_per_node is None:
            ranks_per_node = detect_ranks_per_node(process_group)
        if ranks_per_node < 1:
            raise ValueError(f"ranks_per_node must be >= 1, got {ranks_per_node}")
        if max_rel_variance is not None and not max_rel_variance > 0:
            raise ValueError(f"max_rel_variance must be > 0, got {max_rel_variance}")
        self.quantizer = quantizer
        self.error_feedback = error_feedback and (quantizer.lossy or auto is not None)
        self.max_rel_variance = max_rel_variance
        self.fallback = fallback
        self.check_error = check_error
        self.min_compress_numel = min_compress_numel
        self.compress_1d = compress_1d
        self.start_step = start_step
        self.seed = seed
        if not intra_dtype.is_floating_point:
            raise ValueError(f"intra_dtype must be a float dtype, got {intra_dtype}")
        self.intra_dtype = intra_dtype
        self.group: Group = world_group(process_group, ranks_per_node)
        self.hierarchical = use_hierarchy(hierarchical, self.group.size, ranks_per_node)
        self.local_group: Group | None = None  # the hierarchical path's groups
        self.node_group: Group | None = None
        if self.hierarchical and dist.is_initialized():
            if mesh is None:
                backend = dist.get_backend(process_group)
                mesh = node_mesh(ranks_per_node, "cuda" if backend == "nccl" else "cpu")
            self.local_group, self.node_group = mesh_groups(mesh)
        # the quantized collective runs among one rank per node on the hierarchical path
        reducing = self.reducing
        quantizer.check_collective(collective)
        self.collective = choose_collective(
            quantizer.name, quantizer.reducible_with(), collective, reducing.size,
            quantizer.allreduce_limit(),
        )  # fmt: skip
        quantizer.check_reduction(reducing.size, self.collective)
        # internal state
        self.step = 0
        self.bits = quantizer.bits  # this step's width (a policy's choice, else the scheme's)
        two_stage = self.collective is Collective.REDUCE_SCATTER
        self.policy = quantizer.make_policy(workers=reducing.size, two_stage=two_stage)
        self._param_names: dict[int, str] = {}
        self._plans: dict[int, BucketPlan] = {}  # by bucket index
        self.worker_residuals = ResidualMemory()  # what this rank's encoding lost
        self.owner_residuals = ResidualMemory()  # what re-encoding its owned shards lost
        self._generators: dict[torch.device, torch.Generator] = {}
        self.pipeline = Pipeline()  # buckets whose later stages wait for a hook body
        self._world_checked = False
        self.default_choice = Choice(quantizer, self.collective)
        self.choices: dict[int, Choice] = {}  # by bucket: fallbacks and auto's decisions
        self.auto_config = auto
        self.auto: AutoChooser | None = None  # built on the first bucket's device
        self.agreed_link: LinkModel | None = None  # the ranks' mean fit, after each step
        self._shared: tuple[dist.Work, torch.Tensor, StepErrors, StepStats] | None = None
        # statistics
        self.current = StepStats(world_size=self.group.size)
        self.errors = StepErrors()  # the current step's, by bucket

    @property
    def rank(self) -> int:
        return self.group.index

    @property
    def world_size(self) -> int:
        return self.group.size

    @property
    def reducing(self) -> Group:
        """The group the quantized collectives run in (one rank per node, hierarchically)."""
        return self.node_group or self.group

    # --- setup ---------------------------------------------------------------------------

    def bind(self, model: nn.Module) -> QuantizedCommState:
        """Learn the parameter names of ``model`` and check it can be quantized.

        Names make error-feedback residuals portable across bucket layouts and
        checkpoints. Raises ``TypeError`` for a trainable non-floating parameter.
        """
        if isinstance(model, nn.parallel.DistributedDataParallel):
            self.check_world(dist.get_world_size(model.process_group))
            module = model.module
        else:
            module = model
        device = None
        for name, param in module.named_parameters():
            if param.requires_grad and not param.is_floating_point():
                raise TypeError(f"parameter {name!r} is {param.dtype}: only floating gradients")
            self._param_names[id(param)] = name
            device = param.device
        if device is not None:  # compile the codec now, not inside the first timed step
            self.quantizer.warm_up(device)
            self._auto_on(device)
        return self

    def check_world(self, world_size: int) -> None:
        """Raise ``RuntimeError`` unless this state was built for a world of ``world_size``.

        A state made before ``init_process_group`` describes a world of one rank; its
        first all-gather would fail deep inside gloo or NCCL with a size mismatch.
        """
        if world_size != self.world_size:
            before = ""
            if not dist.is_initialized() or self.world_size == 1:
                before = " (it was built before torch.distributed.init_process_group)"
            raise RuntimeError(
                f"this comm state was built for {self.world_size} rank(s){before}, but the "
                f"model reduces over {world_size}: call torch.distributed.init_process_group "
                "first, then make_comm_hook (or QuantizedCommState), then register the hook"
            )

    def generator(self, device: torch.device) -> torch.Generator:
        """Return this rank's random stream on ``device`` (seeded ``seed + rank``)."""
        if device not in self._generators:
            gen = torch.Generator(device=device)
            gen.manual_seed(self.seed + self.rank)
            self._generators[device] = gen
        return self._generators[device]

    def plan(self, bucket: dist.GradBucket) -> BucketPlan:
        """Say which of the bucket's elements go compressed (cached per bucket layout)."""
        params = bucket.parameters()
        ids = tuple(id(p) for p in params)
        cached = self._plans.get(bucket.index())
        if cached is None or cached.ids != ids:
            cached = BucketPlan.of(bucket.index(), params, self._param_names, self._compresses)
            self._plans[bucket.index()] = cached
        return cached

    def _compresses(self, param: torch.Tensor) -> bool:
        return param.numel() >= self.min_compress_numel and (param.dim() > 1 or self.compress_1d)

    @property
    def warming_up(self) -> bool:
        """Whether this step goes uncompressed (before ``start_step``)."""
        return self.step < self.start_step

    # --- per-step bookkeeping --------------------------------------------------------------

    def begin_bucket(self, bucket: dist.GradBucket) -> StepStats:
        """Count the bucket; at bucket 0 settle the last step and open a new one."""
        if bucket.index() == 0:
            if not self._world_checked:
                size = dist.get_world_size(self.group.process_group) if dist.is_initialized() else 1
                self.check_world(size)
                self._world_checked = True
            self.settle_errors()
            if self.current.buckets:
                self.step += 1
            self.bits = self.policy.begin_step() if self.policy else self.quantizer.bits
            self.current = StepStats(step=self.step, world_size=self.world_size, bits=self.bits)
            self.errors = StepErrors()
        tensor = bucket.buffer()
        self.current.add(buckets=1, raw_bytes=tensor.numel() * tensor.element_size())
        return self.current

    def choice(self, index: int, plan: BucketPlan, tensor: torch.Tensor) -> Choice:
        """Return how bucket ``index`` goes this step (``auto`` decides here when due)."""
        self._auto_on(tensor.device)
        if self.auto is not None and self.auto.due(self.step):
            values = torch.cat([tensor[a:b] for a, b, kind in plan.runs if kind])
            generator, group = self.generator(tensor.device), self.reducing
            decide = self.auto.decide
            self.choices[index] = decide(self.step, index, values, group, generator, self.current)
        return self.choices.get(index, self.default_choice)

    def _auto_on(self, device: torch.device) -> None:
        if self.auto_config is not None and self.auto is None:
            budget = self.max_rel_variance or DEFAULT_MAX_REL_VARIANCE
            self.auto = AutoChooser(self.auto_config, budget, self.reducing.size, device)

    def exact_mean(self, tensor: torch.Tensor) -> torch.Tensor:
        """Return the exact fp32 mean of ``tensor`` over the group (``check_error``)."""
        exact = tensor.detach().float().clone()
        if dist.is_initialized() and self.world_size > 1:
            dist.all_reduce(exact, group=self.group.process_group)
        return exact.div_(self.world_size)

    def observe(self, tensor: torch.Tensor, plan: BucketPlan) -> None:
        """Show the scheme's step policy, if any, the elements of ``tensor`` it compresses."""
        if self.policy is not None:
            for start, end, compressed in plan.runs:
                if compressed:
                    self.policy.observe(tensor[start:end])

    def end_step(self, stats: StepStats) -> None:
        """After the step's last collective is launched, share what the step measured.

        The policy's sums, then the buckets' error sums and link fits
        (:mod:`~lightning_quant.hooks.errors`): one all-reduce each, launched after every
        other collective of the step (so in the same order on every rank) and read when
        the step's figures are, or at the next step's start.
        """
        if self.policy is not None:
            self.policy.end_step(functools.partial(self._mean_over_ranks, stats))
        if not self.errors.encoded and self.auto is None:
            return  # all of it went as fp32 (the same on every rank): nothing to share
        device = next(iter(self._generators), torch.device("cpu"))
        shared = self.errors.shared(stats.buckets, self.reducing.link.model(), device)
        self._shared = (all_reduce(stats, self.group, shared), shared, self.errors, stats)

    def settle_errors(self) -> None:
        """Read the last step's shared errors: its figures, the agreed link, and the
        fallbacks of buckets over budget (the same on every rank)."""
        if self._shared is None:
            return
        work, shared, errors, stats = self._shared
        self._shared = None
        work.wait()
        buckets, self.agreed_link = errors.agreed(shared)
        stats.rel_error, stats.rel_variance = step_errors(buckets)
        stats.exact_rel_error = errors.exact_rel_error() or 0.0
        stats.link_bytes_per_s = self.agreed_link.bytes_per_s if self.agreed_link else 0.0
        if self.auto is not None:
            self.auto.watch(stats.step, self.agreed_link)
        if self.fallback and self.max_rel_variance is not None:
            stats.fallbacks += over_budget(
                buckets, self.choices, self.default_choice, self.max_rel_variance,
                self.reducing.size, self.policy is not None, stats.step,
            )  # fmt: skip

    def _mean_over_ranks(
        self, stats: StepStats, tensor: torch.Tensor
    ) -> Callable[[], torch.Tensor]:
        work = all_reduce(stats, self.group, tensor)

        def mean() -> torch.Tensor:
            work.wait()
            return tensor / self.world_size

        return mean

    def compression_stats(self) -> dict[str, float]:
        """Return the figures of the latest step (complete once its backward has finished)."""
        self.settle_errors()
        return self.current.as_dict()

    def choice_labels(self) -> dict[int, str]:
        """Return each bucket's configuration this step, by bucket index."""
        buckets = range(self.current.buckets)
        return {i: self.choices.get(i, self.default_choice).label for i in buckets}

    # --- checkpointing ---------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Return this rank's step, policy, residuals (by parameter) and random streams."""
        done = bool(self.current.buckets)  # the current step's backward has finished
        return {
            "step": self.step + done,
            "rank": self.rank,
            "world_size": self.world_size,
            "collective": str(self.collective),
            "hierarchical": self.hierarchical,
            "policy": self.policy.state_dict() if self.policy is not None else None,
            "residuals": self.worker_residuals.state_dict(),
            "owner_residuals": self.owner_residuals.state_dict(),
            "generators": {str(d): g.get_state() for d, g in self._generators.items()},
            "choices": {i: c.state_dict() for i, c in self.choices.items()},  # by bucket
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved; residuals attach to their buckets lazily."""
        # residuals are laid out by rank, collective and path: only the same layout keeps them
        saved = (state.get("world_size"), state.get("collective"), state.get("hierarchical"))
        now = (self.world_size, str(self.collective), self.hierarchical)
        same_layout = saved == now
        if not same_layout:
            log.warning(
                "comm state saved for (world size, collective, hierarchical) %s, now %s: "
                "starting error feedback afresh",
                saved, now,
            )  # fmt: skip
        self.step = int(state["step"])
        if self.policy is not None and state.get("policy") is not None:
            self.policy.load_state_dict(state["policy"])
        for name, gen_state in state.get("generators", {}).items():
            self.generator(torch.device(name)).set_state(gen_state)
        kept = state if same_layout else {}  # and the buckets' choices, by index
        self.worker_residuals.load_state_dict(kept.get("residuals", {}))
        self.owner_residuals.load_state_dict(kept.get("owner_residuals", {}))
        self.choices = {int(i): Choice.from_state(c) for i, c in kept.get("choices", {}).items()}
        self.current = StepStats(step=self.step, world_size=self.world_size)
