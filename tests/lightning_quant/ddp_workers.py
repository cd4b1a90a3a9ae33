"""Functions that run inside each rank of a multi-process test (see tests/utils/ranks.py)."""

from __future__ import annotations

import gc

import torch
import torch.distributed as dist
from torch import nn

from lightning_quant.hooks import make_comm_hook


def _mlp(seed: int = 0, hidden: int = 64) -> nn.Module:
    torch.manual_seed(seed)  # same initial weights on every rank
    return nn.Sequential(
        nn.Linear(32, hidden),
        nn.ReLU(),
        nn.Linear(hidden, hidden),
        nn.ReLU(),
        nn.Linear(hidden, 10),
    )


def _ddp(
    model: nn.Module, many_buckets: bool, device: str = "cpu"
) -> nn.parallel.DistributedDataParallel:
    cap = 1e-4 if many_buckets else 25  # tiny buckets: about one per parameter
    ids = [0] if device == "cuda" else None
    return nn.parallel.DistributedDataParallel(model.to(device), device_ids=ids, bucket_cap_mb=cap)


def _train(
    config: dict, many_buckets: bool, steps: int, device: str = "cpu", hidden: int = 64
) -> dict:
    """Train a fresh MLP with the hook of ``make_comm_hook(**config)``; return parameters,
    every step's statistics and the element counts of the buckets DDP handed over."""
    rank = dist.get_rank()
    ddp = _ddp(_mlp(hidden=hidden), many_buckets, device)
    state, hook = make_comm_hook(**config)
    state.bind(ddp)
    numels: list[list[int]] = []  # per step, each bucket's elements
    shapes: list[list[list[tuple[int, int]]]] = []  # per step and bucket, (numel, dim) each

    def recording_hook(s, bucket):
        if bucket.index() == 0:
            numels.append([])
            shapes.append([])
        numels[-1].append(bucket.buffer().numel())
        shapes[-1].append([(p.numel(), p.dim()) for p in bucket.parameters()])
        return hook(s, bucket)

    ddp.register_comm_hook(state, recording_hook)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.05)
    gen = torch.Generator().manual_seed(100 + rank)  # each rank its own data
    stats = []
    for _ in range(steps):
        x, y = torch.randn(16, 32, generator=gen), torch.randint(0, 10, (16,), generator=gen)
        x, y = x.to(device), y.to(device)
        opt.zero_grad()
        nn.functional.cross_entropy(ddp(x), y).backward()
        opt.step()
        stats.append(state.compression_stats())
    params = [p.detach().cpu().clone() for p in ddp.parameters()]
    del ddp, opt
    gc.collect()
    return {
        "params": params,
        "stats": stats,
        "numels": numels,
        "shapes": shapes,
        "collective": state.collective,
        "kappa": state.policy.kappa if state.policy is not None else None,
    }


def train_plain_ddp(
    scheme: str,
    many_buckets: bool,
    steps: int = 6,
    device: str = "cpu",
    backend: str | None = None,
    **settings,
) -> dict:
    """Train with the hook on plain DDP; return parameters, statistics and bucket sizes.
    The backend defaults to NCCL on CUDA and gloo on CPU."""
    dist.init_process_group(backend or ("nccl" if device == "cuda" else "gloo"))
    result = _train({"scheme": scheme, **settings}, many_buckets, steps, device)
    _shutdown()
    return result


def aggregated_gradients(
    scheme: str, draws: int, many_buckets: bool, hidden: int = 64, **settings
) -> dict:
    """Return the exact mean gradient and ``draws`` quantized aggregates of it."""
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    gen = torch.Generator().manual_seed(7 + rank)
    x, y = torch.randn(8, 32, generator=gen), torch.randint(0, 10, (8,), generator=gen)

    def gradient(ddp) -> torch.Tensor:
        ddp.zero_grad()
        nn.functional.cross_entropy(ddp(x), y).backward()
        return torch.cat([p.grad.reshape(-1) for p in ddp.parameters()])

    exact = gradient(_ddp(_mlp(hidden=hidden), many_buckets))
    ddp = _ddp(_mlp(hidden=hidden), many_buckets)
    state, hook = make_comm_hook(scheme, **settings)
    ddp.register_comm_hook(state.bind(ddp), hook)
    samples = torch.stack([gradient(ddp) for _ in range(draws)])
    del ddp
    _shutdown()
    return {"exact": exact, "samples": samples}


def _shutdown() -> None:
    """Tear down gloo safely: no DDP reducer may outlive the process group.

    A reducer freed after ``destroy_process_group`` drops the group's last reference while
    holding the GIL, and gloo's worker threads, still freeing finished work that owns
    Python tensors, wait for that GIL: a deadlock at exit.
    """
    gc.collect()
    dist.barrier()
    dist.destroy_process_group()


