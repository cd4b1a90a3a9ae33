"""Plain PyTorch DDP with the quantized comm hook: no Lightning, launched by torchrun.

A small MLP learns to tell apart ten Gaussian clusters (synthetic data, the same on every
rank; each rank reads its own share through a ``DistributedSampler``). After wrapping the
model in ``DistributedDataParallel``, one call swaps DDP's fp32 all-reduce for the
quantized exchange::

    state, hook = make_comm_hook("qsgd", bits=4, seed=0)
    model.register_comm_hook(state.bind(model), hook)

Run it on 2 CPU processes (gloo)::

    torchrun --nproc-per-node 2 examples/plain_ddp_torchrun.py --steps 50

The last line, from rank 0, gives the mean loss of the last step over the ranks and the
bytes this rank sent in that step against what fp32 DDP would have sent.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from lightning_quant import STRATEGY_NAMES, make_comm_hook

FEATURES, CLASSES = 32, 10


def clusters(samples: int, seed: int) -> TensorDataset:
    """Points around ten random centres, labelled by their centre."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(CLASSES, FEATURES, generator=generator)
    labels = torch.randint(0, CLASSES, (samples,), generator=generator)
    points = centres[labels] + 0.8 * torch.randn(samples, FEATURES, generator=generator)
    return TensorDataset(points, labels)


def batches(loader: DataLoader, sampler: DistributedSampler) -> Iterator[tuple]:
    """Yield batches forever, reshuffling each epoch (the same order on every rank)."""
    epoch = 0
    while True:
        sampler.set_epoch(epoch)
        yield from loader
        epoch += 1


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    schemes = sorted(STRATEGY_NAMES.values())  # every quantizer and PyTorch's own peers
    parser.add_argument("--scheme", choices=schemes, default="qsgd")
    parser.add_argument("--bits", type=int, default=4, help="wire bits per coordinate")
    parser.add_argument("--steps", type=int, default=20, help="optimizer steps")
    parser.add_argument("--batch-size", type=int, default=64, help="samples per rank")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    dist.init_process_group("gloo")  # torchrun sets RANK, WORLD_SIZE and MASTER_ADDR/PORT
    rank, world_size = dist.get_rank(), dist.get_world_size()

    torch.manual_seed(args.seed)  # DDP also broadcasts rank 0's weights when it wraps
    model = nn.Sequential(
        nn.Linear(FEATURES, 256), nn.ReLU(),
        nn.Linear(256, 256), nn.ReLU(),
        nn.Linear(256, CLASSES),
    )  # fmt: skip
    model = DistributedDataParallel(model)  # CPU module: no device_ids

    # The hook replaces DDP's all-reduce of each gradient bucket. Weights of 1024 elements
    # or more are quantized; biases and smaller tensors go as fp32 (min_compress_numel,
    # compress_1d). Rank r draws its rounding noise from stream seed + r.
    state, hook = make_comm_hook(args.scheme, bits=args.bits, seed=args.seed)
    model.register_comm_hook(state.bind(model), hook)

    dataset = clusters(samples=8192, seed=args.seed)
    sampler = DistributedSampler(dataset, seed=args.seed)  # this rank's share
    loader = DataLoader(dataset, batch_size=args.batch_size, sampler=sampler)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

    data = batches(loader, sampler)
    for _ in range(args.steps):
        points, labels = next(data)
        loss = F.cross_entropy(model(points), labels)
        optimizer.zero_grad()
        loss.backward()  # the hook exchanges quantized gradients here
        optimizer.step()

    stats = state.compression_stats()  # this rank's figures for the last step
    mean_loss = loss.detach()
    dist.all_reduce(mean_loss)
    if rank == 0:
        print(
            f"final: scheme={args.scheme} bits={args.bits} ranks={world_size} "
            f"steps={args.steps} loss={mean_loss.item() / world_size:.4f} "
            f"sent_bytes={int(stats['sent_bytes'])} raw_bytes={int(stats['raw_bytes'])} "
            f"compression={stats['compression_ratio']:.1f}x"
        )
    # Free DDP before the process group: were DDP's reducer to drop the group's last
    # reference, the group's destructor would wait for gloo's threads while holding the
    # GIL that a thread finishing the last collective needs (pytorch/pytorch#56297).
    del model
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
