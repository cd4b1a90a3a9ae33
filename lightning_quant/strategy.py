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
from torch.nn.parallel import DistributedDataParallel
from typing_extensions import override

from lightning_quant.hooks import (
    DEFAULT_MIN_COMPRESS_NUMEL,
    PEERS,
    QuantizedCommState,
    make_comm_hook,
)
from lightning_quant.quantizers import Quantizer, available_quantizers, get_quantizer
from lightning_quant.quantizers.dqsgd import DQSGD

__all__ = ["CHECKPOINT_KEY", "QuantizedDDPStrategy", "STRATEGY_NAMES"]

log = logging.getLogger(__name__)

CHECKPOINT_KEY = "lightning_quant"
HISTORY_STEPS = 100_000  # per-step figures kept in memory; totals cover the whole run
SUMMED = ("raw_bytes", "wire_bytes", "encode_s", "communicate_s", "decode_s", "step_s")
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
        min_compress_numel: DDP buckets smaller than this go as plain fp32 allreduce.
        seed: base seed of the quantization noise; rank ``r`` uses ``seed + r``.
        report_to: URL of a lightning-quant API; adds the run reporter callback.
        quantizer_config: further quantizer settings (e.g. DQ-SGD's ``target_error``).
        powersgd_rank: matrix approximation rank for ``"torch_powersgd"``.
        **ddp_kwargs: passed to :class:`DDPStrategy` (``process_group_backend``,
            ``bucket_cap_mb``, ``find_unused_parameters``...).

    DQ-SGD's ``total_steps`` defaults to the trainer's estimated optimizer steps. Every
    optimizer step's communication figures are logged from rank zero under ``comm/``, kept
    in :attr:`stats_history` (the last 100,000 steps) and added up in :attr:`totals`;
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
        seed: int = 0,
        report_to: str | None = None,
        quantizer_config: dict[str, Any] | None = None,
        powersgd_rank: int = 4,
        **ddp_kwargs: Any,
    ) -> None:
        if quantizer == "torch_powersgd":
            ddp_kwargs.setdefault("bucket_cap_mb", SINGLE_BUCKET_MB)
        super().__init__(**ddp_kwargs)
        self.scheme: str | Quantizer = _build_quantizer(
            quantizer, bits, bucket_size, quantizer_config or {}
        )
        # DQ-SGD plans over the run's length unless told otherwise
        self._plan_total_steps = isinstance(quantizer, str) and "total_steps" not in (
            quantizer_config or {}
        )
        self.error_feedback = error_feedback
        self.min_compress_numel = min_compress_numel
        self.seed = seed
        self.report_to = report_to
        self.powersgd_rank = powersgd_rank
        self.comm_state: QuantizedCommState | None = None
        self.stats_history: deque[dict[str, float]] = deque(maxlen=HISTORY_STEPS)
        self.steps_recorded = 0
        self.totals: dict[str, float] = dict.fromkeys(SUMMED, 0.0)
        self._pending_state: dict[str, Any] | None = None
        self._step_started: float | None = None

    # --- configuration -------------------------------------------------------------------

    @property
    def scheme_name(self) -> str:
        return self.scheme if isinstance(self.scheme, str) else self.scheme.name

    def config_dict(self) -> dict[str, Any]:
        """Return the strategy and quantizer settings, as stored with a run."""
        quantizer = self.scheme.config_dict() if isinstance(self.scheme, Quantizer) else {}
        return {
            "scheme": self.scheme_name,
            "bits": quantizer.get("bits", _peer_bits(self.scheme_name)),
            "bucket_size": quantizer.get("bucket_size"),
            "error_feedback": self.error_feedback,
            "min_compress_numel": self.min_compress_numel,
            "seed": self.seed,
            "world_size": self.world_size,
            "num_nodes": self.num_nodes,
            "backend": self._get_process_group_backend(),
            "quantizer": quantizer,
        }

    @override
    def setup(self, trainer: Any) -> None:
        if self.report_to and not any(
            type(cb).__name__ == "RunReporter" for cb in trainer.callbacks
        ):
            from lightning_quant.reporting import RunReporter

            trainer.callbacks.append(RunReporter(self.report_to))
        super().setup(trainer)

    @override
    def _register_ddp_hooks(self) -> None:
        """Register the quantized hook on every device type (Lightning's does CUDA only)."""
        assert isinstance(self.model, DistributedDataParallel)
        scheme = self.scheme
        if isinstance(scheme, DQSGD) and self._plan_total_steps:
            steps = self._estimated_steps()
            if steps:
                scheme = type(scheme)(dataclasses.replace(scheme.config, total_steps=steps))
                self.scheme = scheme
        settings: dict[str, Any] = {"powersgd_rank": self.powersgd_rank}
        if self.scheme_name not in PEERS:
            settings.update(
                error_feedback=self.error_feedback,
                min_compress_numel=self.min_compress_numel,
                seed=self.seed,
            )
        else:
            settings["seed"] = self.seed
        state, hook = make_comm_hook(scheme, **settings)
        self.comm_state = state.bind(self.model)
        if self._pending_state is not None:
            state.load_state_dict(self._pending_state)
            self._pending_state = None
        self.model.register_comm_hook(state, hook)
        log.info("registered %s comm hook on %s", self.scheme_name, self.root_device)

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
        if self.comm_state is None or not self.comm_state.current.buckets:
            return
        now = time.perf_counter()
        stats = self.comm_state.compression_stats()
        stats["step_s"] = now - (self._step_started or now)
        self._step_started = now
        self.stats_history.append(stats)
        self.steps_recorded += 1
        for name in SUMMED:
            self.totals[name] += stats[name]
        assert self.lightning_module is not None
        trainer = self.lightning_module.trainer
        if self.is_global_zero:
            metrics = {f"comm/{k}": float(v) for k, v in stats.items() if k != "step"}
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=trainer.global_step)

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
    from lightning_quant.quantizers.base import _REGISTRY

    fields = {f.name for f in dataclasses.fields(_REGISTRY[quantizer].config_class)}
    settings = {k: v for k, v in {"bits": bits, "bucket_size": bucket_size}.items() if k in fields}
    return get_quantizer(quantizer, **settings, **extra)


def _peer_bits(name: str) -> int:
    return 16 if name == "torch_fp16" else 32


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
