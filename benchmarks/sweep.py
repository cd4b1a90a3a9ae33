"""Train with real multi-process Lightning DDP for every scheme x bits x world size x seed.

Each run starts one ``python -m benchmarks.train_rank`` process per rank, each its own
Lightning node (``num_nodes``), on loopback (``--link none``) or each in its own network
namespace behind a ``tbf``-shaped link (``--link 1gbit``/``100mbit``, root only; see
:mod:`benchmarks.netem`). Every run becomes one record: measured step time (median over
the steps after the warm-up, of the slower rank), bytes on the wire, final training loss,
test accuracy, and the step time :func:`benchmarks.perf_model.predict_step_time`
predicts from the run's own compute time, codec time and wire bytes. A rich progress bar
runs while the sweep does, a table follows; ``--json`` writes the records and
``--api URL`` stores every run, its per-step metrics and its summary in the run store.

Example::

    python -m benchmarks.sweep --task large --schemes fp32,qsgd,nuqsgd,torch_fp16 \\
        --bits 4 --world-size 2 --link 100mbit --steps 30 --json large-100mbit.json

Requested schemes are never dropped: PyTorch hooks that cannot run on gloo/CPU
(``torch_bf16``, ``torch_quantization``) and settings a scheme refuses (Global-QSGD at
3 bits, or with more workers than its lanes hold) become records with status
``"unavailable"`` and the reason; a run that crashes or times out becomes a record with
status ``"failed"`` and the tail of its log, and the sweep goes on.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

import httpx
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from benchmarks.netem import (
    LINK_PRESETS,
    EmulatedNetwork,
    NetworkEmulationError,
    cleanup_stale,
    emulated_network,
)
from benchmarks.perf_model import Collective, collective_for, predict_step_time
from benchmarks.tasks import TASKS
from lightning_quant.reporting import api_base

__all__ = [
    "RECORD_FIELDS",
    "UNAVAILABLE_PEERS",
    "ApiClient",
    "RunFailed",
    "RunSpec",
    "main",
    "markdown_tables",
    "plan_runs",
    "summarize",
]

ROOT = Path(__file__).resolve().parents[1]

# PyTorch hooks a user might pick that cannot run here; why, as measured in PEERS.md.
UNAVAILABLE_PEERS = {
    "torch_bf16": (
        "unavailable on gloo/CPU: DDP refuses to register PyTorch's bf16_compress_hook "
        "unless CUDA with NCCL 2.10+ is present (gloo itself sums bf16; our 'bf16' "
        "baseline does that) - see PEERS.md"
    ),
    "torch_quantization": (
        "unavailable on gloo/CPU: PyTorch's quantization_pertensor_hook crashes in its "
        "decode step ('IndexError: invalid index of a 0-dim tensor'); it expects the "
        "nested all-gather output NCCL gives, gloo gives a flat one - see PEERS.md"
    ),
}
PEER_SCHEMES = ("torch_fp16", "torch_powersgd")
# Schemes that send floats: one run per configuration, recorded at their wire width.
FLOAT_BITS = {"fp32": 32, "fp16": 16, "bf16": 16, "torch_fp16": 16, "torch_powersgd": 32}
BASELINE = "fp32"
LOSS_WINDOW = 5  # steps in the trailing mean that makes "final loss" less noisy
METRICS_PER_POST = 500  # steps per metrics POST (about 9 values each)
ERROR_TAIL_LINES = 40

RECORD_FIELDS = (
    "task", "scheme", "bits", "world_size", "link", "seed", "status", "error",
    "steps", "warmup_steps", "measured_steps",
    "step_time_s", "step_time_s_per_rank", "mean_step_s",
    "predicted_step_s", "prediction_error", "compute_s", "codec_s", "predicted_comm_s",
    "collective", "collectives_per_step",
    "wire_bytes_per_step", "raw_bytes_per_step", "compression_ratio", "mean_bits",
    "encode_s", "communicate_s", "decode_s",
    "final_loss", "test_accuracy", "test_loss",
    "speedup_vs_fp32", "time_to_fp32_loss_s", "train_wall_s",
    "param_count", "threads_per_rank", "load_1m", "api_run_id",
)  # fmt: skip


class RunFailed(RuntimeError):
    """A run's ranks crashed, timed out or wrote no result; the message holds the log tail."""


@dataclass(frozen=True)
class RunSpec:
    """One training run of the sweep; ``unavailable`` says why it cannot run, if it cannot."""

    task: str
    scheme: str
    bits: int
    world_size: int
    link: str
    seed: int
    steps: int
    warmup: int
    batch_size: int
    bucket_size: int
    unavailable: str | None = None

    @property
    def name(self) -> str:
        return (
            f"{self.task} {self.scheme} {self.bits}b {self.world_size}x {self.link} seed{self.seed}"
        )

    @property
    def is_float(self) -> bool:
        return self.scheme in FLOAT_BITS


