"""``QuantizedDDPStrategy``: Lightning DDP whose gradients cross the wire quantized.

Example::

    import lightning as L
    import lightning_quant  # registers "ddp_qsgd", "ddp_nuqsgd", ...

    trainer = L.Trainer(strategy="ddp_nuqsgd", accelerator="cpu", devices=2)
    trainer = L.Trainer(strategy=QuantizedDDPStrategy("qsgd", bits=4, error_feedback=True))
"""

from __future__ import annotations

import logging
import time
from collections import deque
from typing import Any

import torch.distributed as dist
from lightning.pytorch.strategies import DDPStrategy, StrategyRegistry
from torch.distributed.device_mesh import DeviceMesh
from torch.nn.parallel import DistributedDataParallel
from typing_extensions import override

from lightning_quant.collectives import AUTO
from lightning_quant.hooks import (
    DEFAULT_MIN_COMPRESS_NUMEL,
    STEP_METRICS,
    QuantizedCommState,
    Scheme,
    available_schemes,
    get_scheme,
    scheme_settings,
)
from lightning_quant.hooks.groups import check_hierarchical, node_mesh, use_hierarchy
from lightning_quant.hooks.stats import METRIC_PREFIX
from lightning_quant.quantizers import Quantizer
from lightning_quant.runstore.logger import CONFIG_KEY, RunStoreLogger

__all__ = ["CHECKPOINT_KEY", "QuantizedDDPStrategy", "STRATEGY_NAMES"]

log = logging.getLogger(__name__)

CHECKPOINT_KEY = "lightning_quant"
HISTORY_STEPS = 100_000  # per-step figures kept in memory


