"""Error feedback: residuals of every scheme, and SGD with momentum on a GPT-2 model.

Two measurements, side by side in one run (``python -m benchmarks.error_feedback``):

1. **Residuals** (single process, the hook's own codec and contraction): for every lossy
   scheme at 2, 4 and 8 bits, fresh Gaussian and heavy-tailed (log-normal scales)
   gradients of 64K coordinates are fed back for 200 steps; the table gives the residual
   norm over the gradient's at the end, and what it was after 30 steps without the
   contraction (``Quantizer.contract``), the behaviour before it.
2. **Training**: 3 gloo ranks train a GPT-2 (``transformers.GPT2LMHeadModel`` from a
   config, byte tokens, the standard library's source) with SGD and momentum 0.9 under
   fp32 DDP, 4-bit ``qsgd``, and 4-bit ``qsgd`` with error feedback (reduce-scatter, both
   stages); the held-out loss after ``--steps`` steps, per seed.

Writes ``benchmarks/results/error-feedback.{json,md}`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sysconfig
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from lightning_quant.hooks import make_comm_hook
from lightning_quant.quantizers import available_quantizers, get_quantizer

RESULTS = Path(__file__).with_name("results")
WIDTHS = (2, 4, 8)


# --- 1. residuals ------------------------------------------------------------------------


def residual_ratio(name: str, bits: int, heavy: bool, steps: int, contract: bool) -> float:
    """Residual norm over the last gradient's after ``steps`` steps of error feedback."""
    q = get_quantizer(name, bits=bits)
    gen = torch.Generator().manual_seed(0)
    numel = 1 << 16
    residual = torch.zeros(numel)
    for _ in range(steps):
        g = torch.randn(numel, generator=gen)
        if heavy:
            g *= torch.randn(numel, generator=gen).exp()
        target = g + residual
        scale = target.abs().amax().reshape(1) if q.shared_scale else None
        payload = q.encode(target, gen, scale=scale)
        if contract:
            _, sent = q.contract(payload, target, g)
        else:
            sent = q.decode(payload).reshape(-1)
        residual = target - sent
        if not math.isfinite(float(residual.norm())):
            return math.inf
    return float(residual.norm() / g.norm())


def residuals() -> list[dict[str, Any]]:
    rows = []
    for name in available_quantizers():
        if not get_quantizer(name).lossy:
            continue
        for bits in WIDTHS:
            try:
                get_quantizer(name, bits=bits)
            except ValueError:
                continue
            for heavy in (False, True):
                rows.append(
                    {
                        "scheme": name,
                        "bits": bits,
                        "gradients": "heavy-tailed" if heavy else "gaussian",
                        "contracted_200": residual_ratio(name, bits, heavy, 200, True),
                        "plain_30": residual_ratio(name, bits, heavy, 30, False),
                    }
                )
    return rows


# --- 2. training -------------------------------------------------------------------------


CONFIGS: dict[str, dict[str, Any] | None] = {
    "fp32 DDP": None,
    "qsgd 4 bits": {"scheme": "qsgd", "bits": 4},
    "qsgd 4 bits + feedback": {"scheme": "qsgd", "bits": 4, "error_feedback": True},
}


def _gpt2(width: int, layers: int, context: int) -> nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=256, n_positions=context, n_embd=width, n_layer=layers,
        n_head=max(width // 64, 1), resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
    )  # fmt: skip
    return GPT2LMHeadModel(config)


def _corpus() -> tuple[torch.Tensor, torch.Tensor]:
    files = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))
    text = b"".join(f.read_bytes() for f in files)
    data = torch.frombuffer(bytearray(text), dtype=torch.uint8).long()
    split = len(data) * 19 // 20
    return data[:split], data[split:]


def _windows(data: torch.Tensor, count: int, context: int, gen: torch.Generator) -> torch.Tensor:
    starts = torch.randint(0, len(data) - context - 1, (count,), generator=gen)
    return torch.stack([data[s : s + context + 1] for s in starts.tolist()])


