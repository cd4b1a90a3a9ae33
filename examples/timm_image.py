"""Train a timm image model with quantized gradient exchange.

``timm.create_model("resnet18", pretrained=False, num_classes=10)`` builds the network
with random weights (no download), and the images are synthetic: ten classes, each a
fixed random pattern under noise. Lightning starts ``--devices`` CPU processes that talk
over gloo, and :class:`~lightning_quant.QuantizedDDPStrategy` sends every large gradient
(the convolutions' and the classifier's weights) in ``--bits`` a coordinate instead of 32.

Run it::

    python examples/timm_image.py --devices 2 --steps 20
    python examples/timm_image.py --scheme nuqsgd --bits 8 --error-feedback

timm imports torchvision, whose Linux wheels on PyPI are CUDA builds: beside the CPU
build of torch they fail to import ("operator torchvision::nms does not exist"), and
Lightning's import with them. Install the CPU torchvision that matches torch from
PyTorch's CPU index first, then timm (the README's Examples section has the commands).

BatchNorm under DDP: every rank normalizes with its own batch's statistics, and DDP
broadcasts rank 0's running statistics (buffers) to the others before each forward.
Lightning's ``sync_batchnorm=True`` would all-reduce batch statistics instead, but
PyTorch's ``SyncBatchNorm`` runs on GPUs only. BatchNorm's weights and biases are 1-D,
so they go uncompressed (``compress_1d=False``, the default).

The last line, from rank 0, gives the mean loss of the last step over the ranks and the
bytes this rank sent in that step against what fp32 DDP would have sent.
"""

from __future__ import annotations

import argparse

import torch

# timm first: a torchvision built for CUDA fails to import beside CPU torch, and once it is
# installed, Lightning's own import fails the same way (torchmetrics imports torchvision).
try:
    import timm
except (ImportError, RuntimeError) as error:  # RuntimeError: "torchvision::nms does not exist"
    raise SystemExit(
        f"this example needs timm and a torchvision built for this torch "
        f"({torch.__version__}); for the CPU build (torchvision 0.28 is torch 2.13's):\n"
        "pip install -c constraints.txt --index-url https://download.pytorch.org/whl/cpu "
        '"torchvision==0.28.0+cpu"\n'
        f"pip install -c constraints.txt timm\n({error})"
    ) from error

import lightning as L
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from lightning_quant import QuantizedDDPStrategy, available_quantizers

CLASSES = 10


def synthetic_images(samples: int, size: int, seed: int) -> TensorDataset:
    """Noisy images of ten fixed random patterns, labelled by their pattern."""
    generator = torch.Generator().manual_seed(seed)
    # smooth patterns: 8x8 noise upsampled, so the classes differ in shape, not pixels
    patterns = torch.randn(CLASSES, 3, 8, 8, generator=generator)
    patterns = F.interpolate(patterns, size=(size, size), mode="bilinear")
    labels = torch.randint(0, CLASSES, (samples,), generator=generator)
    images = patterns[labels] + torch.randn(samples, 3, size, size, generator=generator)
    return TensorDataset(images, labels)


class ImageClassifier(L.LightningModule):
    """A timm model by name, trained with cross-entropy; logs loss and accuracy."""

    def __init__(self, name: str, lr: float = 0.05) -> None:
        super().__init__()
        self.model = timm.create_model(name, pretrained=False, num_classes=CLASSES)
        self.lr = lr

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int):
        images, labels = batch
        logits = self.model(images)
        loss = F.cross_entropy(logits, labels)
        accuracy = (logits.argmax(dim=1) == labels).float().mean()
        self.log_dict({"train_loss": loss, "train_acc": accuracy}, prog_bar=True, sync_dist=True)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet18", help="any timm model name")
    parser.add_argument("--scheme", choices=available_quantizers(), default="qsgd")
    parser.add_argument("--bits", type=int, default=4, help="wire bits per coordinate")
    parser.add_argument("--error-feedback", action="store_true")
    parser.add_argument("--devices", type=int, default=2, help="CPU processes")
    parser.add_argument("--steps", type=int, default=20, help="optimizer steps")
    parser.add_argument("--batch-size", type=int, default=16, help="images per rank")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    L.seed_everything(args.seed)
    model = ImageClassifier(args.model)
    images = synthetic_images(4096, args.image_size, seed=args.seed)
    # Lightning gives each rank its own share of the images (a DistributedSampler)
    loader = DataLoader(images, batch_size=args.batch_size, shuffle=True)

    strategy = QuantizedDDPStrategy(
        args.scheme,
        bits=args.bits,
        error_feedback=args.error_feedback,
        seed=args.seed,  # rank r draws its rounding noise from stream seed + r
    )
    # Lightning re-runs this script once per extra device (LOCAL_RANK=1, ...), so
    # everything above runs on every rank.
    trainer = L.Trainer(
        strategy=strategy,
        accelerator="cpu",
        devices=args.devices,
        max_steps=args.steps,
        logger=False,  # or any Lightning logger: it receives the comm/ figures of every step
        enable_checkpointing=False,
        enable_model_summary=False,
    )
    trainer.fit(model, loader)

    stats = strategy.compression_stats()  # this rank's figures for the last step
    if trainer.is_global_zero:
        metrics = trainer.callback_metrics
        print(
            f"final: model={args.model} scheme={args.scheme} bits={args.bits} "
            f"steps={trainer.global_step} loss={float(metrics['train_loss']):.4f} "
            f"acc={float(metrics['train_acc']):.3f} "
            f"sent_bytes={int(stats['sent_bytes'])} raw_bytes={int(stats['raw_bytes'])} "
            f"compression={stats['compression_ratio']:.1f}x"
        )


if __name__ == "__main__":
    main()
