"""Run the planned specs in order: networks, ranks, records, baselines and the run store."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import itertools
import json
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)

from benchmarks.netem import EmulatedNetwork, emulated_network
from benchmarks.sweep.launch import RunFailed, launch_ranks
from benchmarks.sweep.plan import BASELINE, RunSpec
from benchmarks.sweep.records import compare_with_baseline, empty_record, summarize
from benchmarks.sweep.store import SweepStore
from benchmarks.tasks import TASKS

__all__ = ["Sweep", "Terminated", "on_sigterm", "write_json"]


class Terminated(BaseException):
    """SIGTERM arrived: unwind like Ctrl-C so ranks are killed and namespaces removed."""


def on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise Terminated(signum)


class Sweep:
    """Runs the planned specs in order, keeping records, the fp32 baselines and the API."""

    def __init__(self, args: argparse.Namespace, console: Console) -> None:
        self.args = args
        self.console = console
        self.records: list[dict[str, Any]] = []
        self.baselines: dict[tuple[str, str, int, int], dict[str, Any]] = {}
        self.tag = "sweep:" + datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
        self.store = SweepStore(args.api, args.api_token, self.tag) if args.api else None

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
            groups = itertools.groupby(specs, key=lambda s: (s.link, s.nodes, s.ranks_per_node))
            for (link, nodes, per_node), group in groups:
                with self._network(link, nodes, per_node) as net:
                    for spec in group:
                        progress.update(bar, description=spec.name)
                        record = self._one(spec, net, workdir / f"run{len(self.records):03d}")
                        self.records.append(record)
                        self._save()
                        progress.console.print(_one_line(record), highlight=False)
                        progress.advance(bar)
            progress.update(bar, description="sweep done")
        return self.records

    def _network(self, link: str, nodes: int, per_node: int) -> Any:
        """An emulated network of ``nodes`` namespaces; a single node needs no link."""
        if link == "none" or nodes < 2:
            return contextlib.nullcontext()
        return emulated_network(nodes, link, ranks_per_node=per_node)

    def _one(self, spec: RunSpec, net: EmulatedNetwork | None, workdir: Path) -> dict[str, Any]:
        index = len(self.records)
        spec = self._raced(spec)
        extra = self.store.rank_args(spec, index) if self.store is not None else []
        result = None
        if spec.unavailable:
            record = empty_record(spec, "unavailable", spec.unavailable)
        else:
            try:
                result = launch_ranks(spec, workdir, net, self.args.timeout, extra_args=extra)
                record = summarize(spec, result)
            except (RunFailed, KeyError, ValueError, TypeError) as error:
                message = str(error) if isinstance(error, RunFailed) else repr(error)
                record = empty_record(spec, "failed", message)
                result = None
            except BaseException:  # Ctrl-C or SIGTERM: the stored run must not stay running
                if self.store is not None:
                    self.store.finish(index, spec, empty_record(spec, "failed", "interrupted"))
                raise
        key = (spec.task, spec.link, spec.topology, spec.seed)
        if spec.scheme == BASELINE and not spec.hierarchical and record["status"] == "ok":
            self.baselines[key] = record
        compare_with_baseline(record, self.baselines.get(key), result, self.args.target)
        if self.store is not None:
            record["run_key"] = self.store.key(index)
            self.store.finish(index, spec, record)
        return record

    def _raced(self, spec: RunSpec) -> RunSpec:
        """With ``--race``: a configuration other than fp32 runs until fp32's final target
        value of its (task, link, topology, seed), or 3x the steps (issue 23's rule)."""
        baseline = self.baselines.get((spec.task, spec.link, spec.topology, spec.seed)) or {}
        if not self.args.race or spec.scheme == BASELINE:
            return spec
        target = self.args.target or baseline.get(f"final_{TASKS[spec.task].target}")
        if target is None:
            return spec
        return dataclasses.replace(spec, steps=3 * spec.steps, stop_at=target)

    def _save(self) -> None:
        if self.args.json is not None:
            write_json(self.args.json, self.records)


def write_json(path: Path, records: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(records, indent=2))
    tmp.replace(path)


def _one_line(record: dict[str, Any]) -> str:
    path = " hierarchical" if record["hierarchical"] else ""
    name = (
        f"{record['task']} {record['scheme']} {record['bits']}b {record['collective']}{path} "
        f"{record['topology']} {record['link']} seed{record['seed']}"
    )
    if record["status"] == "ok":
        return (
            f"[green]ok[/] {name}: {1e3 * record['step_time_s']:.0f} ms/step "
            f"(predicted {1e3 * record['predicted_step_s']:.0f}), "
            f"{record['sent_bytes_per_step'] / 1e6:.2f} MB sent/step, "
            f"test acc {record['test_accuracy']:.3f}"
        )
    colour = "yellow" if record["status"] == "unavailable" else "red"
    first = (record["error"] or "").splitlines()[0] if record["error"] else ""
    return f"[{colour}]{record['status']}[/] {name}: {first}"
