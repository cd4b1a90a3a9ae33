"""A sweep's runs in the run store, on the library's one road.

Rank 0 of every run reports live through a :class:`~lightning_quant.runstore.RunStoreLogger`
(``train_rank --api``), under a run key the sweep hands it, so the dashboard shows the run
while it trains. Once the run has ended, the sweep, through the same
:class:`~lightning_quant.runstore.StoreClient`, creates the run if rank 0 never could (a
run that was unavailable or failed early: the key makes this a no-op otherwise) and
PATCHes what only it knows: the figures across ranks (the slower rank's step time, the
prediction, test accuracy) and the whole record.

Ranks in an emulated network's namespaces cannot reach an API on the host's loopback:
rank 0's logger then spools everything (it fails fast: nothing listens there), and the
sweep replays that run's spool from the host once the run has ended, before its PATCH.
"""

from __future__ import annotations

import shutil
import socket
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.sweep.launch import threads_per_rank
from benchmarks.sweep.plan import RunSpec
from benchmarks.tasks import TASKS
from lightning_quant.hooks import get_scheme
from lightning_quant.runstore import RunRecord, StoreClient, replay_spool, versions

__all__ = ["SweepStore", "planned_record"]


class SweepStore:
    """The sweep's side of the run store: run keys, and the summaries it PATCHes.

    Args:
        url: the API server.
        token: bearer token for writes.
        tag: this sweep's tag (``sweep:<time>``); run keys derive from it.
    """

    def __init__(self, url: str, token: str | None, tag: str) -> None:
        self.url, self.token, self.tag = url, token, tag
        self.client = StoreClient(url, token=token, timeout=10.0)
        self.spool_root = Path(tempfile.mkdtemp(prefix="lq-sweep-spool-"))

    def key(self, index: int) -> str:
        return f"{self.tag}-run{index:04d}"

    def rank_args(self, spec: RunSpec, index: int) -> list[str]:
        """``train_rank`` options that make rank 0 report the run live under its key."""
        tags = ",".join(self.tags(spec))
        args = ["--api", self.url, "--run-key", self.key(index), "--run-name", spec.name]
        return [*args, "--tags", tags, "--spool-dir", str(self.spool_root / self.key(index))]

    def tags(self, spec: RunSpec) -> tuple[str, ...]:
        """The run's tags: every sweep's, this sweep's, its task and its link."""
        return ("sweep", self.tag, f"task:{spec.task}", f"link:{spec.link}")

    def finish(self, index: int, spec: RunSpec, record: dict[str, Any]) -> None:
        """Deliver what rank 0 spooled, make sure the run exists, PATCH the cross-rank
        summary and the record, and note the stored run's id in the record."""
        key = self.key(index)
        replay_spool(self.url, self.spool_root / key, self.token)
        self.client.create(planned_record(spec, key, self.tags(spec)))
        fields: dict[str, Any] = {"summary": dict(record)}
        if record["status"] == "ok":
            fields.update(
                final_accuracy=record["test_accuracy"],
                predicted_step_s=record["predicted_step_s"],
            )
        else:
            fields["status"] = "failed"
        self.client.update(key, **fields)
        self.client.flush(timeout=10)
        record["run_id"] = self.client.run_id(key)  # where the dashboard finds it

    def close(self) -> bool:
        """Flush the client; remove the spools if everything in them was delivered."""
        if not any(self.spool_root.rglob("*.jsonl")):
            shutil.rmtree(self.spool_root, ignore_errors=True)
        return self.client.close(timeout=60)


def planned_record(spec: RunSpec, key: str, tags: tuple[str, ...]) -> RunRecord:
    """The run as the sweep plans it (what stands in the store if no rank ever reported)."""
    task = TASKS[spec.task]
    quantizer = (
        get_scheme(spec.scheme, **spec.quantizer_settings()).config_dict()
        if not spec.unavailable
        else {}
    )
    return RunRecord(
        name=spec.name,
        scheme=spec.scheme,
        run_key=key,
        tags=tags,
        bits=spec.bits,
        coding=spec.coding,
        collective=spec.collective,
        bucket_size=quantizer.get("bucket_size"),
        world_size=spec.world_size,
        num_nodes=spec.nodes,
        topology=spec.topology,
        hierarchical=spec.hierarchical,
        backend="gloo",
        device="cpu",
        dataset=task.dataset,
        model_name=task.model_name,
        strategy_config={"scheme": spec.scheme, "link": spec.link, "seed": spec.seed},
        quantizer_config=quantizer,
        hyperparameters={
            "lr": task.lr,
            "batch_size_per_rank": spec.batch_size,
            "max_steps": spec.steps,
            "warmup_steps": spec.warmup,
            "seed": spec.seed,
            "threads_per_rank": threads_per_rank(spec.world_size),
        },
        host=socket.gethostname(),
        versions=versions(),
    )
