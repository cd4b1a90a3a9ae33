"""The sweep's tables: one row per run, per configuration over seeds, and across world sizes."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from typing import Any

from rich.table import Table

from benchmarks.sweep.plan import BASELINE

__all__ = [
    "CONFIG_COLUMNS",
    "RUN_COLUMNS",
    "config_rows",
    "markdown",
    "markdown_tables",
    "rich_table",
    "run_rows",
    "scaling_rows",
]

Record = dict[str, Any]


def _ms(value: float | None) -> str:
    return "" if value is None else f"{1e3 * value:.1f}"


def _fmt(value: float | None, spec: str) -> str:
    return "" if value is None else format(value, spec)


def _mb(value: float | None) -> str:
    return _fmt(None if value is None else value / 1e6, ".3f")


RUN_COLUMNS = (
    "scheme", "bits", "collective", "topology", "path", "link", "seed", "status", "step ms",
    "predicted ms", "meas/pred", "x fp32", "sent MB/step", "measured MB/step", "ratio",
    "val loss", "test acc", "t->target s", "steps->target",
)  # fmt: skip


def run_rows(records: list[Record]) -> tuple[list[list[str]], list[str]]:
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
                r["scheme"], _width(r), r["collective"] or "", r["topology"] or "",
                "hierarchical" if r["hierarchical"] else "flat", r["link"], str(r["seed"]),
                status, _ms(r["step_time_s"]), _ms(r["predicted_step_s"]), _fmt(ratio, ".2f"),
                _fmt(x_fp32, ".2f"), _mb(r["sent_bytes_per_step"]),
                _mb(r["measured_tx_bytes_per_step"]), _fmt(r["compression_ratio"], ".1f"),
                _fmt(r["final_val_loss"], ".4f"), _fmt(r["test_accuracy"], ".4f"),
                _fmt(r["time_to_target_s"], ".1f"), _fmt(r["steps_to_target"], "d"),
            ]
        )  # fmt: skip
    return rows, notes


CONFIG_COLUMNS = (
    "scheme", "bits", "collective", "topology", "path", "link", "runs", "test acc",
    "vs fp32 (points)", "val loss", "vs fp32 val loss", "step ms (median)", "x fp32",
    "t->target s", "x fp32 t->target", "reached",
)  # fmt: skip


def _groups(
    records: list[Record], key: Callable[[Record], tuple[Any, ...]]
) -> dict[tuple[Any, ...], list[Record]]:
    groups: dict[tuple[Any, ...], list[Record]] = {}
    for r in records:
        if r["status"] == "ok":
            groups.setdefault(key(r), []).append(r)
    return groups


def _median_step(runs: list[Record]) -> float:
    return float(statistics.median(r["step_time_s"] for r in runs))


def _mean(runs: list[Record], field: str) -> float | None:
    values = [r[field] for r in runs if r.get(field) is not None]
    return statistics.fmean(values) if values else None


def config_rows(records: list[Record]) -> list[list[str]]:
    """Return one row per configuration, averaged over seeds (ok runs only): test accuracy,
    final validation loss and time to target (over the seeds that reached it), each beside
    fp32 DDP's at the same link and topology."""
    key = lambda r: (  # noqa: E731
        r["link"],
        r["topology"],
        r["scheme"],
        _width(r),
        r["collective"],
        r["hierarchical"],
    )
    groups = _groups(records, key)
    baselines = {(k[0], k[1]): runs for k, runs in groups.items() if k[2] == BASELINE and not k[5]}
    rows = []
    for (link, topology, scheme, bits, collective, hierarchical), runs in groups.items():
        base = baselines.get((link, topology), [])
        acc, val, time = (_mean(runs, f) for f in ("test_accuracy", "final_val_loss",
                                                   "time_to_target_s"))  # fmt: skip
        base_acc, base_val, base_time = (
            _mean(base, f) for f in ("test_accuracy", "final_val_loss", "time_to_target_s")
        )
        step = _median_step(runs)
        reached = sum(r["time_to_target_s"] is not None for r in runs)
        rows.append(
            [scheme, str(bits), collective, topology, "hierarchical" if hierarchical else "flat",
             link, str(len(runs)), _fmt(acc, ".4f"),
             _fmt(100 * (acc - base_acc) if acc is not None and base_acc else None, "+.2f"),
             _fmt(val, ".4f"),
             _fmt(val / base_val - 1 if val is not None and base_val else None, "+.2%"),
             _ms(step), _fmt(step / _median_step(base) if base else None, ".2f"),
             _fmt(time, ".1f"), _fmt(time / base_time if time and base_time else None, ".2f"),
             f"{reached}/{len(runs)}"]
        )  # fmt: skip
    return rows


def scaling_rows(records: list[Record]) -> tuple[list[str], list[list[str]]]:
    """Return columns and rows of step time (x fp32) and sent MB per rank against world size.

    One row per (link, scheme, bits, collective); one column per world size in the sweep.
    """
    worlds = sorted({r["world_size"] for r in records})
    groups = _groups(
        records,
        lambda r: (r["link"], r["scheme"], _width(r), r["collective"], r["hierarchical"]),
    )
    base = {
        (k[0], world): _median_step([r for r in runs if r["world_size"] == world])
        for k, runs in groups.items()
        if k[1] == BASELINE and not k[4]
        for world in {r["world_size"] for r in runs}
    }
    columns = ["link", "scheme", "bits", "collective"] + [f"{n} ranks" for n in worlds]
    rows = []
    for (link, scheme, bits, collective, hierarchical), runs in groups.items():
        collective = f"{collective} hierarchical" if hierarchical else collective
        cells = []
        for world in worlds:
            mine = [r for r in runs if r["world_size"] == world]
            if not mine:
                cells.append("")
                continue
            step = _median_step(mine)
            sent = statistics.fmean(r["sent_bytes_per_step"] for r in mine)
            ratio = step / base[(link, world)] if (link, world) in base else None
            x = f" ({ratio:.2f})" if ratio is not None else ""
            cells.append(f"{1e3 * step:.0f} ms{x}, {sent / 1e6:.2f} MB")
        rows.append([link, scheme, str(bits), collective, *cells])
    return columns, rows


def rich_table(title: str, columns: Sequence[str], rows: list[list[str]]) -> Table:
    table = Table(title=title)
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*row)
    return table


def markdown(columns: Sequence[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell.replace("|", "/") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def markdown_tables(records: list[Record]) -> str:
    """Return the per-run table; with several seeds the per-configuration one; with several
    world sizes the scaling one."""
    rows, notes = run_rows(records)
    text = markdown(RUN_COLUMNS, rows)
    if notes:
        text += "\n\n" + "\n".join(f"[{i}] {note}" for i, note in enumerate(notes, 1))
    if len({r["seed"] for r in records}) > 1:
        text += "\n\nMean over seeds:\n\n" + markdown(CONFIG_COLUMNS, config_rows(records))
    if len({r["world_size"] for r in records}) > 1:
        columns, scaling = scaling_rows(records)
        text += "\n\nStep time (x fp32 DDP) and sent bytes per rank and step:\n\n"
        text += markdown(columns, scaling)
    return text + "\n"


def _width(record: Record) -> str:
    """The run's bits, and its coding where not packed: ``"4"``, ``"4 entropy"``."""
    coding = record.get("coding") or "packed"
    return str(record["bits"]) + ("" if coding == "packed" else f" {coding}")