# ----- planning -----------------------------------------------------------------------------


def known_schemes() -> list[str]:
    """Return every name ``--schemes`` accepts: the registry, the peers, the unavailable."""
    from lightning_quant.quantizers import available_quantizers

    return [*available_quantizers(), *PEER_SCHEMES, *UNAVAILABLE_PEERS]


def why_unavailable(scheme: str, bits: int, world_size: int, bucket_size: int) -> str | None:
    """Return why ``scheme`` cannot run with these settings here, or ``None`` if it can."""
    if scheme in UNAVAILABLE_PEERS:
        return UNAVAILABLE_PEERS[scheme]
    if scheme in PEER_SCHEMES:
        return None
    from lightning_quant.quantizers import get_quantizer
    from lightning_quant.quantizers.global_qsgd import worker_levels

    settings = {} if scheme in FLOAT_BITS else {"bits": bits}
    if scheme not in FLOAT_BITS and scheme != "global_qsgd":
        settings["bucket_size"] = bucket_size
    try:
        get_quantizer(scheme, **settings)
        if scheme == "global_qsgd":
            worker_levels(bits, world_size)
    except ValueError as error:
        return f"unavailable: {error}"
    return None


def plan_runs(args: argparse.Namespace) -> list[RunSpec]:
    """Return the runs in the order they go: per link and world size, fp32 first.

    Float schemes and peers run once per (link, world size, seed) at their wire width;
    the rest once per ``--bits`` value.
    """
    schemes = sorted(args.schemes, key=lambda s: s != BASELINE)  # stable: fp32 first
    specs = []
    for link, world, seed, scheme in itertools.product(
        args.link, args.world_size, args.seeds, schemes
    ):
        widths = [FLOAT_BITS[scheme]] if scheme in FLOAT_BITS else args.bits
        if scheme in UNAVAILABLE_PEERS:
            widths = [16 if scheme == "torch_bf16" else 8]
        for bits in widths:
            specs.append(
                RunSpec(
                    task=args.task,
                    scheme=scheme,
                    bits=bits,
                    world_size=world,
                    link=link,
                    seed=seed,
                    steps=args.steps,
                    warmup=args.warmup,
                    batch_size=args.batch_size,
                    bucket_size=args.bucket_size,
                    unavailable=why_unavailable(scheme, bits, world, args.bucket_size),
                )
            )
    return specs


# ----- running the ranks --------------------------------------------------------------------


def threads_per_rank(world_size: int) -> int:
    """Return the cores each rank may use: ``cores // world_size``, at least 1."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, cores // world_size)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _rank_argv(spec: RunSpec, out: Path, timeout_s: float) -> list[str]:
    return [
        sys.executable, "-m", "benchmarks.train_rank",
        "--task", spec.task, "--scheme", spec.scheme, "--bits", str(spec.bits),
        "--bucket-size", str(spec.bucket_size), "--seed", str(spec.seed),
        "--steps", str(spec.steps), "--batch-size", str(spec.batch_size),
        "--pg-timeout-s", str(max(30.0, min(300.0, timeout_s))), "--out", str(out),
    ]  # fmt: skip


def _kill(proc: subprocess.Popen[bytes]) -> None:
    """Kill a rank and everything it started (it leads its own process group)."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            proc.kill()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass


def _tail(path: Path, lines: int = ERROR_TAIL_LINES) -> str:
    if not path.exists():
        return ""
    text = path.read_text(errors="replace").splitlines()
    return "\n".join(text[-lines:])


