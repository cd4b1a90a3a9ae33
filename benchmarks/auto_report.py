"""Issue 24's goals, read from sweep records: ``auto`` beside fixed configurations, and the
estimated compression error beside the exact one.

The records come from sweeps run one at a time on a quiet machine (``benchmarks/README.md``
gives the commands); this only reads them and writes the tables and the goal checks:

* ``--error``: runs with ``--check-error``; per run, the mean over steps of the estimated
  ``comm/rel_error`` and of the exact one (an extra fp32 all-reduce), and their ratio.
  Goal: within 10%. Also the ratio in the bounded form ``r / (1 + r)``
  (``||m^ - m||^2 / ||m^||^2``), which does not divide by an estimate of ``||m||^2``.
* ``--links``: per link and world size, the step time of fp32 DDP, of the best fixed
  configuration and of ``auto``. Goals: ``auto`` within 5% of the best fixed one, and never
  more than 3% slower than fp32.
* ``--change``: runs whose link dropped mid-run (``--link-change``): when ``auto`` decided
  again, and its step time from 20 steps after the change against the best fixed
  configuration's. Goals: within 20 steps, and within 10%.
* ``--race``: time to fp32 DDP's final validation loss per configuration and seed, and per
  seed ``auto``'s against the best fixed configuration's that reached it. Goal: no later.

Every comparison is within one seed (``--seeds`` runs each configuration once per seed).

Run::

    python -m benchmarks.auto_report --error results/auto-error.json \\
        --links results/auto-large-*.json --change results/auto-link-drop.json \\
        --race results/auto-lm-race.json --out results/auto-goals.md
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from benchmarks.sweep.plan import BASELINE

__all__ = ["change_rows", "error_rows", "link_rows", "main", "race_goal_rows", "race_rows"]

AUTO = "auto"
Record = dict[str, Any]


def _ok(records: Iterable[Record]) -> list[Record]:
    return [r for r in records if r.get("status") == "ok"]


def _name(record: Record) -> str:
    coded = " entropy" if record.get("coding") == "entropy" else ""
    bits = "" if record["scheme"] in (BASELINE, AUTO) else f"-{record['bits']}"
    return f"{record['scheme']}{bits}{coded}"


def error_rows(records: Iterable[Record]) -> list[dict[str, Any]]:
    """Estimated against exact relative error, one row per run."""
    rows = []
    for r in _ok(records):
        estimate, exact = r.get("rel_errors") or [], r.get("exact_rel_errors") or []
        pairs = [(e, x) for e, x in zip(estimate, exact, strict=False) if x > 0]
        if not pairs:
            continue
        mean_estimate = statistics.fmean(e for e, _ in pairs)
        mean_exact = statistics.fmean(x for _, x in pairs)
        bounded = statistics.fmean(_bounded(e) for e, _ in pairs) / statistics.fmean(
            _bounded(x) for _, x in pairs
        )
        rows.append({
            "run": _name(r), "collective": r["collective"], "world_size": r["world_size"],
            "steps": len(pairs), "estimate": mean_estimate, "exact": mean_exact,
            "ratio": mean_estimate / mean_exact, "bounded_ratio": bounded,
            "met": abs(mean_estimate / mean_exact - 1) <= 0.10,
        })  # fmt: skip
    return rows


def _bounded(r: float) -> float:
    return 1.0 if r == float("inf") else r / (1 + r)


def link_rows(records: Iterable[Record]) -> list[dict[str, Any]]:
    """Per sweep (its file), link, world size and seed: fp32, the best fixed configuration
    and ``auto``."""
    groups: dict[tuple[str, str, int, int], list[Record]] = {}
    for r in _ok(records):
        key = (r.get("sweep", ""), r["link"], r["world_size"], r.get("seed", 0))
        groups.setdefault(key, []).append(r)
    rows = []
    for (sweep, link, world, seed), runs in sorted(groups.items()):
        fixed = [r for r in runs if r["scheme"] != AUTO]
        auto = [r for r in runs if r["scheme"] == AUTO]
        fp32 = [r for r in runs if r["scheme"] == BASELINE]
        if not fixed or not auto:
            continue
        best = min(fixed, key=lambda r: r["step_time_s"])
        a = auto[0]["step_time_s"]
        row = {
            "sweep": sweep, "link": link, "world_size": world, "seed": seed,
            "best_fixed": _name(best),
            "best_fixed_s": best["step_time_s"], "auto_s": a,
            "auto_vs_best": a / best["step_time_s"],
            "auto_choices": sorted({label for _, _, label in auto[0].get("decisions", [])}),
        }  # fmt: skip
        if fp32:
            row["fp32_s"] = fp32[0]["step_time_s"]
            row["auto_vs_fp32"] = a / fp32[0]["step_time_s"]
        row["met"] = row["auto_vs_best"] <= 1.05 and row.get("auto_vs_fp32", 0) <= 1.03
        rows.append(row)
    return rows


def change_rows(records: Iterable[Record]) -> list[dict[str, Any]]:
    """Runs whose link changed: step times before and after, and ``auto``'s redecision
    against the best fixed configuration of its seed."""
    runs = [r for r in _ok(records) if r.get("link_change")]
    rows = []
    for r in sorted(runs, key=lambda r: r.get("seed", 0)):
        fixed = [
            f for f in runs
            if f["scheme"] != AUTO and f.get("seed") == r.get("seed")
            and f.get("step_time_after_change_s")
        ]  # fmt: skip
        best = min(fixed, key=lambda f: f["step_time_after_change_s"]) if fixed else None
        at = r["link_change"]["applied_at_step"]
        later = sorted({step for step, _, _ in r.get("decisions", []) if step >= at})
        after = r.get("step_time_after_change_s")
        row = {
            "run": _name(r), "seed": r.get("seed", 0), "changed_at_step": at,
            "to": r["link_change"]["to"],
            "before_s": r.get("step_time_before_change_s"), "after_s": after,
            "redecided_at_step": later[0] if later else None,
            "choices_after": sorted({lb for s, _, lb in r.get("decisions", []) if s >= at}),
        }  # fmt: skip
        if r["scheme"] == AUTO and best is not None and after:
            row["vs_best_fixed_after"] = after / best["step_time_after_change_s"]
            row["best_fixed"] = _name(best)
            row["met"] = bool(later and later[0] - at <= 20 and row["vs_best_fixed_after"] <= 1.10)
        rows.append(row)
    return rows


def race_rows(records: Iterable[Record]) -> list[dict[str, Any]]:
    """Time to fp32's final validation loss, per configuration and seed."""
    return [
        {
            "run": _name(r),
            "seed": r["seed"],
            "step_time_s": r["step_time_s"],
            "final_val_loss": r.get("final_val_loss"),
            "time_to_target_s": r.get("time_to_target_s"),
            "steps_to_target": r.get("steps_to_target"),
        }  # fmt: skip
        for r in _ok(records)
    ]