def train_each(
    configs: list[dict], steps: int = 4, many_buckets: bool = True, hidden: int = 64
) -> list[dict]:
    """Train with each ``make_comm_hook`` config in turn, in one process group (an MLP of
    ``hidden`` units a layer)."""
    dist.init_process_group("gloo")
    results = [_train(config, many_buckets, steps, hidden=hidden) for config in configs]
    _shutdown()
    return results


def two_stage_variance(scheme: str, draws: int, bits: int, single: str) -> dict:
    """Quantized aggregates of one fixed gradient through a single-stage path (``single``)
    and the reduce-scatter path, with the exact mean and every rank's own gradient."""
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    gen = torch.Generator().manual_seed(7 + rank)
    x, y = torch.randn(8, 32, generator=gen), torch.randint(0, 10, (8,), generator=gen)

    def gradient(module: nn.Module) -> torch.Tensor:
        module.zero_grad()
        nn.functional.cross_entropy(module(x), y).backward()
        return torch.cat([p.grad.reshape(-1) for p in module.parameters()])

    local = gradient(_mlp())
    exact = gradient(_ddp(_mlp(), many_buckets=True))
    samples = {}
    for collective in (single, "reduce_scatter"):
        ddp = _ddp(_mlp(), many_buckets=True)
        state, hook = make_comm_hook(
            scheme,
            bits=bits,
            collective=collective,
            min_compress_numel=0,
            compress_1d=True,
            seed=11,
        )
        ddp.register_comm_hook(state.bind(ddp), hook)
        samples[collective] = torch.stack([gradient(ddp) for _ in range(draws)])
        del ddp
    _shutdown()
    return {"local": local, "exact": exact, "samples": samples}


def dqsgd_gradient_norm(collective: str) -> dict:
    """One step of DQ-SGD: the norm its rule will read next, and this rank's gradient."""
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    gen = torch.Generator().manual_seed(5 + rank)
    x, y = torch.randn(8, 32, generator=gen), torch.randint(0, 10, (8,), generator=gen)
    model = _mlp()
    local = torch.autograd.grad(nn.functional.cross_entropy(model(x), y), list(model.parameters()))
    ddp = _ddp(model, many_buckets=True)
    state, hook = make_comm_hook(
        "dqsgd", bits=3, collective=collective, min_compress_numel=0, compress_1d=True, seed=2
    )
    ddp.register_comm_hook(state.bind(ddp), hook)
    nn.functional.cross_entropy(ddp(x), y).backward()
    mean = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    saved = state.state_dict()  # waits for the step's shared norm
    _shutdown()
    return {
        "norm": saved["policy"]["last_grad_norm"],
        "local": torch.cat([g.reshape(-1) for g in local]),
        "decoded": float(mean.norm()),
    }


def error_feedback_ledger(scheme: str, bits: int, steps: int, **settings) -> dict:
    """Reduce one fixed gradient ``steps`` times with error feedback on both stages.

    Returns the outputs summed over the steps, this rank's own gradient, and both
    residual memories (by parameter name) before and after those steps.
    """
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    gen = torch.Generator().manual_seed(3 + rank)
    x, y = torch.randn(8, 32, generator=gen), torch.randint(0, 10, (8,), generator=gen)
    model = _mlp()
    names = [name for name, _ in model.named_parameters()]
    ddp = _ddp(model, many_buckets=True)
    settings = {"collective": "reduce_scatter", **settings}
    state, hook = make_comm_hook(
        scheme,
        bits=bits,
        error_feedback=True,
        min_compress_numel=0,
        compress_1d=True,
        **settings,
    )
    ddp.register_comm_hook(state.bind(ddp), hook)

    def step(ddp=ddp) -> dict[str, torch.Tensor]:
        ddp.zero_grad()
        nn.functional.cross_entropy(ddp(x), y).backward()  # no optimizer: a fixed gradient
        grads = [p.grad.detach().double().clone() for p in ddp.parameters()]
        return dict(zip(names, grads, strict=True))

    def residuals() -> dict[str, dict[str, torch.Tensor]]:
        return {
            "worker": {k: v.double() for k, v in state.worker_residuals.pieces().items()},
            "owner": {k: v.double() for k, v in state.owner_residuals.pieces().items()},
        }

    for _ in range(2):  # DDP lays its buckets out anew after the first step
        step()
    before = residuals()
    total: dict[str, torch.Tensor] = {}
    for _ in range(steps):
        for name, grad in step().items():
            total[name] = total.get(name, 0) + grad
    after = residuals()
    local_model = _mlp()
    local_model.zero_grad()
    nn.functional.cross_entropy(local_model(x), y).backward()
    local = {n: p.grad.detach().double() for n, p in local_model.named_parameters()}
    del ddp
    _shutdown()
    return {"total": total, "local": local, "before": before, "after": after}