def launch_ranks(
    spec: RunSpec,
    workdir: Path,
    net: EmulatedNetwork | None,
    timeout_s: float,
    poll_s: float = 0.2,
    grace_s: float = 10.0,
) -> dict[str, Any]:
    """Run one configuration's ranks to the end; return rank 0's result.

    Raises:
        RunFailed: a rank exited non-zero (the others are killed ``grace_s`` later), the
            run took longer than ``timeout_s``, or rank 0 wrote no result.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    out = workdir / "result.json"
    argv = _rank_argv(spec, out, timeout_s)
    threads = str(threads_per_rank(spec.world_size))
    extra = {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "PYTHONPATH": str(ROOT)}
    port = net.next_master_port() if net is not None else _free_port()
    procs: list[subprocess.Popen[bytes]] = []
    logs = [workdir / f"rank{rank}.log" for rank in range(spec.world_size)]
    try:
        for rank in range(spec.world_size):
            if net is not None:
                command, env = net.command(rank, argv, extra, master_port=port), None
            else:
                command = argv
                env = {
                    **os.environ, **extra,
                    "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
                    "WORLD_SIZE": str(spec.world_size), "RANK": str(rank),
                    "NODE_RANK": str(rank), "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1",
                    "GLOO_SOCKET_IFNAME": "lo",
                }  # fmt: skip
            with logs[rank].open("wb") as log:
                procs.append(
                    subprocess.Popen(
                        command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                        stdin=subprocess.DEVNULL, start_new_session=True,
                    )
                )  # fmt: skip
        _wait(procs, logs, timeout_s, poll_s, grace_s)
    finally:
        for proc in procs:
            _kill(proc)
    if not out.exists():
        raise RunFailed(f"rank 0 wrote no result\n{_tail(logs[0])}")
    return json.loads(out.read_text())


def _wait(
    procs: Sequence[subprocess.Popen[bytes]],
    logs: Sequence[Path],
    timeout_s: float,
    poll_s: float,
    grace_s: float,
) -> None:
    deadline = time.monotonic() + timeout_s
    failed_at: float | None = None
    while True:
        codes = [proc.poll() for proc in procs]
        if all(code == 0 for code in codes):
            return
        bad = [rank for rank, code in enumerate(codes) if code not in (None, 0)]
        now = time.monotonic()
        if bad and failed_at is None:
            failed_at = now
        if bad and (all(code is not None for code in codes) or now - failed_at > grace_s):
            rank = bad[0]
            raise RunFailed(f"rank {rank} exited with {codes[rank]}\n{_tail(logs[rank])}")
        if now > deadline:
            slow = [rank for rank, code in enumerate(codes) if code is None]
            raise RunFailed(
                f"timed out after {timeout_s:.0f} s (ranks {slow} still running)\n"
                f"{_tail(logs[slow[0]])}"
            )
        time.sleep(poll_s)


# ----- turning a result into a record -------------------------------------------------------


def _median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else 0.0


def smoothed(losses: Sequence[float], window: int = LOSS_WINDOW) -> list[float]:
    """Return the trailing mean of the last ``window`` losses at every step."""
    out = []
    for index in range(len(losses)):
        part = losses[max(0, index - window + 1) : index + 1]
        out.append(sum(part) / len(part))
    return out


def time_to_loss(losses: Sequence[float], times: Sequence[float], target: float) -> float | None:
    """Return the wall time at which the smoothed loss first reached ``target``, or None."""
    for loss, at in zip(smoothed(losses), times, strict=False):
        if loss <= target:
            return at
    return None


def _collective(scheme: str) -> Collective:
    # PyTorch's fp16 and PowerSGD hooks both allreduce; collective_for knows our registry
    return Collective.ALLREDUCE if scheme in PEER_SCHEMES else collective_for(scheme)


def _collectives_per_bucket(scheme: str) -> int:
    if scheme == "global_qsgd":
        return 2  # the shared scale (allreduce MAX), then the lanes (allreduce SUM)
    if scheme == "torch_powersgd":
        return 3  # uncompressed rank-1 tensors, then P, then Q
    return 1


def _per_step(result: dict[str, Any]) -> tuple[list[float], list[float]]:
    """Return the mean training loss over ranks and the slower rank's time, per step."""
    ranks = result["ranks"]
    count = min(len(r["losses"]) for r in ranks)
    losses = [statistics.fmean(r["losses"][i] for r in ranks) for i in range(count)]
    times = [max(r["times"][i] for r in ranks) for i in range(count)]
    return losses, times


