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
    "scheme", "bits", "collective", "ranks", "link", "seed", "status", "step ms",
    "predicted ms", "meas/pred", "x fp32", "sent MB/step", "measured MB/step", "ratio",
    "final loss", "test acc", "t->fp32 loss s",
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
                r["scheme"], str(r["bits"]), r["collective"] or "", str(r["world_size"]),
                r["link"], str(r["seed"]), status, _ms(r["step_time_s"]),
                _ms(r["predicted_step_s"]), _fmt(ratio, ".2f"), _fmt(x_fp32, ".2f"),
                _mb(r["sent_bytes_per_step"]), _mb(r["measured_tx_bytes_per_step"]),
                _fmt(r["compression_ratio"], ".1f"), _fmt(r["final_loss"], ".3f"),
                _fmt(r["test_accuracy"], ".4f"), _fmt(r["time_to_fp32_loss_s"], ".1f"),
            ]
        )  # fmt: skip
    return rows, notes


CONFIG_COLUMNS = (
    "scheme", "bits", "collective", "ranks", "link", "runs", "test acc (mean)",
    "vs fp32 (points)", "step ms (median)", "x fp32",
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


def config_rows(records: list[Record]) -> list[list[str]]:
    """Return one row per configuration, averaged over seeds (ok runs only)."""
    groups = _groups(
        records, lambda r: (r["link"], r["world_size"], r["scheme"], r["bits"], r["collective"])
    )
    baselines = {(k[0], k[1]): runs for k, runs in groups.items() if k[2] == BASELINE}
    rows = []
    for (link, world, scheme, bits, collective), runs in groups.items():
        acc = statistics.fmean(r["test_accuracy"] for r in runs)
        step = _median_step(runs)
        base = baselines.get((link, world))
        delta = ratio = None
        if base:
            delta = 100 * (acc - statistics.fmean(r["test_accuracy"] for r in base))
            ratio = step / _median_step(base)
        rows.append(
            [scheme, str(bits), collective, str(world), link, str(len(runs)), f"{acc:.4f}",
             _fmt(delta, "+.2f"), _ms(step), _fmt(ratio, ".2f")]
        )  # fmt: skip
    return rows


def scaling_rows(records: list[Record]) -> tuple[list[str], list[list[str]]]:
    """Return columns and rows of step time (x fp32) and sent MB per rank against world size.

    One row per (link, scheme, bits, collective); one column per world size in the sweep.
    """
    worlds = sorted({r["world_size"] for r in records})
    groups = _groups(records, lambda r: (r["link"], r["scheme"], r["bits"], r["collective"]))
    base = {
        (k[0], world): _median_step([r for r in runs if r["world_size"] == world])
        for k, runs in groups.items()
        if k[1] == BASELINE
        for world in {r["world_size"] for r in runs}
    }
    columns = ["link", "scheme", "bits", "collective"] + [f"{n} ranks" for n in worlds]
    rows = []
    for (link, scheme, bits, collective), runs in groups.items():
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
