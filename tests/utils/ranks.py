"""Run a function in real ``torch.distributed`` processes, one process per rank.

Each rank gets the environment a launcher would give it (``MASTER_ADDR``, ``RANK``,
``WORLD_SIZE``, ``NODE_RANK``, ``LOCAL_RANK``) and calls ``module:function(**kwargs)``;
its return value comes back through ``torch.save``. A rank that hangs or fails fails the
test with its output instead of hanging CI.

Ranks are forked from a ``multiprocessing`` forkserver that has already imported torch,
Lightning and the library, so a rank starts in a fraction of a second instead of the 6-8 s
a fresh interpreter takes to import them (most of a multi-rank test's time on 2 cores).
The forkserver never initializes CUDA or a process group, so its children start clean.
"""

from __future__ import annotations

import atexit
import faulthandler
import functools
import importlib
import multiprocessing
import os
import socket
import sys
import time
from multiprocessing.context import ForkServerContext
from pathlib import Path
from typing import Any

import torch

from tests.utils.schemes import register_test_schemes

PRELOAD = [
    "torch",
    "torch.distributed",
    "lightning",
    "lightning_quant",
    "tests.lightning_quant.ddp_workers",
    "tests.lightning_quant.lightning_workers",
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@functools.cache
def _forkserver() -> ForkServerContext:
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)
    return context


def run_ranks(
    target: str, world_size: int, workdir: Path, timeout: float = 240, **kwargs: Any
) -> list[Any]:
    """Run ``target`` ("module:function") on ``world_size`` ranks; return their results."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    procs = []
    for rank in range(world_size):
        env = {
            **os.environ,  # as the test sees it now, not as the forkserver started
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "WORLD_SIZE": str(world_size),
            "RANK": str(rank),
            "NODE_RANK": str(rank),
            "LOCAL_RANK": "0",
            "LOCAL_WORLD_SIZE": "1",  # each rank a node of its own, as a launcher says
            "OMP_NUM_THREADS": "1",
        }
        args = (target, kwargs, workdir, rank, env)
        proc = _forkserver().Process(target=_rank_main, args=args, name=f"rank{rank}")
        proc.start()
        procs.append(proc)
    deadline = time.monotonic() + timeout
    try:
        for proc in procs:
            proc.join(max(0.0, deadline - time.monotonic()))
            if proc.exitcode is None:
                for other in procs:
                    other.kill()
                raise AssertionError(f"ranks of {target} timed out:\n{_logs(workdir, world_size)}")
    finally:
        for proc in procs:
            proc.join()
    if any(proc.exitcode for proc in procs):
        raise AssertionError(f"a rank of {target} failed:\n{_logs(workdir, world_size)}")
    return [torch.load(workdir / f"rank{r}.pt", weights_only=False) for r in range(world_size)]


def _rank_main(target: str, kwargs: dict, workdir: Path, rank: int, env: dict) -> None:
    """One rank, in a process forked from the preloaded server: its output goes to
    ``rank<N>.log``, its result to ``rank<N>.pt``."""
    with open(workdir / f"rank{rank}.log", "w") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
    faulthandler.enable()
    os.environ.clear()
    os.environ.update(env)
    os.chdir(workdir)
    torch.set_num_threads(1)
    register_test_schemes()  # a scheme a test registered exists in its ranks too
    module, function = target.split(":")
    result = getattr(importlib.import_module(module), function)(**kwargs)
    torch.save(result, workdir / f"rank{rank}.pt")
    atexit._run_exitfuncs()  # a forked child ends with os._exit: flush what a rank queued
    sys.stdout.flush()


def _logs(workdir: Path, world_size: int) -> str:
    return "\n".join(
        f"--- rank {r} ---\n" + (workdir / f"rank{r}.log").read_text()[-4000:]
        for r in range(world_size)
    )