def summarize(spec: RunSpec, result: dict[str, Any]) -> dict[str, Any]:
    """Return the record of a finished run from rank 0's result."""
    ranks = result["ranks"]
    stats = [r["stats"] for r in ranks]
    count = min(len(s) for s in stats)
    if count == 0:
        raise RunFailed("the strategy recorded no optimizer step")
    warm = min(spec.warmup, count - 1)
    measured = [s[warm:count] for s in stats]
    per_rank = [_median([step["step_s"] for step in steps]) for steps in measured]
    own = measured[0]
    wire = _median([s["wire_bytes"] for s in own])
    raw = _median([s["raw_bytes"] for s in own])
    if spec.scheme in PEER_SCHEMES:  # their codec hides in their hook; timed apart
        codec = max(r.get("peer_codec_s") or 0.0 for r in ranks)
    else:
        codec = max(_median([s["encode_s"] + s["decode_s"] for s in st]) for st in measured)
    compute = max(r["compute_s"] for r in ranks)
    collective = _collective(spec.scheme)
    collectives = max(1, round(_median([s["buckets"] for s in own]))) * _collectives_per_bucket(
        spec.scheme
    )
    prediction = predict_step_time(
        compute_s=compute,
        wire_bytes=wire,
        world_size=spec.world_size,
        link=spec.link,
        collective=collective,
        codec_s=codec,
        collectives_per_step=collectives,
    )
    losses, times = _per_step(result)
    step_time = max(per_rank)
    return {
        "task": spec.task,
        "scheme": spec.scheme,
        "bits": spec.bits,
        "world_size": spec.world_size,
        "link": spec.link,
        "seed": spec.seed,
        "status": "ok",
        "error": None,
        "steps": count,
        "warmup_steps": warm,
        "measured_steps": count - warm,
        "step_time_s": step_time,
        "step_time_s_per_rank": per_rank,
        "mean_step_s": max(statistics.fmean(s["step_s"] for s in steps) for steps in measured),
        "predicted_step_s": prediction.total_s,
        "prediction_error": step_time / prediction.total_s - 1 if prediction.total_s else None,
        "compute_s": compute,
        "codec_s": codec,
        "predicted_comm_s": prediction.comm_s,
        "collective": str(collective),
        "collectives_per_step": collectives,
        "wire_bytes_per_step": wire,
        "raw_bytes_per_step": raw,
        "compression_ratio": raw / wire if wire else None,
        "mean_bits": statistics.fmean(s["bits"] for s in own),
        "encode_s": _median([s["encode_s"] for s in own]),
        "communicate_s": _median([s["communicate_s"] for s in own]),
        "decode_s": _median([s["decode_s"] for s in own]),
        "final_loss": statistics.fmean(losses[-LOSS_WINDOW:]) if losses else None,
        "test_accuracy": result["test_accuracy"],
        "test_loss": result["test_loss"],
        "speedup_vs_fp32": None,
        "time_to_fp32_loss_s": None,
        "train_wall_s": times[-1] if times else None,
        "param_count": result["param_count"],
        "threads_per_rank": ranks[0].get("threads"),
        "load_1m": os.getloadavg()[0],  # other work on the machine skews the timings
        "api_run_id": None,
    }


def empty_record(spec: RunSpec, status: str, error: str) -> dict[str, Any]:
    """Return a record with every field present, for a run that did not produce figures."""
    record: dict[str, Any] = dict.fromkeys(RECORD_FIELDS)
    record.update(
        task=spec.task,
        scheme=spec.scheme,
        bits=spec.bits,
        world_size=spec.world_size,
        link=spec.link,
        seed=spec.seed,
        status=status,
        error=error,
        steps=spec.steps,
    )
    return record


def compare_with_baseline(
    record: dict[str, Any], baseline: dict[str, Any] | None, result: dict[str, Any] | None
) -> None:
    """Fill the ratio to fp32's step time and the time to reach fp32's final loss."""
    if baseline is None or record["status"] != "ok" or baseline["status"] != "ok":
        return
    record["speedup_vs_fp32"] = baseline["step_time_s"] / record["step_time_s"]
    if result is not None and baseline["final_loss"] is not None:
        losses, times = _per_step(result)
        record["time_to_fp32_loss_s"] = time_to_loss(losses, times, baseline["final_loss"])


# ----- the run store ------------------------------------------------------------------------


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and value == value and abs(value) != float("inf")


class ApiClient:
    """Store runs in the lightning-quant API; every failure is reported and survived.

    Args:
        url: the server, e.g. ``http://127.0.0.1:8000`` (``/api/v1`` is added).
        token: bearer token when the server requires one for writes.
        warn: prints one line for each request that failed.
    """

    def __init__(self, url: str, token: str | None, warn: Any, timeout: float = 10.0) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.base = api_base(url)
        self.client = httpx.Client(
            base_url=self.base, headers=headers, timeout=timeout, trust_env=False
        )
        self.warn = warn
        self.errors = 0

    def close(self) -> None:
        self.client.close()

    def _call(self, method: str, path: str, body: dict[str, Any]) -> dict[str, Any] | None:
        try:
            response = self.client.request(method, path, json=body)
            response.raise_for_status()
            return response.json() if response.content else {}
        except httpx.HTTPStatusError as error:
            detail = error.response.text[:500]
            self.warn(
                f"API {method} {self.base}{path} answered {error.response.status_code}: "
                f"{detail}; the run stays in the JSON"
            )
        except (httpx.HTTPError, ValueError) as error:
            self.warn(f"API {method} {self.base}{path} failed: {error}; the run stays in the JSON")
        self.errors += 1
        return None

    def create_run(self, body: dict[str, Any]) -> int | None:
        created = self._call("POST", "/runs", body)
        return int(created["id"]) if created and "id" in created else None

    def post_metrics(self, run_id: int, points: list[dict[str, Any]]) -> bool:
        for start in range(0, len(points), METRICS_PER_POST):
            batch = points[start : start + METRICS_PER_POST]
            if self._call("POST", f"/runs/{run_id}/metrics", {"points": batch}) is None:
                return False
        return True

    def finish(self, run_id: int, update: dict[str, Any]) -> bool:
        return self._call("PATCH", f"/runs/{run_id}", update) is not None