class QuantizedDDPStrategy(DDPStrategy):
    """DDP with quantized gradient exchange, on CPU (gloo) and CUDA (NCCL).

    Args:
        quantizer: a scheme's registry name (every quantizer, the float baselines, and
            PyTorch's own hooks: :func:`~lightning_quant.hooks.available_schemes`), a
            :class:`Quantizer` or a :class:`~lightning_quant.hooks.Scheme`.
        bits: wire bits per coordinate, sign included (ignored by the float baselines).
        bucket_size: coordinates per quantization bucket (bucketed schemes).
        coding: ``"packed"`` (every code at ``bits``) or ``"entropy"`` (the codes rANS-coded
            at about their entropy; CPU only, and not through a summing all-reduce).
        error_feedback: carry each bucket's quantization error into the next step.
        min_compress_numel: parameters with fewer elements go uncompressed (fp32).
        compress_1d: also quantize 1-D parameters (biases, norms); by default they go
            uncompressed, as in PowerSGD and CGX.
        start_step: send the first optimizer steps uncompressed (a warm-up).
        fallback: send a bucket holding NaN or Inf on any rank as fp32 for that step, and
            move a bucket whose measured relative variance exceeds ``max_rel_variance``
            to a wider width or fp32 (:class:`QuantizedCommState`).
        max_rel_variance: that budget (``None``: none, except ``auto``'s own default).
        check_error: also reduce every bucket in fp32 to report the exact
            ``comm/exact_rel_error`` beside the estimated ``comm/rel_error`` (one more
            all-reduce per bucket, not counted).
        collective: ``"auto"`` or a collective the scheme declares (``"allgather"``,
            ``"reduce_scatter"``, ``"allreduce"``); ``auto`` sends the fewest bytes per
            rank: all-gather at 2 ranks, the re-quantizing reduce-scatter from 3 on.
        hierarchical: reduce inside each node at full precision (a reduce-scatter, then
            an all-gather) and quantize only between nodes, with a (node, local)
            ``DeviceMesh`` built from the cluster environment. ``"auto"`` (default): when
            ``num_nodes > 1`` and there is more than one device per node; ``True`` on one
            node or one device per node is turned off with a warning.
        seed: base seed of the quantization noise; rank ``r`` uses ``seed + r``.
        report_to: URL of a lightning-quant run store; adds a :class:`RunStoreLogger` to
            the trainer's loggers.
        quantizer_config: the scheme's further settings (e.g. DQ-SGD's ``target_error``,
            PowerSGD's ``matrix_approximation_rank``).
        **ddp_kwargs: passed to :class:`DDPStrategy` (``process_group_backend``,
            ``bucket_cap_mb``, ``find_unused_parameters``...).

    A scheme that plans over the run's length (DQ-SGD's ``total_steps``) gets the
    trainer's estimated optimizer steps unless its settings give them. At setup
    the strategy describes the run to every logger (``log_hyperparams`` under
    ``"lightning_quant"``); every optimizer step's communication figures go to every logger
    from rank zero, named ``comm/<name>`` for each name in ``STEP_METRICS``. This rank's
    own figures are kept in :attr:`stats_history` (the last 100,000 steps);
    :meth:`compression_stats` gives the latest.
    """

    strategy_name = "ddp_quantized"

    def __init__(
        self,
        quantizer: str | Quantizer | Scheme = "qsgd",
        bits: int = 4,
        bucket_size: int = 512,
        coding: str = "packed",
        error_feedback: bool = False,
        min_compress_numel: int = DEFAULT_MIN_COMPRESS_NUMEL,
        compress_1d: bool = False,
        start_step: int = 0,
        fallback: bool = True,
        max_rel_variance: float | None = None,
        check_error: bool = False,
        collective: str = AUTO,
        hierarchical: bool | str = AUTO,
        seed: int = 0,
        report_to: str | None = None,
        quantizer_config: dict[str, Any] | None = None,
        **ddp_kwargs: Any,
    ) -> None:
        # every setting is checked now, not once training starts
        self.scheme: Scheme = _build_scheme(
            quantizer, {"bits": bits, "bucket_size": bucket_size, "coding": coding},
            quantizer_config or {},
        )  # fmt: skip
        self.scheme.check_collective(collective)
        for key, value in self.scheme.ddp_settings.items():  # what DDP needs for it
            ddp_kwargs.setdefault(key, value)
        super().__init__(**ddp_kwargs)
        self.error_feedback = error_feedback
        self.min_compress_numel = min_compress_numel
        self.compress_1d = compress_1d
        self.start_step = start_step
        self.fallback = fallback
        self.max_rel_variance = max_rel_variance
        self.check_error = check_error
        self.collective = collective
        self.hierarchical = hierarchical
        check_hierarchical(hierarchical)  # an unknown value fails now
        self.seed = seed
        self.report_to = report_to
        self.comm_state: QuantizedCommState | None = None
        self.stats_history: deque[dict[str, float]] = deque(maxlen=HISTORY_STEPS)
        self._pending_state: dict[str, Any] | None = None
        self._step_started: float | None = None

    # --- configuration -------------------------------------------------------------------

    @property
    def scheme_name(self) -> str:
        return self.scheme.name

    def config_dict(self) -> dict[str, Any]:
        """Return the strategy and quantizer settings, as stored with a run."""
        quantizer = self.scheme.config_dict()
        state = self.comm_state
        chosen = state.collective if state is not None else self.collective
        return {
            "scheme": self.scheme_name,
            "bits": self.scheme.bits,
            "bucket_size": quantizer.get("bucket_size"),
            "coding": quantizer.get("coding", "packed"),
            "collective": str(chosen),
            "hierarchical": state.hierarchical if state is not None else self.hierarchical,
            "topology": f"{self.num_nodes}x{len(self.parallel_devices or [None])}",
            "error_feedback": self.error_feedback,
            "min_compress_numel": self.min_compress_numel,
            "compress_1d": self.compress_1d,
            "start_step": self.start_step,
            "fallback": self.fallback,
            # under auto, the configurations comm/choice/<bucket> indexes
            "auto_candidates": state.auto.labels if state is not None and state.auto else None,
            "max_rel_variance": self.max_rel_variance,
            "seed": self.seed,
            "world_size": self.world_size,
            "num_nodes": self.num_nodes,
            "backend": self._get_process_group_backend(),
            "quantizer": quantizer,
        }

    def describe(self) -> dict[str, Any]:
        """Return the run as the strategy knows it, in the run store's field names."""
        config = self.config_dict()
        module = self.lightning_module
        return {
            **{k: config[k] for k in ("scheme", "bits", "coding", "collective", "bucket_size")},
            **{k: config[k] for k in ("world_size", "num_nodes", "topology", "hierarchical")},
            "backend": config["backend"],
            "device": str(self.root_device),
            "model_name": type(module).__name__ if module is not None else None,
            "param_count": sum(p.numel() for p in module.parameters()) if module else None,
            "strategy_config": {k: v for k, v in config.items() if k != "quantizer"},
            "quantizer_config": config["quantizer"],
        }

    @override
    def setup(self, trainer: Any) -> None:
        """Set DDP up, register the hook, then describe the run to every logger."""
        if self.report_to and not any(isinstance(lg, RunStoreLogger) for lg in trainer.loggers):
            trainer.loggers = [*trainer.loggers, RunStoreLogger(self.report_to)]
        super().setup(trainer)
        if self.is_global_zero:
            for logger in trainer.loggers:
                logger.log_hyperparams({CONFIG_KEY: self.describe()})

    @override
    def _register_ddp_hooks(self) -> None:
        """Register the quantized hook on every device type (Lightning's does CUDA only)."""
        assert isinstance(self.model, DistributedDataParallel)
        why = self.scheme.unavailable(self._get_process_group_backend())
        if why:
            raise RuntimeError(f"{self.scheme_name}: {why}")
        steps = self._estimated_steps()
        if steps:
            self.scheme = self.scheme.for_run(steps)
        per_node = len(self.parallel_devices or [None])
        hierarchy = self.scheme.hierarchical and use_hierarchy(
            self.hierarchical, self.world_size, per_node
        )
        state, hook = self.scheme.make_hook(
            error_feedback=self.error_feedback,
            min_compress_numel=self.min_compress_numel,
            compress_1d=self.compress_1d,
            start_step=self.start_step,
            fallback=self.fallback,
            max_rel_variance=self.max_rel_variance,
            check_error=self.check_error,
            collective=self.collective,
            seed=self.seed,
            ranks_per_node=per_node,
            hierarchical=hierarchy,
            mesh=self._node_mesh(per_node) if hierarchy else None,
        )
        self.comm_state = state.bind(self.model)
        if self._pending_state is not None:
            state.load_state_dict(self._pending_state)
            self._pending_state = None
        self.model.register_comm_hook(state, hook)
        log.info("registered %s comm hook on %s", self.scheme_name, self.root_device)

    def _node_mesh(self, per_node: int) -> DeviceMesh:
        """Build the (node, local) mesh from the cluster environment, on every rank."""
        expected = self.node_rank * per_node + self.local_rank
        if self.global_rank != expected:
            raise ValueError(
                f"the hierarchical path needs ranks numbered by node: global rank "
                f"{self.global_rank} is node {self.node_rank}, local {self.local_rank}, "
                f"with {per_node} devices per node (expected {expected})"
            )
        return node_mesh(per_node, self.root_device.type)

    def _estimated_steps(self) -> int | None:
        try:
            steps = self.lightning_module.trainer.estimated_stepping_batches  # type: ignore[union-attr]
        except Exception:  # no trainer attached or an unsized loader
            return None
        return int(steps) if steps != float("inf") and steps > 0 else None

    # --- statistics ----------------------------------------------------------------------

    @override
    def optimizer_step(self, optimizer: Any, closure: Any, model: Any = None, **kwargs: Any) -> Any:
        output = super().optimizer_step(optimizer, closure, model, **kwargs)
        self._record_step()
        return output

    def _record_step(self) -> None:
        """Time the step, keep its figures and send them to every logger from rank zero."""
        if self.comm_state is None or not self.comm_state.current.buckets:
            return
        now = time.perf_counter()
        current = self.comm_state.current
        current.step_s = now - (self._step_started or now)
        self._step_started = now
        stats = self.comm_state.compression_stats()
        self.stats_history.append(stats)
        assert self.lightning_module is not None
        trainer = self.lightning_module.trainer
        if self.is_global_zero:  # at the 0-based step Lightning logs the step's loss at
            metrics = {METRIC_PREFIX + name: float(stats[name]) for name in STEP_METRICS}
            metrics.update(self._choice_metrics())
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=int(stats["step"]))

    def _choice_metrics(self) -> dict[str, float]:
        """Under ``auto``: ``comm/choice/<bucket>``, the position of each bucket's
        configuration in the run's ``auto_candidates``."""
        state = self.comm_state
        if state is None or state.auto is None:
            return {}
        return {
            f"{METRIC_PREFIX}choice/{index}": float(state.auto.index(label))
            for index, label in state.choice_labels().items()
        }

    def compression_stats(self) -> dict[str, float]:
        """Return the latest optimizer step's communication figures on this rank."""
        return dict(self.stats_history[-1]) if self.stats_history else {}

    # --- checkpoints ---------------------------------------------------------------------

    @override
    def save_checkpoint(
        self, checkpoint: dict[str, Any], filepath: Any, storage_options: Any | None = None
    ) -> None:
        """Add every rank's comm state (residuals and random streams differ by rank)."""
        if self.comm_state is not None:
            own = self.comm_state.state_dict()
            states: list[Any] = [None] * self.world_size
            if dist.is_available() and dist.is_initialized():
                dist.all_gather_object(states, own)
            else:
                states = [own]
            checkpoint[CHECKPOINT_KEY] = {"config": self.config_dict(), "ranks": states}
        super().save_checkpoint(checkpoint, filepath, storage_options=storage_options)

    @override
    def load_checkpoint(self, checkpoint_path: Any, weights_only: bool | None = None) -> Any:
        checkpoint = super().load_checkpoint(checkpoint_path, weights_only=False)
        saved = checkpoint.get(CHECKPOINT_KEY)
        if saved:
            ranks = saved["ranks"]
            own = ranks[self.global_rank] if self.global_rank < len(ranks) else ranks[0]
            if self.comm_state is not None:
                self.comm_state.load_state_dict(own)
            else:
                self._pending_state = own
        return checkpoint

    @override
    def on_train_start(self) -> None:
        super().on_train_start()
        self._step_started = time.perf_counter()  # the first step's time starts here

    @override
    def teardown(self) -> None:
        self._step_started = None
        super().teardown()


