"""A GPT-style byte-level language model on the Python standard library's own source.

The corpus is already on every machine that runs this project, with no download: the
top-level modules (``*.py``) of the standard library of the Python that runs it
(``sysconfig.get_paths()["stdlib"]``; Python 3.11's hold 168 files, 4.7 MB). Files are
taken in name order; every 20th file is held out for validation, so the split is fixed.
Tokens are bytes (a vocabulary of 256): no tokenizer to download or train.

The model is a pre-LayerNorm decoder (PyTorch's ``TransformerEncoderLayer`` under a
causal mask): token and position embeddings, ``layers`` blocks of attention and a GELU
MLP (biases and LayerNorms included, as the many small 1-D tensors of real models),
a final LayerNorm and a linear head. AdamW, no warm-up schedule.
"""

from __future__ import annotations

import functools
import hashlib
import sysconfig
from pathlib import Path

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

__all__ = ["ByteGPT", "corpus", "lm_loaders"]

HELD_OUT_EVERY = 20  # every 20th file (in name order) is validation text
TRAIN_WINDOWS = 50_000  # random windows per epoch of the training set
VAL_WINDOWS = 256  # fixed, evenly spaced windows of the held-out text


@functools.cache
def corpus() -> tuple[bytes, bytes, str]:
    """Return (training text, held-out text, a short digest naming the corpus)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(root.glob("*.py"))
    if not files:
        raise FileNotFoundError(f"no Python source in {root}: the lm task needs its stdlib")
    train = b"".join(f.read_bytes() for i, f in enumerate(files) if i % HELD_OUT_EVERY)
    held_out = b"".join(f.read_bytes() for i, f in enumerate(files) if not i % HELD_OUT_EVERY)
    digest = hashlib.sha256(train + held_out).hexdigest()[:8]
    return train, held_out, digest


class Windows(Dataset):
    """Windows of ``context + 1`` bytes of ``text``: input bytes and the next byte of each."""

    def __init__(self, text: bytes, context: int, starts: torch.Tensor) -> None:
        self.data = torch.frombuffer(bytearray(text), dtype=torch.uint8)
        self.context = context
        self.starts = starts

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        start = int(self.starts[index])
        window = self.data[start : start + self.context + 1].long()
        return window[:-1], window[1:]


def lm_loaders(
    batch_size: int = 8, seed: int = 0, context: int = 64
) -> tuple[DataLoader, DataLoader]:
    """Return loaders of random training windows (seeded) and the fixed held-out windows."""
    train, held_out, _ = corpus()
    gen = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, len(train) - context - 1, (TRAIN_WINDOWS,), generator=gen)
    val_starts = torch.linspace(0, len(held_out) - context - 2, VAL_WINDOWS).long()
    return (
        DataLoader(Windows(train, context, starts), batch_size, shuffle=True),
        DataLoader(Windows(held_out, context, val_starts), 64),
    )


class ByteGPT(L.LightningModule):
    """A decoder-only transformer over bytes; logs loss and next-byte accuracy."""

    def __init__(
        self,
        width: int = 512,
        layers: int = 4,
        heads: int = 8,
        context: int = 64,
        lr: float = 1e-3,
        weight_decay: float = 0.01,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.embed = nn.Embedding(256, width)
        self.position = nn.Embedding(context, width)
        block = nn.TransformerEncoderLayer(
            width, heads, 4 * width, dropout=0.0, activation="gelu", batch_first=True,
            norm_first=True,
        )  # fmt: skip
        self.blocks = nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, 256)
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(context))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return next-byte logits, shape ``(batch, time, 256)``."""
        steps = x.shape[1]
        h = self.embed(x) + self.position(torch.arange(steps, device=x.device))
        h = self.blocks(h, mask=self.mask[:steps, :steps], is_causal=True)
        return self.head(self.norm(h))

    def _loss(self, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = batch
        logits = self(x)
        loss = nn.functional.cross_entropy(logits.reshape(-1, 256), y.reshape(-1))
        return loss, (logits.argmax(-1) == y).float().mean()

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], _: int) -> torch.Tensor:
        loss, _ = self._loss(batch)
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], _: int) -> None:
        loss, accuracy = self._loss(batch)
        self.log("val_loss", loss, sync_dist=True, prog_bar=True)
        self.log("val_acc", accuracy, sync_dist=True)

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], _: int) -> None:
        loss, accuracy = self._loss(batch)
        self.log("test_loss", loss, sync_dist=True)
        self.log("test_acc", accuracy, sync_dist=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        hp = self.hparams
        return torch.optim.AdamW(self.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
