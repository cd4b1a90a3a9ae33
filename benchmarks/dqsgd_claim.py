"""DQ-SGD's claim, checked: to the validation loss fixed-width QSGD ends at, fewer bytes.

The DQ-SGD paper (Yan et al., arXiv 2107.14575) claims that choosing the width per step
reaches a given accuracy with fewer bits than a fixed width. This runs one sweep of
fixed-width ``qsgd`` beside ``dqsgd`` (same task, ranks, steps and seeds), then, seed by
seed: the final validation loss ``qsgd`` reaches, the bytes ``qsgd`` sent in the whole
run, and the bytes ``dqsgd`` had sent at its first validation at or below that loss. The
goal: ``dqsgd``'s bytes at most 0.8x ``qsgd``'s, averaged over the seeds.

Bytes are rank 0's sent bytes (as the hook counts them from its collectives'
algorithms), validation every ``--val-every`` steps, so the ratio is read at that grain.

Run::

    python -m benchmarks.dqsgd_claim --json benchmarks/results/dqsgd_claim.json \\
        --markdown benchmarks/results/dqsgd_claim.md      # lm, 4 ranks, 3 seeds
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

__all__ = ["GOAL", "compare", "main", "table"]

GOAL = 0.8  # dqsgd's bytes to qsgd's final validation loss, over qsgd's


def compare(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Return, per seed, qsgd's final validation loss and bytes, and dqsgd's bytes to it."""
    runs = {(r["scheme"], r["seed"]): r for r in records if r["status"] == "ok"}
    rows = []
    for seed in sorted({seed for scheme, seed in runs if scheme == "qsgd"}):
        qsgd, dqsgd = runs[("qsgd", seed)], runs.get(("dqsgd", seed))
        if dqsgd is None:
            continue
        loss = qsgd["final_val_loss"]
        reached = first_reaching(dqsgd["validations"], "val_loss", loss, higher_is_better=False)
        rows.append(
            {
                "seed": seed,
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


def table(rows: Sequence[dict[str, Any]], settings: str) -> str:
    """Format the comparison as Markdown, with the verdict against the goal."""
    lines = [
        f"dqsgd settings: {settings or 'defaults'}",
        "",
        "| seed | qsgd final val loss | qsgd MB (mean bits) | dqsgd final val loss | "
        "dqsgd MB to qsgd's loss (step) | dqsgd mean bits | ratio |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        reached = (
            f"{r['dqsgd_bytes'] / 1e6:.1f} ({r['dqsgd_step']})"
            if r["dqsgd_bytes"] is not None
            else f"not reached ({r['dqsgd_total_bytes'] / 1e6:.1f} in all)"
        )
        ratio = f"{r['ratio']:.2f}x" if r["ratio"] is not None else "-"
        lines.append(
            f"| {r['seed']} | {r['qsgd_final_val_loss']:.4f} | {r['qsgd_bytes'] / 1e6:.1f} "
            f"({r['qsgd_mean_bits']:.2f}) | {r['dqsgd_final_val_loss']:.4f} | {reached} | "
            f"{r['dqsgd_mean_bits']:.2f} | {ratio} |"
        )
    ratios = [r["ratio"] for r in rows if r["ratio"] is not None]
    lines.append("")
    if rows and len(ratios) == len(rows):
        mean = statistics.fmean(ratios)
        verdict = "met" if mean <= GOAL else "missed"
        lines.append(f"mean ratio {mean:.2f}x over {len(rows)} seeds: goal <= {GOAL}x {verdict}")
    else:
        missing = len(rows) - len(ratios)
        lines.append(f"dqsgd did not reach qsgd's final loss in {missing} of {len(rows)} seeds")
    return "\n".join(lines)


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
        default="target_error=3000,min_bits=2,max_bits=8",
        help="dqsgd's settings (the sweep's --settings)",
    )
    parser.add_argument("--api", help="also store the runs in this lightning-quant API")
    parser.add_argument("--json", type=Path, help="write the sweep's records here")
    parser.add_argument("--markdown", type=Path, help="write the comparison here")
    parser.add_argument("--from-json", type=Path, help="compare these records; run nothing")
    args = parser.parse_args(argv)

    if args.from_json:
        records = json.loads(args.from_json.read_text())
    else:
        with tempfile.TemporaryDirectory() as tmp:
            out = args.json or Path(tmp) / "records.json"
            sweep = [
                sys.executable, "-m", "benchmarks.sweep", "--task", args.task,
                "--schemes", "qsgd,dqsgd", "--bits", args.bits,
                "--world-size", args.world_size, "--seeds", args.seeds,
                "--steps", args.steps, "--val-every", args.val_every,
                "--settings", args.settings, "--json", str(out),
                *(["--api", args.api] if args.api else []),
            ]  # fmt: skip
            subprocess.run(sweep, check=True)
            records = json.loads(out.read_text())
    rows = compare(records)
    text = table(rows, args.settings)
    print(text)
    if args.markdown:
        args.markdown.write_text(text + "\n")
    return rows


if __name__ == "__main__":
    main()
