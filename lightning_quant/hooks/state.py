"""The state a quantized DDP hook keeps: settings, per-step memory and statistics."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import DeviceMesh

from lightning_quant.collectives import AUTO, Collective, choose_collective
from lightning_quant.hooks.feedback import Layout, ResidualMemory
from lightning_quant.hooks.groups import (
    Group,
    detect_ranks_per_node,
    mesh_groups,
    node_mesh,
    world_group,
)
from lightning_quant.hooks.pipeline import Pipeline, all_reduce
from lightning_quant.hooks.stats import StepStats
from lightning_quant.quantizers import Quantizer, get_quantizer

__all__ = [
    "DEFAULT_MIN_COMPRESS_NUMEL",
    "BucketPlan",
    "QuantizedCommState",
    "check_hierarchical",
    "use_hierarchy",
]

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
        self.quantizer = quantizer
        self.error_feedback = error_feedback and quantizer.lossy
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
        reducing = self.node_group or self.group
        quantizer.check_collective(collective)
        self.collective = choose_collective(
            quantizer.name,
            quantizer.reducible_with(),
            collective,
            reducing.size,
            quantizer.allreduce_limit(),
        )
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
        # statistics
        self.current = StepStats(world_size=self.group.size)

    @property
    def rank(self) -> int:
        return self.group.index

    @property
    def world_size(self) -> int:
        return self.group.size

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
        """Count the bucket; at bucket 0 open a new step and take its width."""
        if bucket.index() == 0:
            if not self._world_checked:
                size = dist.get_world_size(self.group.process_group) if dist.is_initialized() else 1
                self.check_world(size)
                self._world_checked = True
            if self.current.buckets:
                self.step += 1
            self.bits = self.policy.begin_step() if self.policy else self.quantizer.bits
            self.current = StepStats(step=self.step, world_size=self.world_size, bits=self.bits)
        tensor = bucket.buffer()
        self.current.add(buckets=1, raw_bytes=tensor.numel() * tensor.element_size())
        return self.current

    def observe(self, tensor: torch.Tensor, plan: BucketPlan) -> None:
        """Show the scheme's step policy, if any, the elements of ``tensor`` it compresses."""
        if self.policy is not None:
            for start, end, compressed in plan.runs:
                if compressed:
                    self.policy.observe(tensor[start:end])

    def end_step(self, stats: StepStats) -> None:
        """After the step's last collective is launched, let the policy share what it needs.

        Its sums are one more all-reduce per step, launched after every other collective of
        the step (so in the same order on every rank) and read at the next step's start.
        """
        if self.policy is not None:
            self.policy.end_step(functools.partial(self._mean_over_ranks, stats))

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
        return self.current.as_dict()

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
        self.worker_residuals.load_state_dict(state.get("residuals", {}) if same_layout else {})
        self.owner_residuals.load_state_dict(
            state.get("owner_residuals", {}) if same_layout else {}
        )
        self.current = StepStats(step=self.step, world_size=self.world_size)


def check_hierarchical(hierarchical: bool | str) -> None:
    """Raise ``ValueError`` unless ``hierarchical`` is ``True``, ``False`` or ``"auto"``."""
    if hierarchical not in (True, False, AUTO):
        raise ValueError(f"hierarchical must be True, False or 'auto', got {hierarchical!r}")


def use_hierarchy(hierarchical: bool | str, world_size: int, ranks_per_node: int) -> bool:
    """Resolve ``hierarchical`` (``True``, ``False`` or ``"auto"``) for this layout.

    It is on when there are several nodes of several ranks each: ``"auto"`` turns it on
    there, and ``True`` anywhere else is turned off with a warning (one node, or one rank
    per node: the path would quantize through one-rank groups for nothing).

    Raises:
        ValueError: an unknown value, or ``True`` for a world that is not a whole number
            of nodes of ``ranks_per_node`` ranks.
    """
    check_hierarchical(hierarchical)
    fits = world_size % ranks_per_node == 0
    if hierarchical is True and not fits:
        raise ValueError(
            f"a world of {world_size} ranks does not fit nodes of {ranks_per_node} ranks; "
            "the hierarchical path needs every node to hold the same number of ranks"
        )
    useful = fits and ranks_per_node > 1 and world_size // ranks_per_node > 1
    if hierarchical is True and not useful:
        nodes = world_size // ranks_per_node
        log.warning(
            "hierarchical=True turned off: %d node(s) of %d rank(s) leave nothing to reduce "
            "%s; using the flat path",
            nodes, ranks_per_node, "between nodes" if nodes == 1 else "inside a node",
        )  # fmt: skip
    return useful if hierarchical in (True, AUTO) else False


@dataclass(frozen=True)
class BucketPlan:
    """Which elements of a DDP bucket go compressed, by parameter.

    Attributes:
        ids: ``id`` of each parameter, in bucket order (to notice a new layout).
        runs: ``(start, end, compressed)`` runs of consecutive elements.
        compressed: the layout of the compressed parameters, packed one after the other.
        plain: the layout of the rest.
    """

    ids: tuple[int, ...]
    runs: tuple[tuple[int, int, bool], ...]
    compressed: Layout
    plain: Layout

    @classmethod
    def of(
        cls,
        index: int,
        params: list[torch.Tensor],
        names: dict[int, str],
        compresses: Callable[[torch.Tensor], bool],
    ) -> BucketPlan:
        runs: list[tuple[int, int, bool]] = []
        groups: dict[bool, list[tuple[str, int]]] = {True: [], False: []}
        offset = 0
        for param in params:
            kind = compresses(param)
            groups[kind].append((names.get(id(param), f"param@{id(param)}"), param.numel()))
            end = offset + param.numel()
            if runs and runs[-1][2] == kind:
                runs[-1] = (runs[-1][0], end, kind)
            else:
                runs.append((offset, end, kind))
            offset = end

        def layout(kind: bool) -> Layout:
            keys, sizes = zip(*groups[kind], strict=True) if groups[kind] else ((), ())
            return Layout(index, tuple(keys), tuple(sizes))

        return cls(tuple(id(p) for p in params), tuple(runs), layout(True), layout(False))

    @property
    def mixed(self) -> bool:
        return len({kind for _, _, kind in self.runs}) > 1

    @property
    def compresses_any(self) -> bool:
        return any(kind for _, _, kind in self.runs)