def _train_rank(rank: int, world: int, port: int, args: argparse.Namespace, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), LOCAL_WORLD_SIZE="1")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    train, held_out = _corpus()
    val = _windows(held_out, 64, args.context, torch.Generator().manual_seed(1))
    results: dict[str, list[float]] = {}
    for name, config in CONFIGS.items():
        torch.manual_seed(args.seed)
        model = _gpt2(args.width, args.layers, args.context)
        ddp = nn.parallel.DistributedDataParallel(model)
        if config is not None:
            state, hook = make_comm_hook(**config, seed=args.seed)
            ddp.register_comm_hook(state.bind(ddp), hook)
        opt = torch.optim.SGD(ddp.parameters(), lr=args.lr, momentum=0.9)
        gen = torch.Generator().manual_seed(1000 * args.seed + rank)
        curve = []
        for step in range(args.steps):
            batch = _windows(train, args.batch, args.context, gen)
            opt.zero_grad()
            ddp(batch[:, :-1], labels=batch[:, :-1]).loss.backward()
            opt.step()
            if (step + 1) % max(args.steps // 4, 1) == 0:
                with torch.no_grad():
                    curve.append(float(model(val[:, :-1], labels=val[:, :-1]).loss))
        results[name] = curve
        del ddp, opt
    if rank == 0:
        Path(out).write_text(json.dumps(results))
    dist.barrier()
    dist.destroy_process_group()


def training(args: argparse.Namespace) -> dict[str, Any]:
    runs = []
    for seed in args.seeds:
        args.seed = seed
        with tempfile.NamedTemporaryFile(suffix=".json") as handle:
            port = 29600 + seed
            mp.spawn(_train_rank, args=(3, port, args, handle.name), nprocs=3, join=True)
            runs.append({"seed": seed, "losses": json.loads(Path(handle.name).read_text())})
    return {"model": f"gpt2 {args.layers}x{args.width}, context {args.context}", "runs": runs}


def _residual_table(res: list[dict[str, Any]]) -> list[str]:
    lines = [
        "# Error feedback",
        "",
        "Residual norm over the gradient's norm, fresh gradients of 64K coordinates each",
        "step: after 200 steps with the contraction, and after 30 steps without it.",
        "",
        "| scheme | bits | gradients | contracted, 200 steps | plain, 30 steps |",
        "|---|---|---|---|---|",
    ]
    for r in res:
        plain = "diverged" if not math.isfinite(r["plain_30"]) else f"{r['plain_30']:.3g}"
        lines.append(
            f"| {r['scheme']} | {r['bits']} | {r['gradients']} | {r['contracted_200']:.2f} "
            f"| {plain} |"
        )
    return lines


def _markdown(res: list[dict[str, Any]], train: dict[str, Any], args: argparse.Namespace) -> str:
    lines = _residual_table(res)
    lines += [
        "",
        f"Training: {train['model']}, 3 gloo ranks, SGD momentum 0.9, lr {args.lr}, "
        f"{args.steps} steps of {args.batch} windows per rank; held-out loss at the end.",
        "",
        "| configuration | "
        + " | ".join(f"seed {r['seed']}" for r in train["runs"])
        + " | mean | x fp32 |",
        "|---|" + "---|" * (len(train["runs"]) + 2),
    ]
    final = {name: [r["losses"][name][-1] for r in train["runs"]] for name in CONFIGS}
    base = statistics.fmean(final["fp32 DDP"])
    for name, values in final.items():
        mean = statistics.fmean(values)
        cells = " | ".join(f"{v:.4f}" for v in values)
        lines.append(f"| {name} | {cells} | {mean:.4f} | {mean / base:.3f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")], default=[0, 1, 2])
    parser.add_argument("--width", type=int, default=384)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--context", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--out", type=Path, default=RESULTS / "error-feedback")
    args = parser.parse_args(argv)
    res = residuals()
    print("\n".join(_residual_table(res)), flush=True)
    train = training(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(
        json.dumps({"residuals": res, "training": train, "args": vars(args)}, default=str)
    )
    report = _markdown(res, train, args)
    args.out.with_suffix(".md").write_text(report)
    print(report)


if __name__ == "__main__":
    main()