def _versions() -> dict[str, str]:
    import lightning
    import torch

    import lightning_quant

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "lightning": lightning.__version__,
        "lightning_quant": lightning_quant.__version__,
        "httpx": httpx.__version__,
    }


def _planned_quantizer_config(spec: RunSpec) -> dict[str, Any]:
    if spec.unavailable or spec.scheme in PEER_SCHEMES:
        return {}
    from lightning_quant.quantizers import get_quantizer

    settings: dict[str, Any] = {} if spec.is_float else {"bits": spec.bits}
    if not spec.is_float and spec.scheme != "global_qsgd":
        settings["bucket_size"] = spec.bucket_size
    if spec.scheme == "dqsgd":
        settings.update(max_bits=spec.bits, lr=TASKS[spec.task].lr)
    return get_quantizer(spec.scheme, **settings).config_dict()


def run_body(spec: RunSpec, sweep_tag: str) -> dict[str, Any]:
    """Return the API's creation body for ``spec``: its full configuration, status running."""
    task = TASKS[spec.task]
    sizes = task.sizes
    param_count = sum(a * b + b for a, b in itertools.pairwise(sizes))
    quantizer = _planned_quantizer_config(spec)
    return {
        "name": spec.name,
        "tags": ["sweep", sweep_tag, f"task:{spec.task}", f"link:{spec.link}"],
        "status": "running",
        "scheme": spec.scheme,
        "bits": spec.bits,
        "bucket_size": quantizer.get("bucket_size"),
        "world_size": spec.world_size,
        "num_nodes": spec.world_size,
        "backend": "gloo",
        "device": "cpu",
        "model_name": "mlp-" + "-".join(map(str, sizes)),
        "param_count": param_count,
        "dataset": task.dataset,
        "strategy_config": {
            "strategy": "QuantizedDDPStrategy",
            "scheme": spec.scheme,
            "bits": spec.bits,
            "bucket_size": spec.bucket_size,
            "world_size": spec.world_size,
            "num_nodes": spec.world_size,
            "backend": "gloo",
            "seed": spec.seed,
            "link": spec.link,
        },
        "quantizer_config": quantizer,
        "hyperparameters": {
            "lr": task.lr,
            "momentum": 0.9,
            "optimizer": "SGD",
            "batch_size_per_rank": spec.batch_size,
            "max_steps": spec.steps,
            "warmup_steps": spec.warmup,
            "seed": spec.seed,
            "threads_per_rank": threads_per_rank(spec.world_size),
        },
        "host": socket.gethostname(),
        "versions": _versions(),
    }


