"""Run-store API speed: metric ingest through batched POSTs, and query latency at scale.

Starts ``uvicorn api.main:app`` (one worker) on loopback with a fresh database: a SQLite
file in a temporary directory, or with ``--database postgresql`` a database on a
throwaway PostgreSQL server started for the run (:mod:`benchmarks.postgres_server`;
``--database-url`` takes any other), then:

1. **Ingest**: logs metric points of one run through the library's own writer
   (:class:`lightning_quant.runstore.StoreClient`, as the training logger does), posting
   batches of each size; prints sustained values/s (one value = one (step, name) point),
   from the first point queued to the last one stored. The client encodes and sends from
   its background thread, in this process, on the same 2 cores as the server.
2. **Seed**: 1000 runs x 1000 steps x 6 metric names (6M points) through two such
   clients, in batches of 1000 steps x 6 names = 6000 values. This is also ingest,
   sustained, into a growing database; its rate is printed.
3. **Queries**: p50/p95 latency over ``--requests`` requests each of
   ``GET /runs/compare`` (2-8 random runs), ``GET /runs/{id}/metrics`` (all 6 names,
   downsampled to 200 points each), the same for one metric, and ``GET /runs``
   (filtered by scheme, sorted by final_loss, 50 per page).

Goals on a 2-core machine: at least 20,000 points/s ingested on SQLite and 50,000 on
PostgreSQL (batches of 6000 values); p95 under 200 ms for compare and metrics queries
with 1000 runs x 1000 steps stored.

Run::

    python -m benchmarks.api_ingest                          # SQLite, about 2-3 minutes
    python -m benchmarks.api_ingest --database postgresql    # a throwaway PostgreSQL
    python -m benchmarks.api_ingest --quick    # 100 runs x 1000 steps, for a smoke test
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import random
import signal
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from api.server import start_server, wait_until_healthy
from benchmarks import postgres_server
from lightning_quant.runstore import MetricPoint, RunRecord, StoreClient, api_base

__all__ = ["main", "running_server"]

REPO_ROOT = Path(__file__).resolve().parents[1]
SCHEMES = ("qsgd", "nuqsgd", "qsgd_inf", "dqsgd", "global_qsgd", "fp32")
NAMES = ("loss", "accuracy", "step_s", "encode_s", "communicate_s", "sent_bytes")
INGEST_GOALS = {"sqlite": 20_000, "postgresql": 50_000}  # points/s
LATENCY_GOAL_MS = 200.0  # p95


@contextmanager
def running_server(database_url: str) -> Iterator[str]:
    """Run the run store's server (:mod:`api.server`) on a free loopback port; yield its
    base URL."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {key: value for key, value in os.environ.items() if not key.startswith("LQ_")}
    env["LQ_DATABASE_URL"] = database_url
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    process = start_server(port, env=env, log_level="warning", cwd=REPO_ROOT)
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(base_url, process, timeout=30)
        yield base_url
    finally:
        process.terminate()
        process.wait(timeout=30)


def run_record(scheme: str, index: int, rng: random.Random) -> RunRecord:
    """A finished run of ``scheme`` with plausible summary figures."""
    bits = {"fp32": 32, "global_qsgd": 8}.get(scheme, rng.choice((2, 4, 8)))
    step_s = 0.05 + 0.2 * bits / 32 + 0.01 * rng.random()
    raw = 4 * 11_689_512 * 1000
    return RunRecord(
        name=f"bench-{scheme}-{bits}b-{index}",
        tags=("bench", scheme),
        status="finished",
        scheme=scheme,
        bits=bits,
        bucket_size=512,
        world_size=rng.choice((2, 4, 8)),
        num_nodes=1,
        backend="gloo",
        device="cpu",
        model_name="resnet18",
        param_count=11_689_512,
        dataset=rng.choice(("cifar10", "cifar100")),
        quantizer_config={"bits": bits, "bucket_size": 512},
        hyperparameters={"lr": 0.1, "batch_size": 128, "seed": index},
        final_loss=0.2 + 0.3 / bits + 0.05 * rng.random(),
        final_accuracy=0.9 - 0.2 / bits,
        total_raw_bytes=raw,
        total_sent_bytes=raw * bits // 32,
        mean_step_s=step_s,
        mean_encode_s=0.004,
        mean_communicate_s=step_s - 0.058,
        mean_decode_s=0.004,
        predicted_step_s=step_s * 0.95,
    )


