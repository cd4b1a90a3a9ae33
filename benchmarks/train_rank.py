"""One rank of a sweep run: train with Lightning DDP, time compute alone, write the result.

``benchmarks/sweep`` starts one process per rank, ``--ranks-per-node`` ranks to a
Lightning node (``num_nodes=WORLD_SIZE / ranks_per_node``, ``devices=ranks_per_node``),
with the rendezvous in the environment (``MASTER_ADDR``, ``MASTER_PORT``, ``WORLD_SIZE``,
``NODE_RANK``, ``LOCAL_RANK`` and, in an emulated network, ``GLOO_SOCKET_IFNAME``)::

    python -m benchmarks.train_rank --task large --scheme qsgd --bits 4 --steps 30 \\
        --out run.json

Each rank trains for ``--steps`` optimizer steps, recording its training loss and the
wall time after every step; then all ranks time Lightning training steps of a copy of the
model on their own (single-device, no communication), at the same time, so the figure
carries the same CPU contention and per-step framework work as training. For PyTorch's
peer hooks, whose compression hides inside their communication, each rank also times its
hook's own work over a process group of itself alone (:func:`time_peer_codec`). Rank 0
evaluates test accuracy on the whole test set and writes one JSON object holding every
rank's per-step statistics (the strategy's ``stats_history``), losses, times and compute
time, plus the run's configuration.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import os
import socket
import statistics
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.distributed as dist
from lightning.pytorch.callbacks import Callback, EarlyStopping
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from benchmarks.tasks import TASKS, Task
from lightning_quant import QuantizedDDPStrategy
from lightning_quant.hooks import get_scheme, make_comm_hook
from lightning_quant.runstore import RunStoreLogger, versions

__all__ = ["StepRecorder", "main", "time_compute"]

COMPUTE_WARMUP = 2
PEER_WARMUP = 4  # PyTorch's PowerSGD hook starts compressing at its third step


def tx_counter(interface: str | None) -> Path | None:
    """Return the byte counter of what ``interface`` sent, if this process can read it.

    Inside an emulated network (``ip netns exec`` mounts the namespace's own ``/sys``) it
    counts every frame the rank's node put on its link, TCP/IP headers and ACKs included.
    """
    if not interface or interface == "lo":
        return None
    path = Path("/sys/class/net") / interface / "statistics" / "tx_bytes"
    return path if path.exists() else None


class StepRecorder(Callback):
    """Keep this rank's training loss, training time and, given a counter, the bytes its
    interface had sent, after every optimizer step (the counter also before step 0); and
    at every validation, the step, the training time and the validation metrics.

    Training time leaves validation out: the time validation takes is kept apart
    (``val_s``), so time to a target is training time, and the cost of checking is stated.
    """

    def __init__(self, counter: Path | None = None, progress: Path | None = None) -> None:
        self.losses: list[float] = []
        self.times: list[float] = []
        self.tx_bytes: list[int] = []
        self.validations: list[dict[str, float]] = []
        self.val_s = 0.0
        self.counter = counter
        self.progress = progress  # a file the sweep watches (a link that changes mid-run)
        self._start = 0.0
        self._val_started = 0.0
        self.start_unix: float | None = None

    def _count(self) -> None:
        if self.counter is not None:
            self.tx_bytes.append(int(self.counter.read_text()))

    def _train_time(self) -> float:
        return time.perf_counter() - self._start - self.val_s

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.perf_counter()
        self.start_unix = time.time()
        self._count()

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, _: int
    ) -> None:
        self._count()
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self.losses.append(float(loss.detach()))
        self.times.append(self._train_time())
        if self.progress is not None and trainer.is_global_zero:
            self.progress.write_text(str(len(self.losses)))

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._val_started = time.perf_counter()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.val_s += time.perf_counter() - self._val_started
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val")}
        point = {"step": trainer.global_step, "time_s": self._train_time(), **metrics}
        self.validations.append(point)


def time_compute(task: Task, model: L.LightningModule, loader: Any, steps: int) -> list[float]:
    """Return the seconds of ``steps`` Lightning training steps on this rank alone.

    A single-device Lightning fit of a copy of ``model`` (the trained weights stay as
    they are) over ``loader``: forward, backward, optimizer step, data loading and
    Lightning's own per-step work, with no communication. The first
    :data:`COMPUTE_WARMUP` steps are not timed.
    """
    clone = task.model()
    clone.load_state_dict(model.state_dict())
    recorder = StepRecorder()
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        num_nodes=1,
        max_steps=COMPUTE_WARMUP + steps + 1,
        logger=False,
        callbacks=[recorder],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
    )
    trainer.fit(clone, loader)
    times = recorder.times
    return [b - a for a, b in itertools.pairwise(times[COMPUTE_WARMUP:])]


def time_peer_codec(
    task: Task, model: L.LightningModule, loader: Any, scheme: str, steps: int
) -> float:
    """Return the seconds a PyTorch peer hook adds to a step on this rank, wire excluded.

    PyTorch's hooks do their compression inside the hook (PowerSGD's matrix products and
    orthogonalization, fp16's casts), so the strategy's statistics cannot separate it
    from the wire. Here every rank wraps a copy of ``model`` in DDP over a process group
    of itself alone, where collectives move nothing, and times raw training steps with
    the hook and without one; the difference of the medians is the hook's own work.
    Must be called on every rank (creating process groups is collective).
    """
    rank, world = dist.get_rank(), dist.get_world_size()
    groups = [dist.new_group([r], backend="gloo") for r in range(world)]
    own = groups[rank]
    cap = get_scheme(scheme).ddp_settings.get("bucket_cap_mb", 25)
    medians = []
    for hooked in (False, True):
        clone = task.model()
        clone.load_state_dict(model.state_dict())
        ddp = DistributedDataParallel(clone, process_group=own, bucket_cap_mb=cap)
        if hooked:
            state, hook = make_comm_hook(scheme, process_group=own)
            ddp.register_comm_hook(state.bind(ddp), hook)
        optimizer = torch.optim.SGD(ddp.parameters(), lr=task.lr, momentum=0.9)
        seconds = []
        batches = itertools.cycle(loader)
        # PowerSGD allreduces plainly for its first 2 steps; time it once it compresses
        for index in range(PEER_WARMUP + steps):
            x, y = next(batches)
            start = time.perf_counter()
            optimizer.zero_grad()
            cross_entropy(ddp(x), y).backward()
            optimizer.step()
            if index >= PEER_WARMUP:
                seconds.append(time.perf_counter() - start)
        medians.append(statistics.median(seconds))
        del ddp, optimizer
        gc.collect()
    del groups, own
    gc.collect()
    return max(0.0, medians[1] - medians[0])


def cross_entropy(logits: torch.Tensor, y: torch.Tensor, **kw: Any) -> torch.Tensor:
    """Cross-entropy of ``logits`` (classes last) against ``y``: a classifier's or an LM's."""
    return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), **kw)


@torch.no_grad()
def evaluate(model: nn.Module, loader: Any) -> tuple[float, float]:
    """Return (accuracy, mean cross-entropy) of ``model`` over every target of ``loader``
    (every sample of a classifier, every next byte of a language model)."""
    model.eval()
    correct, loss, count = 0, 0.0, 0
    for x, y in loader:
        logits = model(x)
        correct += int((logits.argmax(-1) == y).sum())
        loss += float(cross_entropy(logits, y, reduction="sum"))
        count += y.numel()
    return correct / count, loss / count


def _stopper(args: argparse.Namespace, task: Task) -> list[Callback]:
    """``--stop-at``: stop at the first validation that reaches the target (a race); the
    threshold moves a float32 step past it (metrics are float32), as ``EarlyStopping``
    wants it strictly passed."""
    if args.stop_at is None:
        return []
    mode, past = ("max", -1.0) if task.higher_is_better else ("min", 1.0)
    threshold = args.stop_at + past * 1e-6 * max(1.0, abs(args.stop_at))
    return [EarlyStopping(task.target, mode=mode, stopping_threshold=threshold, patience=10**9,
                          check_on_train_epoch_end=False)]  # fmt: skip


def _strategy(args: argparse.Namespace) -> QuantizedDDPStrategy:
    settings = json.loads(args.settings)  # the sweep's: RunSpec.quantizer_settings()
    return QuantizedDDPStrategy(
        args.scheme,
        bits=settings.pop("bits", args.bits),
        bucket_size=settings.pop("bucket_size", args.bucket_size),
        collective=args.collective,
        hierarchical=args.hierarchical == "true",
        start_step=args.start_step,
        check_error=args.check_error,
        error_feedback=args.error_feedback,
        seed=args.seed,
        quantizer_config=settings or None,
        process_group_backend="gloo",
        timeout=timedelta(seconds=args.pg_timeout_s),
    )


def _store_logger(args: argparse.Namespace, task: Task) -> RunStoreLogger | None:
    """Rank 0 reports the run live to the run store, under the sweep's run key."""
    if not args.api:
        return None
    return RunStoreLogger(
        args.api,
        name=args.run_name,
        tags=[tag for tag in args.tags.split(",") if tag],
        run_key=args.run_key,
        spool_dir=args.spool_dir,
        fields={"dataset": task.dataset, "model_name": task.model_name},
    )


def run(args: argparse.Namespace) -> dict[str, Any] | None:
    """Train, measure and return rank 0's result (``None`` on the other ranks)."""
    world = int(os.environ["WORLD_SIZE"])
    per_node = args.ranks_per_node
    task = TASKS[args.task]
    batch_size = args.batch_size or task.batch_size
    L.seed_everything(args.seed, workers=True, verbose=False)
    model = task.model()
    train, test = task.loaders(batch_size=batch_size, seed=args.seed)
    recorder = StepRecorder(tx_counter(os.environ.get("GLOO_SOCKET_IFNAME")), args.progress)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=per_node,
        num_nodes=world // per_node,
        strategy=_strategy(args),
        max_steps=args.steps,
        logger=_store_logger(args, task) or False,
        log_every_n_steps=1,  # every step's loss reaches the run store
        callbacks=[recorder, *_stopper(args, task)],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=1.0 if args.val_every else 0,
        val_check_interval=args.val_every or None,
        check_val_every_n_epoch=None if args.val_every else 1,
    )
    fit_start = time.perf_counter()
    trainer.fit(model, train, test if args.val_every else None)
    fit_s = time.perf_counter() - fit_start
    strategy = trainer.strategy
    assert isinstance(strategy, QuantizedDDPStrategy)
    stats, config = list(strategy.stats_history), strategy.config_dict()
    auto = strategy.comm_state.auto if strategy.comm_state is not None else None
    decisions = list(auto.decisions) if auto is not None else []
    explained = list(auto.explained) if auto is not None else []
    rank = dist.get_rank()
    # Lightning unwrapped DDP at teardown; free the reducer while the group still lives
    del trainer, strategy
    gc.collect()

    dist.barrier()  # every rank times its compute at once, contending for the cores
    compute = time_compute(task, model, train, args.compute_steps)
    peer_codec = None
    if get_scheme(args.scheme).hides_codec:
        peer_codec = time_peer_codec(task, model, train, args.scheme, args.compute_steps)
    own = {
        "rank": rank,
        "stats": stats,
        "losses": recorder.losses,
        "times": recorder.times,
        "tx_bytes": recorder.tx_bytes,
        "validations": recorder.validations,
        "val_s": recorder.val_s,
        "train_start_unix": recorder.start_unix,
        "compute_s": statistics.median(compute),
        "compute_samples_s": compute,
        "peer_codec_s": peer_codec,
        "fit_s": fit_s,
        "threads": torch.get_num_threads(),
    }
    ranks: list[Any] = [None] * world
    dist.all_gather_object(ranks, own)
    result = None
    if rank == 0:
        accuracy, test_loss = evaluate(model, test)
        result = {
            "task": task.name,
            "dataset": task.dataset,
            "model_name": task.model_name,
            "param_count": sum(p.numel() for p in model.parameters()),
            "scheme": args.scheme,
            "bits": config["bits"],
            "seed": args.seed,
            "steps": args.steps,
            "batch_size": batch_size,
            "world_size": world,
            "config": config,
            "decisions": decisions,  # auto's: (step, bucket, configuration)
            "decisions_explained": explained,  # and what each weighed
            "hyperparameters": {
                **dict(model.hparams),
                "batch_size": batch_size,
                "max_steps": args.steps,
            },
            "test_accuracy": accuracy,
            "test_loss": test_loss,
            "ranks": ranks,
            "host": socket.gethostname(),
            "cpu_count": os.cpu_count(),
            "versions": versions(),
        }
    dist.barrier()
    dist.destroy_process_group()
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", choices=sorted(TASKS), required=True)
    parser.add_argument("--scheme", required=True)
    parser.add_argument("--bits", type=int, default=4)
    parser.add_argument("--bucket-size", type=int, default=512)
    parser.add_argument("--collective", default="auto")
    parser.add_argument("--ranks-per-node", type=int, default=1)
    parser.add_argument("--hierarchical", choices=("true", "false"), default="false")
    parser.add_argument("--settings", default="{}", help="quantizer settings, as JSON")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, required=True, help="optimizer steps to train")
    parser.add_argument("--batch-size", type=int, help="per rank (default: the task's)")
    parser.add_argument("--val-every", type=int, default=0, help="steps between validations")
    parser.add_argument("--start-step", type=int, default=0, help="uncompressed warm-up steps")
    parser.add_argument("--compute-steps", type=int, default=8, help="steps timed alone")
    parser.add_argument("--pg-timeout-s", type=float, default=300.0)
    parser.add_argument("--out", type=Path, required=True, help="rank 0 writes JSON here")
    parser.add_argument("--progress", type=Path, help="rank 0 writes its steps done here")
    parser.add_argument(
        "--check-error", action="store_true", help="also reduce in fp32: the exact error"
    )
    parser.add_argument("--error-feedback", action="store_true")
    parser.add_argument(
        "--stop-at", type=float, help="stop once a validation reaches this target value"
    )
    parser.add_argument("--api", help="report the run live to this run store (rank 0)")
    parser.add_argument(
        "--spool-dir", default="data/spool", help="where what the store did not take waits"
    )
    parser.add_argument("--run-key", help="the run's idempotency key in the store")
    parser.add_argument("--run-name", help="the run's name in the store")
    parser.add_argument("--tags", default="", help="comma list of the run's tags")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = run(args)
    if result is not None:
        tmp = args.out.with_suffix(".tmp")
        tmp.write_text(json.dumps(result))
        tmp.replace(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
