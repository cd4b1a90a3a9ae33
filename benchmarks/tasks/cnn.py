"""A small ResNet-style CNN on scikit-learn's digits (8x8 grey images, offline).

No larger image set ships with the installed packages (torchvision has no CPU build here,
and scikit-learn's others are downloads), so the digits' 1797 images stand in; the model
has what makes CNNs awkward to compress: batch norm (many small 1-D tensors), residual
blocks, and convolution kernels of a few hundred elements.
"""

from __future__ import annotations

import lightning as L
import torch
from torch import nn

from benchmarks.tasks.mlp import digits_loaders

__all__ = ["ResNet", "image_loaders"]


class Residual(nn.Module):
    """Two 3x3 convolutions with batch norm, added to the input (projected if it changes)."""

    def __init__(self, fan_in: int, fan_out: int, stride: int = 1) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(fan_in, fan_out, 3, stride, 1, bias=False),
            nn.BatchNorm2d(fan_out),
            nn.ReLU(),
            nn.Conv2d(fan_out, fan_out, 3, 1, 1, bias=False),
            nn.BatchNorm2d(fan_out),
        )
        self.skip: nn.Module = nn.Identity()
        if stride != 1 or fan_in != fan_out:
            self.skip = nn.Sequential(
                nn.Conv2d(fan_in, fan_out, 1, stride, bias=False), nn.BatchNorm2d(fan_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.skip(x))


class ResNet(L.LightningModule):
    """A stem, two stages of residual blocks, global pooling and a linear head."""

    def __init__(self, channels: int = 32, lr: float = 0.05, momentum: float = 0.9) -> None:
        super().__init__()
        self.save_hyperparameters()
        c = channels
        self.net = nn.Sequential(
            nn.Conv2d(1, c, 3, 1, 1, bias=False),
            nn.BatchNorm2d(c),
            nn.ReLU(),
            Residual(c, c),
            Residual(c, 2 * c, stride=2),
            Residual(2 * c, 2 * c),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(2 * c, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.view(-1, 1, 8, 8))

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], _: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def _evaluate(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str) -> None:
        x, y = batch
        logits = self(x)
        self.log(f"{stage}_loss", nn.functional.cross_entropy(logits, y), sync_dist=True)
        self.log(f"{stage}_acc", (logits.argmax(1) == y).float().mean(), sync_dist=True)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], _: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], _: int) -> None:
        self._evaluate(batch, "test")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        hp = self.hparams
        return torch.optim.SGD(self.parameters(), lr=hp.lr, momentum=hp.momentum)


image_loaders = digits_loaders  # the same standardized 8x8 digits, seen as images
