"""Start one process per rank of a run, on loopback or inside an emulated network."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from benchmarks.netem import EmulatedNetwork
from benchmarks.sweep.plan import RunSpec

__all__ = ["ROOT", "RunFailed", "free_port", "launch_ranks", "rank_argv", "threads_per_rank"]

ROOT = Path(__file__).resolve().parents[2]
ERROR_TAIL_LINES = 40


class RunFailed(RuntimeError):
    """A run's ranks crashed, timed out or wrote no result; the message holds the log tail."""


def threads_per_rank(world_size: int) -> int:
    """Return the cores each rank may use: ``cores // world_size``, at least 1."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, cores // world_size)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rank_argv(spec: RunSpec, out: Path, timeout_s: float) -> list[str]:
    batch = ["--batch-size", str(spec.batch_size)] if spec.batch_size else []
    return [
        sys.executable, "-m", "benchmarks.train_rank",
        "--task", spec.task, "--scheme", spec.scheme, "--bits", str(spec.bits),
        "--bucket-size", str(spec.bucket_size), "--seed", str(spec.seed),
        "--steps", str(spec.steps), *batch,
        "--val-every", str(spec.val_every), "--start-step", str(spec.start_step),
        "--collective", spec.collective,
        "--ranks-per-node", str(spec.ranks_per_node),
        "--hierarchical", str(spec.hierarchical).lower(),
        "--settings", json.dumps(spec.quantizer_settings()),
        "--pg-timeout-s", str(max(30.0, min(300.0, timeout_s))), "--out", str(out),
        *(["--progress", str(out.with_name("progress"))] if spec.link_change else []),
        *(["--check-error"] if spec.check_error else []),
        *(["--error-feedback"] if spec.error_feedback else []),
        *(["--stop-at", str(spec.stop_at)] if spec.stop_at is not None else []),
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
    extra_args: Sequence[str] = (),
) -> dict[str, Any]:
    """Run one configuration's ranks to the end; return rank 0's result.

    ``extra_args`` go to every rank's ``train_rank`` (the run store's, say).

    Raises:
        RunFailed: a rank exited non-zero (the others are killed ``grace_s`` later), the
            run took longer than ``timeout_s``, or rank 0 wrote no result.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    out = workdir / "result.json"
    argv = [*rank_argv(spec, out, timeout_s), *extra_args]
    threads = str(threads_per_rank(spec.world_size))
    extra = {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "PYTHONPATH": str(ROOT)}
    port = net.next_master_port() if net is not None else free_port()
    procs: list[subprocess.Popen[bytes]] = []
    changer = _LinkChanger(spec, net, out.with_name("progress"))
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
                    "NODE_RANK": str(rank // spec.ranks_per_node),
                    "LOCAL_RANK": str(rank % spec.ranks_per_node),
                    "LOCAL_WORLD_SIZE": str(spec.ranks_per_node),
                    "GLOO_SOCKET_IFNAME": "lo",
                }  # fmt: skip
            with logs[rank].open("wb") as log:
                procs.append(
                    subprocess.Popen(
                        command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                        stdin=subprocess.DEVNULL, start_new_session=True,
                    )
                )  # fmt: skip
        _wait(procs, logs, timeout_s, poll_s, grace_s, changer.poll)
    finally:
        for proc in procs:
            _kill(proc)
        changer.restore()
    if not out.exists():
        raise RunFailed(f"rank 0 wrote no result\n{_tail(logs[0])}")
    result = json.loads(out.read_text())
    if changer.applied_at is not None:
        step, link = spec.link_change or (0, "")
        result["link_change"] = {
            "step": step,
            "from": spec.link,
            "to": link,
            "applied_at_step": changer.applied_at,
        }
    return result


class _LinkChanger:
    """Change the network's link once rank 0's progress file reaches the spec's step, and
    change it back after the run: the next run on the same network starts on the link
    its spec names."""

    def __init__(self, spec: RunSpec, net: EmulatedNetwork | None, progress: Path) -> None:
        self.change = spec.link_change if net is not None else None
        self.start = spec.link
        self.net = net
        self.progress = progress
        self.applied_at: int | None = None

    def poll(self) -> None:
        if self.change is None or self.applied_at is not None or self.net is None:
            return
        try:
            done = int(self.progress.read_text() or 0)
        except (FileNotFoundError, ValueError):
            return
        if done >= self.change[0]:
            self.net.set_rate(self.change[1])
            self.applied_at = done

    def restore(self) -> None:
        """Put back the link the run started on, if it was changed."""
        if self.applied_at is not None and self.net is not None:
            self.net.set_rate(self.start)


def _wait(
    procs: Sequence[subprocess.Popen[bytes]],
    logs: Sequence[Path],
    timeout_s: float,
    poll_s: float,
    grace_s: float,
    on_poll: Callable[[], None] = lambda: None,
) -> None:
    deadline = time.monotonic() + timeout_s
    failed_at: float | None = None
    while True:
        codes = [proc.poll() for proc in procs]
        on_poll()
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