def metric_points(first_step: int, steps: int, rng: random.Random) -> list[MetricPoint]:
    """``steps`` steps with every name in ``NAMES``."""
    return [
        MetricPoint(
            step=step,
            epoch=step // 100,
            wall_time=1.7e9 + 0.1 * step,
            values={name: rng.random() for name in NAMES},
        )
        for step in range(first_step, first_step + steps)
    ]


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


@dataclass
class IngestRow:
    label: str
    values: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.values / self.seconds


def _deliver(
    base_url: str, runs: list[tuple[RunRecord, list[list[MetricPoint]]]], spool: Path
) -> float:
    """Send runs (record, batches of points) through one StoreClient; return the seconds
    from the first point queued to the last one stored."""
    values = max(len(batch) * len(NAMES) for _, batches in runs for batch in batches)
    client = StoreClient(base_url, spool_dir=spool, batch_values=values, timeout=60)
    start = time.perf_counter()
    for record, batches in runs:
        key = client.create(record)
        for batch in batches:
            client.log(key, batch)
    if not client.close(timeout=3600):
        raise RuntimeError(f"the store did not take every point; see {spool}")
    return time.perf_counter() - start


def measure_ingest(base_url: str, steps_per_batch: int, batches: int, spool: Path) -> IngestRow:
    """Log ``batches`` batches of ``steps_per_batch`` steps to a new run."""
    rng = random.Random(steps_per_batch)
    record = dataclasses.replace(run_record("qsgd", 0, rng), status="running", tags=("ingest",))
    points = [metric_points(b * steps_per_batch, steps_per_batch, rng) for b in range(batches)]
    seconds = _deliver(base_url, [(record, points)], spool)
    values = steps_per_batch * len(NAMES)
    return IngestRow(f"{steps_per_batch} steps x {len(NAMES)} = {values}", values * batches,
                     seconds)  # fmt: skip


