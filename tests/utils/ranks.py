"""Run a function in real ``torch.distributed`` processes, one subprocess per rank.

Each rank gets the environment a launcher would give it (``MASTER_ADDR``, ``RANK``,
``WORLD_SIZE``, ``NODE_RANK``, ``LOCAL_RANK``) and calls ``module:function(**kwargs)``;
its return value comes back through ``torch.save``. A rank that hangs or fails fails the
test with its output instead of hanging CI.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_ranks(
    target: str, world_size: int, workdir: Path, timeout: float = 240, **kwargs: Any
) -> list[Any]:
    """Run ``target`` ("module:function") on ``world_size`` ranks; return their results."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    procs = []
    for rank in range(world_size):
        env = {
            **os.environ,
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "WORLD_SIZE": str(world_size),
            "RANK": str(rank),
            "NODE_RANK": str(rank),
            "LOCAL_RANK": "0",
            "OMP_NUM_THREADS": "1",
            "PYTHONPATH": str(ROOT),
        }
        out = workdir / f"rank{rank}.pt"
        log = open(workdir / f"rank{rank}.log", "w")  # noqa: SIM115 - closed below
        argv = [
            sys.executable,
            "-X",
            "faulthandler",
            "-m",
            "tests.utils.ranks",
            target,
            json.dumps(kwargs),
            str(out),
        ]
        procs.append((subprocess.Popen(argv, env=env, stdout=log, stderr=log, cwd=workdir), log))
    try:
        for proc, _ in procs:
            proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        for proc, _ in procs:
            proc.kill()
        raise AssertionError(
            f"ranks of {target} timed out:\n{_logs(workdir, world_size)}"
        ) from None
    finally:
        for proc, log in procs:
            proc.wait()
            log.close()
    if any(proc.returncode for proc, _ in procs):
        raise AssertionError(f"a rank of {target} failed:\n{_logs(workdir, world_size)}")
    return [torch.load(workdir / f"rank{r}.pt", weights_only=False) for r in range(world_size)]


def _logs(workdir: Path, world_size: int) -> str:
    return "\n".join(
        f"--- rank {r} ---\n" + (workdir / f"rank{r}.log").read_text()[-4000:]
        for r in range(world_size)
    )


def _main() -> None:
    import importlib

    target, kwargs, out = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
    module, function = target.split(":")
    result = getattr(importlib.import_module(module), function)(**kwargs)
    torch.save(result, out)


if __name__ == "__main__":
    _main()
