"""Lightning training run inside each rank of a multi-process test (tests/utils/ranks.py)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from benchmarks.tasks import TASKS
from lightning_quant import QuantizedDDPStrategy
from lightning_quant.runstore import RunStoreLogger
from tests.lightning_quant.ddp_workers import _shutdown


def fit_digits(
    scheme: str,
    epochs: int,
    seed: int = 0,
    bits: int = 4,
    many_buckets: bool = False,
    precision: str = "32-true",
    accumulate: int = 1,
    error_feedback: bool = False,
    save_to: str | None = None,
    resume_from: str | None = None,
    strategy_name: str | None = None,
    report_to: str | None = None,
    store_logger: bool = True,
    step_sleep: float = 0.0,
    spool_dir: str | None = None,
    quantizer_config: dict | None = None,
    static_graph: bool = False,
    accelerator: str = "cpu",
    coding: str = "packed",
) -> dict:
    """Train the digits MLP on every rank (one node each) and return what the tests check.
    On ``accelerator="gpu"`` the ranks talk over NCCL, else over gloo."""
    world = int(os.environ["WORLD_SIZE"])
    L.seed_everything(seed, workers=True)
    task = TASKS["digits"]
    model = task.model()
    train, test = task.loaders(seed=seed)
    if strategy_name:
        strategy: str | QuantizedDDPStrategy = strategy_name
    else:
        strategy = QuantizedDDPStrategy(
            scheme,
            bits=bits,
            seed=seed,
            error_feedback=error_feedback,
            min_compress_numel=0,
            compress_1d=True,
            bucket_cap_mb=1e-4 if many_buckets else 25,
            process_group_backend="nccl" if accelerator == "gpu" else "gloo",
            report_to=None if store_logger else report_to,
            quantizer_config=quantizer_config,
            static_graph=static_graph,
            coding=coding,
        )
    callbacks: list = [_Sleep(step_sleep)] if step_sleep else []
    loggers: list = [CSVLogger(Path.cwd() / "logs", name=scheme)]
    if report_to and store_logger:  # else the strategy adds one with its defaults
        loggers.append(
            RunStoreLogger(
                report_to,
                name=f"test-{scheme}",
                tags=["test"],
                spool_dir=spool_dir or "spool",
                retry_interval=0.3,
            )
        )
    if save_to:
        callbacks.append(ModelCheckpoint(dirpath=save_to, filename="last", save_top_k=-1))
    trainer = L.Trainer(
        accelerator=accelerator,
        devices=1,
        num_nodes=world,
        strategy=strategy,
        max_epochs=epochs,
        precision=precision,
        accumulate_grad_batches=accumulate,
        logger=loggers,
        log_every_n_steps=1,
        callbacks=callbacks,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
    )
    trainer.fit(model, train, ckpt_path=resume_from)
    tested = trainer.test(model, test, verbose=False)[0]
    used = trainer.strategy
    state = used.comm_state
    stores = [lg for lg in trainer.loggers if isinstance(lg, RunStoreLogger)]
    result = {
        "spooled": stores[0].client.spooled if stores and trainer.is_global_zero else 0,
        "params": [p.detach().cpu().clone() for p in model.parameters()],
        "stats": list(used.stats_history),
        "policy": state.policy.state_dict() if state.policy else None,
        "test_acc": tested["test_acc"],
        "global_step": trainer.global_step,
        "log_dir": trainer.logger.log_dir if trainer.is_global_zero else None,
        "strategy": type(used).__name__,
        "config": used.config_dict(),
    }
    del trainer, used, state, strategy
    _shutdown()
    return result


class _Sleep(Callback):
    """Slow each step down, so a test can act while training is under way."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def on_train_batch_end(self, *args, **kwargs) -> None:
        time.sleep(self.seconds)
