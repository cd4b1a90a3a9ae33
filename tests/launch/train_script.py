"""A user's training script, as torchrun or SLURM's srun would launch it on every node.

``Trainer(strategy="ddp_qsgd", num_nodes=2, devices=2)``: the cluster environment comes
from the launcher (torchrun's variables, or SLURM's through Lightning's
``SLURMEnvironment``). For the test that launches it, each rank also writes what it saw to
``<out>/rank<R>.json``: the strategy's per-step figures, the node's interface counter
around the measured steps (read by local rank 0) and a digest of its parameters.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
from pathlib import Path

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import lightning_quant  # noqa: F401 - registers "ddp_qsgd"

WARMUP = 2  # steps before the counter is read: DDP lays its buckets out at step 1


class Regressor(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(256, 1024), nn.ReLU(), nn.Linear(1024, 256))

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], _: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.mse_loss(self.net(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01, momentum=0.9)


class InterfaceBytes(L.Callback):
    """Read this node's interface transmit counter around the measured steps."""

    def __init__(self, steps: int) -> None:
        self.steps = steps
        interface = os.environ.get("GLOO_SOCKET_IFNAME", "lo")
        self.counter = Path("/sys/class/net") / interface / "statistics" / "tx_bytes"
        self.readings: list[int] = []

    def on_train_batch_start(self, trainer: L.Trainer, *_: object) -> None:
        if trainer.global_step == WARMUP:
            self.readings.append(int(self.counter.read_text()))

    def on_train_batch_end(self, trainer: L.Trainer, *_: object) -> None:
        if trainer.global_step == self.steps:
            self.readings.append(int(self.counter.read_text()))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    torch.manual_seed(0)
    data = TensorDataset(torch.randn(4096, 256), torch.randn(4096, 256))
    counter = InterfaceBytes(args.steps)
    trainer = L.Trainer(
        strategy="ddp_qsgd",
        accelerator="cpu",
        num_nodes=2,
        devices=2,
        max_steps=args.steps,
        callbacks=[counter],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    model = Regressor()
    trainer.fit(model, DataLoader(data, batch_size=32))
    strategy = trainer.strategy
    params = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    result = {
        "rank": trainer.global_rank,
        "node": trainer.node_rank,
        "local": trainer.local_rank,
        "environment": type(strategy.cluster_environment).__name__,
        "hierarchical": strategy.comm_state.hierarchical,
        "steps": list(strategy.stats_history),
        "tx_bytes": counter.readings,
        "digest": hashlib.sha256(params.numpy().tobytes()).hexdigest(),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"rank{trainer.global_rank}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main()