def metric_points(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Return one API point per optimizer step: loss, bytes, seconds and bits."""
    losses, times = _per_step(result)
    ranks = result["ranks"]
    own = ranks[0]["stats"]
    start = ranks[0].get("train_start_unix")
    points = []
    for index, stats in enumerate(own):
        values: dict[str, float] = {
            name: float(stats[name])
            for name in (
                "raw_bytes",
                "wire_bytes",
                "compression_ratio",
                "encode_s",
                "communicate_s",
                "decode_s",
                "bits",
            )  # fmt: skip
        }
        # the slower rank's step time, as in the summary
        values["step_s"] = max(
            r["stats"][index]["step_s"] for r in ranks if index < len(r["stats"])
        )
        if index < len(losses):
            values["loss"] = losses[index]
        point: dict[str, Any] = {
            "step": index,
            "values": {k: v for k, v in values.items() if _finite(v)},
        }
        if start is not None and index < len(times):
            point["wall_time"] = start + times[index]
        points.append(point)
    return points


def finish_body(record: dict[str, Any], result: dict[str, Any] | None) -> dict[str, Any]:
    """Return the API update closing a run: status, summary figures and the whole record."""
    body: dict[str, Any] = {
        "status": "finished" if record["status"] == "ok" else "failed",
        "finished_at": datetime.now(UTC).isoformat(),
        "summary": {k: v for k, v in record.items() if k != "api_run_id"},
    }
    if result is None or record["status"] != "ok":
        return body
    own = result["ranks"][0]["stats"]
    measured = own[record["warmup_steps"] :]
    slower = max(range(len(result["ranks"])), key=lambda r: record["step_time_s_per_rank"][r])
    body.update(
        final_loss=record["final_loss"],
        final_accuracy=record["test_accuracy"],
        total_raw_bytes=int(sum(s["raw_bytes"] for s in own)),
        total_wire_bytes=int(sum(s["wire_bytes"] for s in own)),
        compression_ratio=record["compression_ratio"],
        mean_step_s=record["mean_step_s"],
        mean_encode_s=statistics.fmean(s["encode_s"] for s in measured),
        mean_communicate_s=statistics.fmean(s["communicate_s"] for s in measured),
        mean_decode_s=statistics.fmean(s["decode_s"] for s in measured),
        predicted_step_s=record["predicted_step_s"],
        strategy_config={**result["config"], "link": record["link"]},
        quantizer_config=result["config"].get("quantizer") or {},
    )
    body["summary"]["slower_rank"] = slower
    return {k: v for k, v in body.items() if v is None or not isinstance(v, float) or _finite(v)}


# ----- the sweep ----------------------------------------------------------------------------


class _Terminated(BaseException):
    """SIGTERM arrived: unwind like Ctrl-C so ranks are killed and namespaces removed."""


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise _Terminated(signum)


class Sweep:
    """Runs the planned specs in order, keeping records, the fp32 baselines and the API."""

    def __init__(self, args: argparse.Namespace, console: Console) -> None:
        self.args = args
        self.console = console
        self.records: list[dict[str, Any]] = []
        self.baselines: dict[tuple[str, str, int, int], dict[str, Any]] = {}
        self.tag = "sweep:" + datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
        self.api = ApiClient(args.api, args.api_token, self._warn) if args.api else None

    def _warn(self, message: str) -> None:
        self.console.print(f"[yellow]warning:[/] {message}", highlight=False)

    def run(self, specs: list[RunSpec], workdir: Path) -> list[dict[str, Any]]:
        progress = Progress(
            SpinnerColumn(),
            TextColumn("[progress.description]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=self.console,
        )
        with progress:
            bar = progress.add_task("sweep", total=len(specs))
            groups = itertools.groupby(specs, key=lambda s: (s.link, s.world_size))
            for (link, world), group in groups:
                with self._network(link, world) as net:
                    for spec in group:
                        progress.update(bar, description=spec.name)
                        record = self._one(spec, net, workdir / f"run{len(self.records):03d}")
                        self.records.append(record)
                        self._save()
                        progress.console.print(_one_line(record), highlight=False)
                        progress.advance(bar)
            progress.update(bar, description="sweep done")
        return self.records

    def _network(self, link: str, world: int) -> Any:
        if link == "none":
            return contextlib.nullcontext()
        return emulated_network(world, link)

    def _one(self, spec: RunSpec, net: EmulatedNetwork | None, workdir: Path) -> dict[str, Any]:
        run_id = None
        if self.api is not None:
            run_id = self.api.create_run(run_body(spec, self.tag))
        result = None
        if spec.unavailable:
            record = empty_record(spec, "unavailable", spec.unavailable)
        else:
            try:
                result = launch_ranks(spec, workdir, net, self.args.timeout)
                record = summarize(spec, result)
            except (RunFailed, KeyError, ValueError, TypeError) as error:
                message = str(error) if isinstance(error, RunFailed) else repr(error)
                record = empty_record(spec, "failed", message)
                result = None
            except BaseException:  # Ctrl-C or SIGTERM: the stored run must not stay running
                if self.api is not None and run_id is not None:
                    interrupted = empty_record(spec, "failed", "interrupted")
                    self.api.finish(run_id, finish_body(interrupted, None))
                raise
        key = (spec.task, spec.link, spec.world_size, spec.seed)
        if spec.scheme == BASELINE and record["status"] == "ok":
            self.baselines[key] = record
        compare_with_baseline(record, self.baselines.get(key), result)
        record["api_run_id"] = run_id
        if self.api is not None and run_id is not None:
            if result is not None and record["status"] == "ok":
                self.api.post_metrics(run_id, metric_points(result))
            self.api.finish(run_id, finish_body(record, result))
        return record

    def _save(self) -> None:
        if self.args.json is not None:
            write_json(self.args.json, self.records)


def write_json(path: Path, records: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(records, indent=2))
    tmp.replace(path)


def _one_line(record: dict[str, Any]) -> str:
    name = (
        f"{record['task']} {record['scheme']} {record['bits']}b {record['world_size']}x "
        f"{record['link']} seed{record['seed']}"
    )
    if record["status"] == "ok":
        return (
            f"[green]ok[/] {name}: {1e3 * record['step_time_s']:.0f} ms/step "
            f"(predicted {1e3 * record['predicted_step_s']:.0f}), "
            f"test acc {record['test_accuracy']:.3f}"
        )
    colour = "yellow" if record["status"] == "unavailable" else "red"
    first = (record["error"] or "").splitlines()[0] if record["error"] else ""
    return f"[{colour}]{record['status']}[/] {name}: {first}"


# ----- tables -------------------------------------------------------------------------------


def _ms(value: float | None) -> str:
    return "" if value is None else f"{1e3 * value:.1f}"


def _fmt(value: float | None, spec: str) -> str:
    return "" if value is None else format(value, spec)


RUN_COLUMNS = (
    "scheme", "bits", "ranks", "link", "seed", "status", "step ms", "predicted ms",
    "meas/pred", "x fp32", "wire MB/step", "ratio", "final loss", "test acc", "t->fp32 loss s",
)  # fmt: skip


def run_rows(records: list[dict[str, Any]]) -> tuple[list[list[str]], list[str]]:
    """Return one table row per record, in :data:`RUN_COLUMNS` order, and the notes.

    A run that is unavailable or failed shows its status and a note number; the note
    is the first line of its error.
    """
    rows, notes = [], []
    for r in records:
        ok = r["status"] == "ok"
        status = r["status"]
        if not ok:
            notes.append(f"{r['scheme']} {r['bits']}b: " + (r["error"] or "").splitlines()[0])
            status += f" [{len(notes)}]"
        ratio = r["step_time_s"] / r["predicted_step_s"] if ok and r["predicted_step_s"] else None
        x_fp32 = 1 / r["speedup_vs_fp32"] if r.get("speedup_vs_fp32") else None
        rows.append(
            [
                r["scheme"], str(r["bits"]), str(r["world_size"]), r["link"], str(r["seed"]),
                status, _ms(r["step_time_s"]), _ms(r["predicted_step_s"]), _fmt(ratio, ".2f"),
                _fmt(x_fp32, ".2f"),
                _fmt(r["wire_bytes_per_step"] / 1e6 if ok else None, ".3f"),
                _fmt(r["compression_ratio"], ".1f"), _fmt(r["final_loss"], ".3f"),
                _fmt(r["test_accuracy"], ".4f"), _fmt(r["time_to_fp32_loss_s"], ".1f"),
            ]
        )  # fmt: skip
    return rows, notes


CONFIG_COLUMNS = (
    "scheme", "bits", "ranks", "link", "runs", "test acc (mean)", "vs fp32 (points)",
    "step ms (median)", "x fp32",
)  # fmt: skip


def config_rows(records: list[dict[str, Any]]) -> list[list[str]]:
    """Return one row per configuration, averaged over seeds (ok runs only)."""
    ok = [r for r in records if r["status"] == "ok"]
    key = lambda r: (r["link"], r["world_size"], r["scheme"], r["bits"])  # noqa: E731
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for r in ok:
        groups.setdefault(key(r), []).append(r)
    rows = []
    for (link, world, scheme, bits), runs in groups.items():
        acc = statistics.fmean(r["test_accuracy"] for r in runs)
        step = _median([r["step_time_s"] for r in runs])
        base = groups.get((link, world, BASELINE, 32))
        delta = ratio = None
        if base:
            delta = 100 * (acc - statistics.fmean(r["test_accuracy"] for r in base))
            ratio = step / _median([r["step_time_s"] for r in base])
        rows.append(
            [scheme, str(bits), str(world), link, str(len(runs)), f"{acc:.4f}",
             _fmt(delta, "+.2f"), _ms(step), _fmt(ratio, ".2f")]
        )  # fmt: skip
    return rows


def _rich_table(title: str, columns: Sequence[str], rows: list[list[str]]) -> Table:
    table = Table(title=title)
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*row)
    return table


def _markdown(columns: Sequence[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell.replace("|", "/") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def markdown_tables(records: list[dict[str, Any]]) -> str:
    """Return the per-run table and, with several seeds, the per-configuration one."""
    rows, notes = run_rows(records)
    text = _markdown(RUN_COLUMNS, rows)
    if notes:
        text += "\n\n" + "\n".join(f"[{i}] {note}" for i, note in enumerate(notes, 1))
    if len({r["seed"] for r in records}) > 1:
        text += "\n\nMean over seeds:\n\n" + _markdown(CONFIG_COLUMNS, config_rows(records))
    return text + "\n"


# ----- command line -------------------------------------------------------------------------


def _comma(kind: type) -> Any:
    def parse(text: str) -> list[Any]:
        try:
            values = [kind(part.strip()) for part in text.split(",") if part.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a comma list of {kind.__name__}") from None
        if not values:
            raise argparse.ArgumentTypeError("expected at least one value")
        return list(dict.fromkeys(values))

    return parse


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.sweep",
        description="Train every scheme x bits x world size x seed with multi-process "
        "Lightning DDP and compare step time, bytes, loss and accuracy.",
    )
    parser.add_argument("--task", choices=sorted(TASKS), default="digits")
    parser.add_argument(
        "--schemes",
        type=_comma(str),
        default="fp32,qsgd,qsgd_inf,nuqsgd,dqsgd,global_qsgd,torch_fp16,torch_powersgd",
        help="comma list of registry names and PyTorch peers (torch_fp16, torch_powersgd; "
        "torch_bf16 and torch_quantization are reported unavailable on gloo/CPU)",
    )
    parser.add_argument("--bits", type=_comma(int), default="4", help="comma list; "
                        "float schemes and peers run once at their own width")  # fmt: skip
    parser.add_argument("--world-size", type=_comma(int), default="2", help="comma list")
    parser.add_argument(
        "--link",
        type=_comma(str),
        default="none",
        help=f"comma list of {', '.join(LINK_PRESETS)}; shaped links need root",
    )
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps per run")
    parser.add_argument("--warmup", type=int, default=3, help="first steps not timed")
    parser.add_argument("--seeds", type=_comma(int), default="0", help="comma list of seeds")
    parser.add_argument("--batch-size", type=int, default=32, help="per rank")
    parser.add_argument("--bucket-size", type=int, default=512, help="quantization bucket")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per run")
    parser.add_argument("--json", type=Path, help="write the records (a list) here")
    parser.add_argument("--markdown", type=Path, help="write the tables as Markdown here")
    parser.add_argument("--logs", type=Path, help="keep every rank's log under this folder")
    parser.add_argument("--api", metavar="URL", help="store every run in this lightning-quant API")
    parser.add_argument("--api-token", help="bearer token for API writes (LQ_API_TOKEN)")
    args = parser.parse_args(argv)
    unknown = [s for s in args.schemes if s not in known_schemes()]
    if unknown:
        parser.error(
            f"unknown scheme(s) {', '.join(unknown)}; available: {', '.join(known_schemes())}"
        )
    bad_links = [link for link in args.link if link not in LINK_PRESETS]
    if bad_links:
        parser.error(
            f"unknown link(s) {', '.join(bad_links)}; choose from {', '.join(LINK_PRESETS)}"
        )
    if any(world < 2 for world in args.world_size):
        parser.error("--world-size values must be 2 or more (gradient exchange needs 2 ranks)")
    if args.steps < 1 or args.warmup < 0:
        parser.error("--steps must be >= 1 and --warmup >= 0")
    if args.warmup >= args.steps:
        parser.error(f"--warmup ({args.warmup}) must be below --steps ({args.steps})")
    return args


def _check_network(links: Sequence[str], console: Console) -> bool:
    """Build and remove a small shaped network once, to fail before any run if we cannot."""
    if all(link == "none" for link in links):
        return True
    try:
        cleanup_stale()
        with emulated_network(2, "100mbit", install_signal_handlers=False):
            pass
    except NetworkEmulationError as error:
        console.print(f"[red]error:[/] {error}", highlight=False)
        return False
    return True


@dataclass
class _Workdir:
    path: Path
    temporary: tempfile.TemporaryDirectory[str] | None

    def cleanup(self) -> None:
        if self.temporary is not None:
            self.temporary.cleanup()


def _workdir(logs: Path | None) -> _Workdir:
    if logs is not None:
        logs.mkdir(parents=True, exist_ok=True)
        return _Workdir(logs, None)
    temporary = tempfile.TemporaryDirectory(prefix="lq-sweep-")
    return _Workdir(Path(temporary.name), temporary)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console(stderr=True)
    if not _check_network(args.link, console):
        return 2
    specs = plan_runs(args)
    workdir = _workdir(args.logs)
    sweep = Sweep(args, console)
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    code = 0
    try:
        sweep.run(specs, workdir.path)
    except NetworkEmulationError as error:
        console.print(f"[red]error:[/] {error}", highlight=False)
        code = 2
    except (KeyboardInterrupt, _Terminated):
        console.print(
            "[red]interrupted:[/] ranks killed, emulated network removed", highlight=False
        )
        code = 130
    finally:
        signal.signal(signal.SIGTERM, previous)
        if sweep.api is not None:
            sweep.api.close()
        workdir.cleanup()
    records = sweep.records
    if args.json is not None:
        write_json(args.json, records)
    if args.markdown is not None:
        args.markdown.write_text(markdown_tables(records))
    out = Console()
    if not out.is_terminal:
        out = Console(width=max(out.width, 200))
    rows, notes = run_rows(records)
    out.print(_rich_table("Sweep", RUN_COLUMNS, rows))
    for index, note in enumerate(notes, 1):
        out.print(f"[{index}] {note}", highlight=False, markup=False)
    if len(args.seeds) > 1:
        out.print(_rich_table("Mean over seeds", CONFIG_COLUMNS, config_rows(records)))
    if sweep.api is not None and sweep.api.errors:
        console.print(f"[yellow]{sweep.api.errors} API request(s) failed; see above[/]")
    return code


if __name__ == "__main__":
    sys.exit(main())