def seed(base_url: str, runs: int, steps: int, spool: Path, threads: int = 2) -> IngestRow:
    """Create ``runs`` runs with ``steps`` steps of every metric, through ``threads``
    clients at once."""
    per_batch = 1000  # steps per POST: 6000 values, under the 10,000-value cap
    seconds: list[float] = []

    def work(worker: int) -> None:
        rng = random.Random(worker)
        mine = [
            (
                run_record(SCHEMES[index % len(SCHEMES)], index, rng),
                [
                    metric_points(first, min(per_batch, steps - first), rng)
                    for first in range(0, steps, per_batch)
                ],
            )  # fmt: skip
            for index in range(worker, runs, threads)
        ]
        seconds.append(_deliver(base_url, mine, spool / str(worker)))

    pool = [threading.Thread(target=work, args=(worker,)) for worker in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    return IngestRow(f"seed {runs} runs x {steps} steps x {len(NAMES)} names",
                     runs * steps * len(NAMES), max(seconds))  # fmt: skip


def time_requests(client: httpx.Client, make_url: Callable[[], str], count: int) -> list[float]:
    """Latencies in seconds of ``count`` GETs of ``make_url()`` (after 5 warm-ups)."""
    for _ in range(5):
        client.get(make_url()).raise_for_status()
    latencies = []
    for _ in range(count):
        url = make_url()
        start = time.perf_counter()
        client.get(url).raise_for_status()
        latencies.append(time.perf_counter() - start)
    return latencies


def ms(seconds: float) -> str:
    return f"{1000 * seconds:8.1f}"


def main(argv: list[str] | None = None) -> None:
    """Run the three stages and print their tables."""
    # SIGTERM unwinds like Ctrl-C, so the API server and a throwaway PostgreSQL stop too
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--quick", action="store_true", help="100 runs, 50 requests")
    parser.add_argument("--database", choices=sorted(INGEST_GOALS), default="sqlite")
    parser.add_argument("--database-url", help="an existing, empty database instead")
    args = parser.parse_args(argv)
    if args.quick:
        args.runs, args.requests = 100, 50

    with tempfile.TemporaryDirectory(prefix="lq-bench-") as directory, ExitStack() as stack:
        database_url = args.database_url or f"sqlite:///{Path(directory) / 'bench.db'}"
        if args.database == "postgresql" and not args.database_url:
            reason = postgres_server.unavailable()
            if reason is not None:
                parser.error(f"no throwaway PostgreSQL here: {reason}")
            server = stack.enter_context(postgres_server.postgres_server())
            database_url = server.create_database("bench")
        kind = "postgresql" if database_url.startswith("postgresql") else "sqlite"
        print(f"database: {kind}")
        with running_server(database_url) as base_url:
            api = api_base(base_url)
            spool = Path(directory) / "spool"
            ingest = [
                measure_ingest(base_url, steps, batches, spool)
                for steps, batches in ((10, 400), (100, 200), (1000, 40), (1600, 25))
            ]

            print(f"Ingest: one StoreClient, {len(NAMES)} names per step")
            print(f"{'batch (values)':>26} {'points/s':>10}")
            for row in ingest:
                print(f"{row.label:>26} {row.rate:10,.0f}")

            seeded = seed(base_url, args.runs, args.steps, spool)
            print()
            print(f"Seed through the API ({seeded.label}, 2 StoreClients at once):")
            print(
                f"  {seeded.values:,} points in {seeded.seconds:.1f} s = {seeded.rate:,.0f} "
                f"points/s"
            )

            with httpx.Client(base_url=api, timeout=60, trust_env=False) as client:
                ids = [
                    run["id"]
                    for page in range(0, args.runs, 1000)
                    for run in client.get(
                        "/runs", params={"offset": page, "limit": 1000, "tag": "bench"}
                    ).json()["data"]
                ]
                rng = random.Random(0)

                def compare() -> str:
                    chosen = rng.sample(ids, rng.randint(2, 8))
                    return "/runs/compare?ids=" + ",".join(map(str, chosen))

                def metrics() -> str:
                    return f"/runs/{rng.choice(ids)}/metrics?max_points=200"

                def one_metric() -> str:
                    return f"/runs/{rng.choice(ids)}/metrics?names=loss&max_points=200"

                def full_metric() -> str:
                    return f"/runs/{rng.choice(ids)}/metrics?names=loss"

                def runs_page() -> str:
                    return f"/runs?scheme={rng.choice(SCHEMES)}&sort=final_loss&limit=50"

                queries = [
                    ("compare 2-8 runs", compare, True),
                    (f"metrics, {len(NAMES)} names -> 200 pts each", metrics, True),
                    ("metrics, 1 name -> 200 pts", one_metric, True),
                    (f"metrics, 1 name, all {args.steps} pts", full_metric, True),
                    ("list runs: scheme, sort, 50", runs_page, False),
                ]
                print()
                print(
                    f"Queries with {len(ids)} runs x {args.steps} steps x {len(NAMES)} names "
                    f"stored ({args.requests} requests each):"
                )
                print(f"{'query':>36} {'p50 ms':>8} {'p95 ms':>8} {'goal':>6}")
                for label, make_url, goal in queries:
                    latencies = time_requests(client, make_url, args.requests)
                    p95 = percentile(latencies, 0.95)
                    verdict = ("ok" if 1000 * p95 < LATENCY_GOAL_MS else "MISS") if goal else ""
                    print(f"{label:>36} {ms(statistics.median(latencies))} {ms(p95)} {verdict:>6}")

    best = max(row.rate for row in ingest)
    goal = INGEST_GOALS[kind]
    print()
    print(
        f"Ingest goal on {kind} {goal:,} points/s: best batch {best:,.0f}, seeding "
        f"{seeded.rate:,.0f} -> {'ok' if min(best, seeded.rate) >= goal else 'MISS'}"
    )


if __name__ == "__main__":
    main()
