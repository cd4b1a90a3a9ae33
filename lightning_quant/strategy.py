"""``QuantizedDDPStrategy``: Lightning DDP whose gradients cross the wire quantized.

Example::

    import lightning as L
    import lightning_quant  # registers "ddp_qsgd", "ddp_nuqsgd", ...

    trainer = L.Trainer(strategy="ddp_nuqsgd", accelerator="cpu", devices=2)
    trainer = L.Trainer(strategy=QuantizedDDPStrategy("qsgd", bits=4, error_feedback=True))
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import deque
from typing import Any

import torch.distributed as dist
from lightning.pytorch.strategies import DDPStrategy, StrategyRegistry
from torch.distributed.device_mesh import DeviceMesh
from torch.nn.parallel import DistributedDataParallel
from typing_extensions import override

from lightning_quant.collectives import AUTO, check_collective
from lightning_quant.hooks import (
    DEFAULT_MIN_COMPRESS_NUMEL,
    PEERS,
    STEP_METRICS,
    QuantizedCommState,
    make_comm_hook,
)
from lightning_quant.hooks.groups import node_mesh
from lightning_quant.hooks.state import check_hierarchical, use_hierarchy
from lightning_quant.hooks.stats import METRIC_PREFIX
from lightning_quant.quantizers import (
    Quantizer,
    available_quantizers,
    get_quantizer,
    quantizer_settings,
)
from lightning_quant.runstore.logger import CONFIG_KEY, RunStoreLogger

__all__ = ["CHECKPOINT_KEY", "QuantizedDDPStrategy", "STRATEGY_NAMES"]

log = logging.getLogger(__name__)

CHECKPOINT_KEY = "lightning_quant"
HISTORY_STEPS = 100_000  # per-step figures kept in memory
SINGLE_BUCKET_MB = 100_000  # PowerSGD's hook is only safe on gloo with one bucket


class QuantizedDDPStrategy(DDPStrategy):
    """DDP with quantized gradient exchange, on CPU (gloo) and CUDA (NCCL).

    Args:
        quantizer: a registry name (``"qsgd"``, ``"qsgd_inf"``, ``"nuqsgd"``, ``"dqsgd"``,
            ``"global_qsgd"``, ``"fp32"``, ``"fp16"``, ``"bf16"``), a PyTorch peer
            (``"torch_fp16"``, ``"torch_powersgd"``) or a :class:`Quantizer` instance.
        bits: wire bits per coordinate, sign included (ignored by the float baselines).
        bucket_size: coordinates per quantization bucket (bucketed schemes).
        error_feedback: carry each bucket's quantization error into the next step.
        min_compress_numel: parameters with fewer elements go uncompressed (fp32).
        compress_1d: also quantize 1-D parameters (biases, norms); by default they go
            uncompressed, as in PowerSGD and CGX.
        start_step: send the first optimizer steps uncompressed (a warm-up).
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
        quantizer_config: further quantizer settings (e.g. DQ-SGD's ``target_error``).
        powersgd_rank: matrix approximation rank for ``"torch_powersgd"``.
        **ddp_kwargs: passed to :class:`DDPStrategy` (``process_group_backend``,
            ``bucket_cap_mb``, ``find_unused_parameters``...).

    DQ-SGD's ``total_steps`` defaults to the trainer's estimated optimizer steps. At setup
    the strategy describes the run to every logger (``log_hyperparams`` under
    ``"lightning_quant"``); every optimizer step's communication figures go to every logger
    from rank zero, named ``comm/<name>`` for each name in ``STEP_METRICS``. This rank's
    own figures are kept in :attr:`stats_history` (the last 100,000 steps);
    :meth:`compression_stats` gives the latest.
    """

    strategy_name = "ddp_quantized"

    def __init__(
        self,
        quantizer: str | Quantizer = "qsgd",
        bits: int = 4,
        bucket_size: int = 512,
        error_feedback: bool = False,
        min_compress_numel: int = DEFAULT_MIN_COMPRESS_NUMEL,
        compress_1d: bool = False,
        start_step: int = 0,
        collective: str = AUTO,
        hierarchical: bool | str = AUTO,
        seed: int = 0,
        report_to: str | None = None,
        quantizer_config: dict[str, Any] | None = None,
        powersgd_rank: int = 4,
        **ddp_kwargs: Any,
    ) -> None:
        if isinstance(quantizer, str) and quantizer in PEERS and PEERS[quantizer].single_bucket:
            ddp_kwargs.setdefault("bucket_cap_mb", SINGLE_BUCKET_MB)
        super().__init__(**ddp_kwargs)
        self.scheme: str | Quantizer = _build_quantizer(
            quantizer, bits, bucket_size, quantizer_config or {}
        )
        if isinstance(self.scheme, Quantizer):  # refuse now, not once training starts
            check_collective(self.scheme.name, self.scheme.collectives, collective)
        # DQ-SGD plans over the run's length unless told otherwise
        self._plan_total_steps = isinstance(quantizer, str) and "total_steps" not in (
            quantizer_config or {}
        )
        self.error_feedback = error_feedback
        self.min_compress_numel = min_compress_numel
        self.compress_1d = compress_1d
        self.start_step = start_step
        self.collective = collective
        self.hierarchical = hierarchical
        check_hierarchical(hierarchical)  # an unknown value fails now
        self.seed = seed
        self.report_to = report_to
        self.powersgd_rank = powersgd_rank
        self.comm_state: QuantizedCommState | None = None
        self.stats_history: deque[dict[str, float]] = deque(maxlen=HISTORY_STEPS)
        self._pending_state: dict[str, Any] | None = None
        self._step_started: float | None = None

    # --- configuration -------------------------------------------------------------------

    @property
    def scheme_name(self) -> str:
        return self.scheme if isinstance(self.scheme, str) else self.scheme.name

    def config_dict(self) -> dict[str, Any]:
        """Return the strategy and quantizer settings, as stored with a run."""
        scheme = self.scheme
        quantizer = scheme.config_dict() if isinstance(scheme, Quantizer) else {}
        state = self.comm_state
        chosen = state.collective if state is not None else self.collective
        return {
            "scheme": self.scheme_name,
            "bits": scheme.bits if isinstance(scheme, Quantizer) else PEERS[scheme].bits,
            "bucket_size": quantizer.get("bucket_size"),
            "collective": str(chosen),
            "hierarchical": state.hierarchical if state is not None else self.hierarchical,
            "topology": f"{self.num_nodes}x{len(self.parallel_devices or [None])}",
            "error_feedback": self.error_feedback,
            "min_compress_numel": self.min_compress_numel,
            "compress_1d": self.compress_1d,
            "start_step": self.start_step,
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
            **{k: config[k] for k in ("scheme", "bits", "collective", "bucket_size")},
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
        scheme = self.scheme
        if isinstance(scheme, Quantizer) and self._plan_total_steps:
            steps = self._estimated_steps()
            if steps and "total_steps" in quantizer_settings(scheme.name):  # DQ-SGD plans
                settings = {**dataclasses.asdict(scheme.config), "total_steps": steps}
                scheme = get_quantizer(scheme.name, **settings)
                self.scheme = scheme
        per_node = len(self.parallel_devices or [None])
        hierarchy = use_hierarchy(self.hierarchical, self.world_size, per_node)
        state, hook = make_comm_hook(
            scheme,
            powersgd_rank=self.powersgd_rank,
            error_feedback=self.error_feedback,
            min_compress_numel=self.min_compress_numel,
            compress_1d=self.compress_1d,
            start_step=self.start_step,
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
        stats = current.as_dict()
        self.stats_history.append(stats)
        assert self.lightning_module is not None
        trainer = self.lightning_module.trainer
        if self.is_global_zero:  # at the 0-based step Lightning logs the step's loss at
            metrics = {METRIC_PREFIX + name: float(stats[name]) for name in STEP_METRICS}
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=int(stats["step"]))

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


def _build_quantizer(
    quantizer: str | Quantizer, bits: int, bucket_size: int, extra: dict[str, Any]
) -> str | Quantizer:
    """Return the quantizer (or peer name), checking every setting now, not mid-training."""
    if isinstance(quantizer, Quantizer):
        if extra:
            raise ValueError("quantizer_config is for names; a Quantizer instance has its own")
        return quantizer
    if quantizer in PEERS:
        return quantizer
    if quantizer not in available_quantizers():
        raise KeyError(
            f"unknown quantizer {quantizer!r}; available: "
            f"{', '.join(available_quantizers() + list(PEERS))}"
        )
    fields = quantizer_settings(quantizer)
    settings = {k: v for k, v in {"bits": bits, "bucket_size": bucket_size}.items() if k in fields}
    return get_quantizer(quantizer, **settings, **extra)


STRATEGY_NAMES = {f"ddp_{name}": name for name in (*available_quantizers(), *PEERS)}


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