def race_goal_rows(records: Iterable[Record]) -> list[dict[str, Any]]:
    """Per seed: ``auto``'s time to fp32's loss against the best fixed configuration's."""
    runs = [r for r in _ok(records) if r["scheme"] != BASELINE]
    rows = []
    for seed in sorted({r["seed"] for r in runs}):
        mine = [r for r in runs if r["seed"] == seed]
        auto = [r for r in mine if r["scheme"] == AUTO]
        reached = [r for r in mine if r["scheme"] != AUTO and r.get("time_to_target_s")]
        if not auto:
            continue
        a = auto[0].get("time_to_target_s")
        best = min(reached, key=lambda r: r["time_to_target_s"]) if reached else None
        b = best["time_to_target_s"] if best else None
        rows.append({
            "seed": seed, "auto_s": a, "best_fixed": _name(best) if best else None,
            "best_fixed_s": b, "auto_vs_best": a / b if a and b else None,
            "met": a is not None and (b is None or a <= b),
        })  # fmt: skip
    return rows


def _table(rows: Sequence[dict[str, Any]]) -> str:
    if not rows:
        return "(no records)\n"
    columns = list(dict.fromkeys(k for row in rows for k in row))

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.4g}"
        if isinstance(value, list):
            return ", ".join(map(str, value))
        return "" if value is None else str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _read(paths: Sequence[Path] | None) -> list[Record]:
    """The records of every file, each marked with the sweep (file) it came from."""
    return [{**r, "sweep": path.stem} for path in paths or [] for r in json.loads(path.read_text())]


def main(argv: Sequence[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for name in ("error", "links", "change", "race"):
        parser.add_argument(f"--{name}", type=Path, nargs="+", help="sweep JSON records")
    parser.add_argument("--out", type=Path, help="write the report (Markdown) here")
    args = parser.parse_args(argv)
    sections = [
        ("Estimated against exact relative error", error_rows(_read(args.error))),
        ("auto beside fixed configurations, by link", link_rows(_read(args.links))),
        ("A link that changes mid-run", change_rows(_read(args.change))),
        ("The race to fp32's validation loss", race_rows(_read(args.race))),
        ("The race: auto against the best fixed configuration", race_goal_rows(_read(args.race))),
    ]
    report = "".join(f"## {title}\n\n{_table(rows)}\n" for title, rows in sections if rows)
    if args.out is not None:
        args.out.write_text(report)
    print(report)
    return report


if __name__ == "__main__":
    main()
