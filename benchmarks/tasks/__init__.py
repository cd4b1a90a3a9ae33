"""Training tasks for tests, sweeps and the demo: real data, real LightningModules.

==========  ===================================================  ============  ===========
task        model and data                                        parameters    follows
==========  ===================================================  ============  ===========
``lm``      GPT-style byte decoder (4 x 512) on the Python       12.9M         val_loss
            standard library's source (:mod:`.lm`)
``cnn``     ResNet-style CNN (batch norm, residual blocks) on    151K          val_acc
            scikit-learn's digits as 8x8 images (:mod:`.cnn`)
``digits``  MLP 64-128-128-10 on scikit-learn's digits           26K           val_acc
``large``   MLP 1024-2048-2048-2048-10 on Gaussian inputs        10.5M         val_acc
            labelled by a random linear teacher: communication-
            bound, for step time and bytes, not accuracy
==========  ===================================================  ============  ===========

``lm-tiny`` and ``cnn-tiny`` are the same code at a size tests run in seconds.
"""

from __future__ import annotations

import functools
import platform
from collections.abc import Callable
from dataclasses import dataclass

import lightning as L
from torch.utils.data import DataLoader

from benchmarks.tasks.cnn import ResNet, image_loaders
from benchmarks.tasks.lm import ByteGPT, lm_loaders
from benchmarks.tasks.mlp import Classifier, digits_loaders, large_loaders

__all__ = ["TASKS", "Task"]


@dataclass(frozen=True)
class Task:
    """A model and its data, by name.

    Attributes:
        target: the validation metric time to target follows; ``higher_is_better`` says
            which way it improves.
        sizes: the layer widths of the MLP tasks (others: empty).
    """

    name: str
    dataset: str
    model_name: str
    lr: float
    build: Callable[[], L.LightningModule]
    loaders: Callable[..., tuple[DataLoader, DataLoader]]
    batch_size: int = 32
    target: str = "val_acc"
    higher_is_better: bool = True
    sizes: tuple[int, ...] = ()

    def model(self) -> L.LightningModule:
        return self.build()


def _mlp(name: str, dataset: str, sizes: tuple[int, ...], lr: float, loaders) -> Task:
    return Task(
        name, dataset, "mlp-" + "-".join(map(str, sizes)), lr,
        functools.partial(Classifier, list(sizes), lr=lr), loaders, sizes=sizes,
    )  # fmt: skip


def _lm(name: str, width: int, layers: int, heads: int, context: int, batch: int) -> Task:
    lr = 1e-3
    stdlib = "python" + ".".join(platform.python_version_tuple()[:2]) + "-stdlib-bytes"
    return Task(
        name, stdlib, f"byte-gpt-{layers}x{width}", lr,
        functools.partial(ByteGPT, width, layers, heads, context, lr=lr),
        functools.partial(lm_loaders, context=context), batch_size=batch,
        target="val_loss", higher_is_better=False,
    )  # fmt: skip


def _cnn(name: str, channels: int) -> Task:
    lr = 0.05
    return Task(
        name, "sklearn-digits-8x8", f"resnet-{channels}", lr,
        functools.partial(ResNet, channels, lr=lr), image_loaders,
    )  # fmt: skip


TASKS: dict[str, Task] = {
    task.name: task
    for task in (
        _mlp("digits", "sklearn-digits", (64, 128, 128, 10), 0.05, digits_loaders),
        _mlp("large", "teacher-gaussian-1024", (1024, 2048, 2048, 2048, 10), 0.01, large_loaders),
        _lm("lm", width=512, layers=4, heads=8, context=64, batch=8),
        _lm("lm-tiny", width=64, layers=2, heads=2, context=32, batch=8),
        _cnn("cnn", channels=32),
        _cnn("cnn-tiny", channels=8),
    )
}