class _Injected(nn.Module):
    """One 2-D parameter whose gradient is the input ``g`` of its "loss" ``forward(g)``."""

    def __init__(self, numel: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(numel // 128, 128))

    def forward(self, g: torch.Tensor) -> torch.Tensor:
        return (self.weight * g.view_as(self.weight)).sum()


def residual_growth(configs: list[dict], steps: int, numel: int = 8192) -> list[dict]:
    """Feed fresh random gradients through the hook with error feedback, ``steps`` times per
    config; return each config's residual norms over the gradient's.

    A config is ``make_comm_hook`` keywords plus ``heavy`` (log-normal scales on the
    Gaussian: heavy-tailed gradients). ``worker`` is this rank's residual over its last
    gradient's norm; ``owner`` this rank's share of the second stage's residual, squared,
    at half time and at the end (to be summed over ranks).
    """
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    results = []
    for config in configs:
        config = dict(config)
        heavy = config.pop("heavy")
        ddp = _ddp(_Injected(numel), many_buckets=False)
        state, hook = make_comm_hook(error_feedback=True, min_compress_numel=0, seed=1, **config)
        ddp.register_comm_hook(state.bind(ddp), hook)
        gen = torch.Generator().manual_seed(1000 * rank + 17)
        owner = []
        for step in range(steps):
            g = torch.randn(numel, generator=gen)
            if heavy:
                g *= torch.randn(numel, generator=gen).exp()
            ddp.zero_grad()
            ddp(g).backward()
            if step + 1 in (steps // 2, steps):
                pieces = state.owner_residuals.pieces().values()
                owner.append(float(sum(float(p.pow(2).sum()) for p in pieces)))
        worker = torch.cat([v.reshape(-1) for v in state.worker_residuals.pieces().values()])
        results.append(
            {"worker": float(worker.norm() / g.norm()), "owner_sq": owner, "g_sq": float(g @ g)}
        )
        del ddp
        gc.collect()
    _shutdown()
    return results


def momentum_lm(
    configs: list[dict | None], steps: int, lr: float = 0.3, width: int = 64, seed: int = 0
) -> list:
    """Train a small byte-level GPT on the stdlib corpus with SGD and momentum 0.9, once per
    ``make_comm_hook`` config (``None``: plain fp32 DDP); return the held-out losses."""
    from benchmarks.tasks.lm import ByteGPT, lm_loaders

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    losses = []
    for config in configs:
        torch.manual_seed(0)
        model = ByteGPT(width=width, layers=2, heads=2, context=32)
        train, val = lm_loaders(batch_size=16, seed=10 * seed + rank, context=32)
        ddp = nn.parallel.DistributedDataParallel(model, bucket_cap_mb=1)
        if config is not None:
            state, hook = make_comm_hook(**config)
            ddp.register_comm_hook(state.bind(ddp), hook)
        opt = torch.optim.SGD(ddp.parameters(), lr=lr, momentum=0.9)
        batches = iter(train)
        for _ in range(steps):
            x, y = next(batches)
            opt.zero_grad()
            nn.functional.cross_entropy(ddp(x).reshape(-1, 256), y.reshape(-1)).backward()
            opt.step()
        with torch.no_grad():
            x, y = next(iter(val))
            loss = nn.functional.cross_entropy(model(x).reshape(-1, 256), y.reshape(-1))
        losses.append(float(loss))
        del ddp, opt
        gc.collect()
    _shutdown()
    return losses


def hook_before_process_group() -> dict:
    """Build the hook before ``init_process_group``, as a user might; report what binding
    it to a DDP model of the real world, and a state of a smaller group, raise."""
    early, _ = make_comm_hook("qsgd", bits=4)
    dist.init_process_group("gloo")
    ddp = _ddp(_mlp(), many_buckets=False)
    errors = {}
    try:
        early.bind(ddp)
    except RuntimeError as error:
        errors["early"] = str(error)
    pair = dist.new_group([0, 1])
    if dist.get_rank() in (0, 1):
        small, _ = make_comm_hook("qsgd", bits=4, process_group=pair)
        try:
            small.bind(ddp)
        except RuntimeError as error:
            errors["other_world"] = str(error)
    del ddp
    _shutdown()
    return errors


def detected_layout(local_world_size: str | None, hierarchical: bool | str = "auto") -> dict:
    """Build a comm state with the launcher's ``LOCAL_WORLD_SIZE`` (``None``: unset, so the
    host names decide); return the layout it took and one step's byte split."""
    import os

    if local_world_size is None:
        os.environ.pop("LOCAL_WORLD_SIZE", None)
    else:
        os.environ["LOCAL_WORLD_SIZE"] = local_world_size
    dist.init_process_group("gloo")
    ddp = _ddp(_mlp(), many_buckets=False)
    state, hook = make_comm_hook("qsgd", bits=4, hierarchical=hierarchical)
    ddp.register_comm_hook(state.bind(ddp), hook)
    x, y = torch.randn(8, 32), torch.randint(0, 10, (8,))
    nn.functional.cross_entropy(ddp(x), y).backward()
    stats = state.compression_stats()
    del ddp
    _shutdown()
    return {"node_of": state.group.node_of, "hierarchical": state.hierarchical, "stats": stats}
