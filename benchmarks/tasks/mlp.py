"""MLP classifiers: scikit-learn's digits, and a 10.5M-parameter model on teacher data."""

from __future__ import annotations

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

__all__ = ["Classifier", "digits_loaders", "large_loaders", "tensor_dataset"]


class Classifier(L.LightningModule):
    """An MLP classifier trained with SGD; logs loss and accuracy."""

    def __init__(self, sizes: list[int], lr: float = 0.1, momentum: float = 0.9) -> None:
        super().__init__()
        self.save_hyperparameters()
        layers: list[nn.Module] = []
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:], strict=True):
            layers += [nn.Linear(fan_in, fan_out), nn.ReLU()]
        self.net = nn.Sequential(*layers[:-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], _: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def _evaluate(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str) -> None:
        x, y = batch
        logits = self(x)
        self.log(f"{stage}_loss", nn.functional.cross_entropy(logits, y), sync_dist=True)
        accuracy = (logits.argmax(1) == y).float().mean()
        self.log(f"{stage}_acc", accuracy, sync_dist=True, prog_bar=True)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], _: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], _: int) -> None:
        self._evaluate(batch, "test")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        hp = self.hparams
        return torch.optim.SGD(self.parameters(), lr=hp.lr, momentum=hp.momentum)


def digits_loaders(batch_size: int = 32, seed: int = 0) -> tuple[DataLoader, DataLoader]:
    """Return train and test loaders over scikit-learn's digits (80/20, standardized)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.2, random_state=seed, stratify=y
    )
    # pixels constant in the training split keep their scale: dividing by a zero spread
    # made the held-out images' values there a million times too large (losses of 1000s)
    mean, std = x_train.mean(0), x_train.std(0)
    std[std == 0] = 1.0
    train = tensor_dataset((x_train - mean) / std, y_train)
    test = tensor_dataset((x_test - mean) / std, y_test)
    return DataLoader(train, batch_size, shuffle=True), DataLoader(test, 256)


def large_loaders(
    batch_size: int = 32, seed: int = 0, samples: int = 2048
) -> tuple[DataLoader, DataLoader]:
    """Return loaders of Gaussian inputs labelled by a fixed random linear teacher."""
    gen = torch.Generator().manual_seed(seed)
    teacher = torch.randn(1024, 10, generator=gen)
    x = torch.randn(samples, 1024, generator=gen)
    y = (x @ teacher).argmax(1)
    split = samples * 4 // 5
    train = TensorDataset(x[:split], y[:split])
    test = TensorDataset(x[split:], y[split:])
    return DataLoader(train, batch_size, shuffle=True), DataLoader(test, 256)


def tensor_dataset(x, y) -> TensorDataset:
    return TensorDataset(torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y))
