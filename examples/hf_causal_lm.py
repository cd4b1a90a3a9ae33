"""Train a Hugging Face causal language model with quantized gradient exchange.

The model is built from a config, so there are no weights to download: a small GPT-2, or
a tiny Llama with ``--model llama``. The text is the Python standard library's own source
read as bytes, so the vocabulary is the 256 byte values and no tokenizer is needed.
Lightning starts ``--devices`` CPU processes that talk over gloo, and the ``ddp_<scheme>``
strategy sends every large gradient in 4 bits a coordinate instead of 32.

Run it (it needs ``transformers``)::

    python examples/hf_causal_lm.py --model gpt2 --devices 2 --steps 50
    python examples/hf_causal_lm.py --model llama --strategy ddp_nuqsgd

The last line, from rank 0, gives the mean loss of the last step over the ranks and the
bytes this rank sent in that step against what fp32 DDP would have sent.
"""

from __future__ import annotations

import argparse
import sysconfig
from collections.abc import Callable
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset
from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig, PretrainedConfig

from lightning_quant import STRATEGY_NAMES  # importing lightning_quant registers the names

VOCAB = 256  # one token per byte value

# Small enough for a CPU, with the layers of the real thing (embeddings, attention, MLPs,
# norms). Parameters under 1024 elements and 1-D ones (biases, norms) go uncompressed.
CONFIGS: dict[str, Callable[[int], PretrainedConfig]] = {
    "gpt2": lambda context: GPT2Config(
        vocab_size=VOCAB, n_positions=context, n_embd=128, n_layer=2, n_head=4,
        bos_token_id=0, eos_token_id=0,
    ),
    "llama": lambda context: LlamaConfig(
        vocab_size=VOCAB, max_position_embeddings=context, hidden_size=128,
        intermediate_size=344, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, bos_token_id=0, eos_token_id=0,
    ),
}  # fmt: skip


def stdlib_source() -> bytes:
    """Return the top-level modules of this Python's standard library, concatenated."""
    root = Path(sysconfig.get_paths()["stdlib"])
    return b"".join(path.read_bytes() for path in sorted(root.glob("*.py")))


class ByteWindows(Dataset):
    """``count`` windows of ``context`` bytes at seeded random offsets of ``text``."""

    def __init__(self, text: bytes, context: int, count: int = 10_000, seed: int = 0) -> None:
        self.data = torch.frombuffer(bytearray(text), dtype=torch.uint8)
        generator = torch.Generator().manual_seed(seed)
        self.starts = torch.randint(0, len(text) - context, (count,), generator=generator)
        self.context = context

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, index: int) -> torch.Tensor:
        start = int(self.starts[index])
        return self.data[start : start + self.context].long()


class CausalLM(L.LightningModule):
    """Any Hugging Face causal LM config, trained on next-token prediction."""

    def __init__(self, config: PretrainedConfig, lr: float = 1e-3) -> None:
        super().__init__()
        self.model = AutoModelForCausalLM.from_config(config)
        self.lr = lr

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        # with labels, the model shifts them one token itself and returns the loss
        loss = self.model(input_ids=batch, labels=batch).loss
        self.log("train_loss", loss, prog_bar=True, sync_dist=True)  # mean over the ranks
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=self.lr)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=sorted(CONFIGS), default="gpt2")
    parser.add_argument("--strategy", choices=sorted(STRATEGY_NAMES), default="ddp_qsgd")
    parser.add_argument("--devices", type=int, default=2, help="CPU processes")
    parser.add_argument("--steps", type=int, default=20, help="optimizer steps")
    parser.add_argument("--batch-size", type=int, default=8, help="windows per rank")
    parser.add_argument("--context", type=int, default=64, help="bytes per window")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    L.seed_everything(args.seed)
    model = CausalLM(CONFIGS[args.model](args.context), lr=args.lr)
    windows = ByteWindows(stdlib_source(), args.context, seed=args.seed)
    # Lightning gives each rank its own share of the windows (a DistributedSampler)
    loader = DataLoader(windows, batch_size=args.batch_size, shuffle=True)

    # Lightning re-runs this script once per extra device (LOCAL_RANK=1, ...), so
    # everything above runs on every rank. QuantizedDDPStrategy("qsgd", bits=4, ...)
    # instead of the name gives every setting (see the README).
    trainer = L.Trainer(
        strategy=args.strategy,
        accelerator="cpu",
        devices=args.devices,
        max_steps=args.steps,
        logger=False,  # or any Lightning logger: it receives the comm/ figures of every step
        enable_checkpointing=False,
        enable_model_summary=False,
    )
    trainer.fit(model, loader)

    stats = trainer.strategy.compression_stats()  # this rank's figures for the last step
    if trainer.is_global_zero:
        print(
            f"final: model={args.model} strategy={args.strategy} steps={trainer.global_step} "
            f"loss={float(trainer.callback_metrics['train_loss']):.4f} "
            f"sent_bytes={int(stats['sent_bytes'])} raw_bytes={int(stats['raw_bytes'])} "
            f"compression={stats['compression_ratio']:.1f}x"
        )


if __name__ == "__main__":
    main()
