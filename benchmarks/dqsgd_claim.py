"""DQ-SGD's claim, checked: to the validation loss fixed-width QSGD ends at, fewer bytes.

The DQ-SGD paper (Yan et al., arXiv 2107.14575) claims that choosing the width per step
reaches a given accuracy with fewer bits than a fixed width. This runs a sweep of
fixed-width ``qsgd``, then one of ``dqsgd`` for each ``--settings`` variant (same task,
ranks, steps and seeds), and reads, seed by seed: the final validation loss ``qsgd``
reaches, the bytes ``qsgd`` sent in the whole run, and the bytes ``dqsgd`` had sent at
its first validation at or below that loss. The goal: ``dqsgd``'s bytes at most 0.8x
``qsgd``'s, averaged over the seeds.

Bytes are rank 0's sent bytes (as the hook counts them from its collectives'
algorithms), validation every ``--val-every`` steps, so the ratio is read at that grain.

Run::

    python -m benchmarks.dqsgd_claim --json benchmarks/results/dqsgd_claim.json \\
        --markdown benchmarks/results/dqsgd_claim.md      # lm, 4 ranks, 3 seeds
    python -m benchmarks.dqsgd_claim --settings target_error=3000 target_error=3000,mu=10
    python -m benchmarks.dqsgd_claim --from-json benchmarks/results/dqsgd_claim.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.sweep import first_reaching

__all__ = ["DEFAULT_SETTINGS", "GOAL", "compare", "main", "table"]

GOAL = 0.8  # dqsgd's bytes to qsgd's final validation loss, over qsgd's
DEFAULT_SETTINGS = "target_error=3000,min_bits=2,max_bits=8"


def compare(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Return, per dqsgd run, qsgd's final validation loss and bytes (same seed) and
    dqsgd's bytes to that loss; ``settings`` names the dqsgd variant."""
    runs = [r for r in records if r["status"] == "ok"]
    qsgd_runs = {r["seed"]: r for r in runs if r["scheme"] == "qsgd"}
    rows = []
    for dqsgd in runs:
        qsgd = qsgd_runs.get(dqsgd["seed"])
        if dqsgd["scheme"] != "dqsgd" or qsgd is None:
            continue
        loss = qsgd["final_val_loss"]
        reached = first_reaching(dqsgd["validations"], "val_loss", loss, higher_is_better=False)
        rows.append(
            {
                "settings": dqsgd.get("dqsgd_settings", DEFAULT_SETTINGS),
                "seed": dqsgd["seed"],
                "qsgd_final_val_loss": loss,
                "qsgd_bytes": qsgd["total_sent_bytes"],
                "qsgd_mean_bits": qsgd["mean_bits"],
                "dqsgd_final_val_loss": dqsgd["final_val_loss"],
                "dqsgd_mean_bits": dqsgd["mean_bits"],
                "dqsgd_total_bytes": dqsgd["total_sent_bytes"],
                "dqsgd_step": reached["step"] if reached else None,
                "dqsgd_bytes": reached["sent_bytes"] if reached else None,
                "ratio": reached["sent_bytes"] / qsgd["total_sent_bytes"] if reached else None,
            }
        )
    return rows


def table(rows: Sequence[dict[str, Any]]) -> str:
    """Format the comparison as Markdown, with each dqsgd variant's verdict on the goal."""
    lines = [
        "| dqsgd settings | seed | qsgd final val loss | qsgd MB (mean bits) | "
        "dqsgd final val loss | dqsgd MB to qsgd's loss (step) | dqsgd mean bits | ratio |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        reached = (
            f"{r['dqsgd_bytes'] / 1e6:.1f} ({r['dqsgd_step']})"
            if r["dqsgd_bytes"] is not None
            else f"not reached ({r['dqsgd_total_bytes'] / 1e6:.1f} in all)"
        )
        ratio = f"{r['ratio']:.2f}x" if r["ratio"] is not None else "-"
        lines.append(
            f"| {r['settings']} | {r['seed']} | {r['qsgd_final_val_loss']:.4f} | "
            f"{r['qsgd_bytes'] / 1e6:.1f} ({r['qsgd_mean_bits']:.2f}) | "
            f"{r['dqsgd_final_val_loss']:.4f} | {reached} | {r['dqsgd_mean_bits']:.2f} | {ratio} |"
        )
    lines.append("")
    for settings in dict.fromkeys(r["settings"] for r in rows):
        lines.append(f"{settings}: {_verdict([r for r in rows if r['settings'] == settings])}")
    return "\n".join(lines)


def _verdict(rows: Sequence[dict[str, Any]]) -> str:
    ratios = [r["ratio"] for r in rows if r["ratio"] is not None]
    if len(ratios) < len(rows):
        return f"did not reach qsgd's final loss in {len(rows) - len(ratios)} of {len(rows)} seeds"
    mean = statistics.fmean(ratios)
    return f"mean ratio {mean:.2f}x over {len(rows)} seeds: goal <= {GOAL}x " + (
        "met" if mean <= GOAL else "missed"
    )


def _sweep(args: argparse.Namespace, scheme: str, settings: str, out: Path) -> list[dict]:
    """Run one sweep of ``scheme`` over the seeds and return its records."""
    command = [
        sys.executable, "-m", "benchmarks.sweep", "--task", args.task, "--schemes", scheme,
        "--bits", args.bits, "--world-size", args.world_size, "--seeds", args.seeds,
        "--steps", args.steps, "--val-every", args.val_every, "--json", str(out),
        *(["--settings", settings] if settings else []),
        *(["--api", args.api] if args.api else []),
    ]  # fmt: skip
    subprocess.run(command, check=True)
    return json.loads(out.read_text())


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="lm")
    parser.add_argument("--world-size", default="4")
    parser.add_argument("--bits", default="4", help="qsgd's fixed width")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--steps", default="240")
    parser.add_argument("--val-every", default="20")
    parser.add_argument(
        "--settings",
        nargs="+",
        default=[DEFAULT_SETTINGS],
        help="dqsgd's settings (the sweep's --settings), one variant each; qsgd runs once",
    )
    parser.add_argument("--api", help="also store the runs in this lightning-quant API")
    parser.add_argument("--json", type=Path, help="write the sweeps' records here")
    parser.add_argument("--markdown", type=Path, help="write the comparison here")
    parser.add_argument("--from-json", type=Path, help="compare these records; run nothing")
    args = parser.parse_args(argv)

    if args.from_json:
        records = json.loads(args.from_json.read_text())
    else:
        with tempfile.TemporaryDirectory() as tmp:
            records = _sweep(args, "qsgd", "", Path(tmp) / "qsgd.json")
            for i, settings in enumerate(args.settings):
                variant = _sweep(args, "dqsgd", settings, Path(tmp) / f"dqsgd{i}.json")
                records += [{**r, "dqsgd_settings": settings} for r in variant]
                if args.json:  # after every sweep, so a long run leaves what it finished
                    args.json.write_text(json.dumps(records, indent=1))
    rows = compare(records)
    text = table(rows)
    print(text)
    if args.markdown:
        args.markdown.write_text(text + "\n")
    return rows


if __name__ == "__main__":
    main()