def _build_scheme(
    quantizer: str | Quantizer | Scheme, shared: dict[str, Any], extra: dict[str, Any]
) -> Scheme:
    """Return the scheme, with the ``shared`` settings (bits, bucket size, coding) where it
    takes them; asking a scheme without codes (floats, PyTorch's hooks) to entropy-code
    is an error, not silently ignored."""
    if not isinstance(quantizer, str):
        if extra:
            raise ValueError("quantizer_config is for names; an instance has its own settings")
        return get_scheme(quantizer)
    takes = scheme_settings(quantizer)  # an unknown name fails here, with the list
    if shared.get("coding", "packed") != "packed" and "coding" not in takes:
        raise ValueError(f"{quantizer} sends no codes to entropy-code; use coding='packed'")
    given = {k: v for k, v in shared.items() if k in takes}
    return get_scheme(quantizer, **{**given, **extra})


STRATEGY_NAMES = {f"ddp_{name}": name for name in available_schemes()}


def _register_strategies() -> None:
    for strategy_name, scheme in STRATEGY_NAMES.items():
        if strategy_name not in StrategyRegistry:
            StrategyRegistry.register(
                strategy_name,
                QuantizedDDPStrategy,
                description=f"DDP with {scheme} gradient exchange (lightning-quant)",
                quantizer=scheme,
            )


_register_strategies()
