"""Hugging Face Accelerate with the quantized comm hook.

``accelerator.prepare(model)`` wraps the model in PyTorch's ``DistributedDataParallel``
when several processes run, so the hook is registered on what it returns::

    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    state, hook = make_comm_hook("qsgd", bits=4, seed=0)
    model.register_comm_hook(state.bind(model), hook)

Accelerate's own ``DistributedDataParallelKwargs(comm_hook=...)`` takes only a
``DDPCommunicationHookType`` (no hook, fp16, bf16, PowerSGD, batched PowerSGD), which it
maps to PyTorch's built-in hooks: a custom hook cannot be passed through it, hence the
direct registration.

Run it on 2 CPU processes (gloo), with either launcher::

    accelerate launch --multi_gpu --num_processes 2 examples/accelerate_ddp.py --steps 50
    torchrun --nproc-per-node 2 examples/accelerate_ddp.py --steps 50

``--multi_gpu`` names Accelerate's torchrun launcher; ``Accelerator(cpu=True)`` below keeps
the processes on CPU. ``accelerate launch --cpu --num_processes 2`` starts several
processes only through MPI (``--mpirun_hostfile``); without it, a single process runs.

A small MLP fits a synthetic regression. The last line, from the main process, gives the
mean loss of the last step over the processes and the bytes this process sent in that
step against what fp32 DDP would have sent.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, TensorDataset

from lightning_quant import STRATEGY_NAMES, make_comm_hook

FEATURES = 64


def regression(samples: int, seed: int) -> TensorDataset:
    """Noisy targets of a fixed random two-layer function of Gaussian inputs."""
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(samples, FEATURES, generator=generator)
    hidden = torch.tanh(inputs @ torch.randn(FEATURES, 32, generator=generator) / 8)
    targets = hidden @ torch.randn(32, 1, generator=generator)
    return TensorDataset(inputs, targets + 0.05 * torch.randn(samples, 1, generator=generator))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    schemes = sorted(STRATEGY_NAMES.values())  # every quantizer and PyTorch's own peers
    parser.add_argument("--scheme", choices=schemes, default="qsgd")
    parser.add_argument("--bits", type=int, default=4, help="wire bits per coordinate")
    parser.add_argument("--steps", type=int, default=20, help="optimizer steps")
    parser.add_argument("--batch-size", type=int, default=64, help="samples per process")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    # reads the launcher's RANK, WORLD_SIZE...; without cpu=True, GPUs (NCCL) when present
    accelerator = Accelerator(cpu=True)
    torch.manual_seed(args.seed)  # DDP also broadcasts rank 0's weights when it wraps
    model = nn.Sequential(
        nn.Linear(FEATURES, 256), nn.GELU(),
        nn.Linear(256, 256), nn.GELU(),
        nn.Linear(256, 1),
    )  # fmt: skip
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loader = DataLoader(regression(8192, args.seed), batch_size=args.batch_size, shuffle=True)
    # prepare() wraps the model in DDP and gives each process its share of the batches
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)

    state = None
    if isinstance(model, DistributedDataParallel):
        state, hook = make_comm_hook(args.scheme, bits=args.bits, seed=args.seed)
        model.register_comm_hook(state.bind(model), hook)
    else:
        accelerator.print("one process: no DDP, so no gradient exchange to quantize")

    step = 0
    while step < args.steps:
        for inputs, targets in loader:
            loss = F.mse_loss(model(inputs), targets)
            optimizer.zero_grad()
            accelerator.backward(loss)  # the hook exchanges quantized gradients here
            optimizer.step()
            step += 1
            if step == args.steps:
                break

    mean_loss = accelerator.reduce(loss.detach(), reduction="mean")
    stats = state.compression_stats() if state is not None else {}  # this process, last step
    if accelerator.is_main_process:
        print(
            f"final: scheme={args.scheme} bits={args.bits} "
            f"processes={accelerator.num_processes} steps={step} loss={mean_loss.item():.4f} "
            f"sent_bytes={int(stats.get('sent_bytes', 0))} "
            f"raw_bytes={int(stats.get('raw_bytes', 0))} "
            f"compression={stats.get('compression_ratio', 0.0):.1f}x"
        )
    # Free DDP before the process group: were DDP's reducer to drop the group's last
    # reference, the group's destructor would wait for gloo's threads while holding the
    # GIL that a thread finishing the last collective needs (pytorch/pytorch#56297).
    del model, optimizer, loader
    accelerator.free_memory()  # Accelerate's own references to them
    accelerator.end_training()  # destroys the process group


if __name__ == "__main__":
    main()
