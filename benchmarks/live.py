"""How soon a sweep's run shows on the dashboard: first optimizer step to first metric stored.

Starts the run store (``uvicorn api.main:app``, a fresh SQLite file), runs a small sweep
(``python -m benchmarks.sweep --api URL``) in its own process, and polls the REST API, as
the dashboard does, every ``--poll`` seconds. For every run it records when the run and
its first metric were first seen, and compares that with the wall time rank 0's logger
stamped on that metric when it was logged, right after the optimizer step.

Goal: every run's first metrics readable within 10 s of its first optimizer step.

Run::

    python -m benchmarks.live                  # 4 digits runs on 2 ranks, about a minute
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from benchmarks.api_ingest import REPO_ROOT, running_server
from lightning_quant.runstore import api_base

__all__ = ["main"]

GOAL_S = 10.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--schemes", default="fp32,qsgd,nuqsgd,global_qsgd")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--poll", type=float, default=0.25, help="seconds between polls")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="lq-live-") as directory:
        with running_server(f"sqlite:///{Path(directory) / 'live.db'}") as base_url:
            sweep = subprocess.Popen(
                [sys.executable, "-m", "benchmarks.sweep", "--task", "digits", "--schemes",
                 args.schemes, "--bits", "4", "--steps", str(args.steps), "--api", base_url],
                cwd=REPO_ROOT, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            seen: dict[int, float] = {}  # run id -> when its first metric was readable
            first_step: dict[int, float] = {}
            with httpx.Client(base_url=api_base(base_url), timeout=10, trust_env=False) as api:
                while sweep.poll() is None:
                    for run in api.get("/runs", params={"limit": 1000}).json()["data"]:
                        if run["id"] in seen:
                            continue
                        points = api.get(
                            f"/runs/{run['id']}/metrics", params={"max_points": 2}
                        ).json()["data"]
                        stamped = [p["wall_time"] for p in points if p["wall_time"] is not None]
                        if stamped:
                            seen[run["id"]] = time.time()
                            first_step[run["id"]] = min(stamped)
                    time.sleep(args.poll)
                names = {
                    run["id"]: run["name"]
                    for run in api.get("/runs", params={"limit": 1000}).json()["data"]
                }
    lags = {run_id: seen[run_id] - first_step[run_id] for run_id in seen}
    print(f"{'run':>48} {'first metric readable after':>28}")
    for run_id, lag in sorted(lags.items()):
        print(f"{names.get(run_id, run_id):>48} {lag:>26.2f} s")
    if not lags:
        print("no run was seen while it trained")
        return 1
    worst = max(lags.values())
    print(
        f"\n{len(lags)} runs seen while training; median {statistics.median(lags.values()):.2f} s,"
        f" worst {worst:.2f} s (goal {GOAL_S:.0f} s: {'ok' if worst <= GOAL_S else 'MISS'})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
