"""The sweep's command line: ``python -m benchmarks.sweep --help``."""

from __future__ import annotations

import argparse
import json
import os
import signal
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from benchmarks.links import link_preset
from benchmarks.netem import NetworkEmulationError, cleanup_stale, emulated_network
from benchmarks.sweep.plan import known_schemes, plan_runs
from benchmarks.sweep.runner import Sweep, Terminated, on_sigterm, write_json
from benchmarks.sweep.tables import (
    CONFIG_COLUMNS,
    RUN_COLUMNS,
    config_rows,
    markdown_tables,
    rich_table,
    run_rows,
    scaling_rows,
)
from benchmarks.tasks import TASKS
from lightning_quant.collectives import AUTO, Collective
from lightning_quant.hooks import scheme_settings
from lightning_quant.quantizers.base import CODINGS

__all__ = ["main", "parse_args"]


def _topology(text: str) -> tuple[int, int]:
    """Parse ``"NxL"``: ``N`` nodes of ``L`` ranks."""
    nodes, sep, per_node = text.lower().partition("x")
    if not (sep and nodes.isdigit() and per_node.isdigit() and int(nodes) and int(per_node)):
        raise ValueError(f"{text!r} is not NxL (nodes x ranks per node, e.g. 2x2)")
    return int(nodes), int(per_node)


def _hierarchy(text: str) -> bool | str:
    values: dict[str, bool | str] = {"auto": AUTO, "true": True, "false": False}
    if text.lower() not in values:
        raise ValueError(f"{text!r} is not auto, true or false")
    return values[text.lower()]


def _setting_value(text: str) -> Any:
    """A ``--settings`` value: JSON where it parses (numbers, true, false), else the text."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _settings(text: str) -> dict[str, Any]:
    """Parse ``"key=value,key=value"``."""
    settings = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if not (sep and key.strip() and value.strip()):
            raise argparse.ArgumentTypeError(f"{part!r} is not key=value")
        settings[key.strip()] = _setting_value(value.strip())
    return settings


def _comma(kind: Any) -> Any:
    def parse(text: str) -> list[Any]:
        try:
            values = [kind(part.strip()) for part in text.split(",") if part.strip()]
        except ValueError as error:
            raise argparse.ArgumentTypeError(
                f"expected a comma list of {kind.__name__.strip('_')}: {error}"
            ) from None
        if not values:
            raise argparse.ArgumentTypeError("expected at least one value")
        return list(dict.fromkeys(values))

    return parse


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.sweep",
        description="Train every scheme x bits x world size x seed with multi-process "
        "Lightning DDP and compare step time, bytes, loss and accuracy.",
    )
    parser.add_argument("--task", choices=sorted(TASKS), default="digits")
    parser.add_argument(
        "--schemes",
        type=_comma(str),
        default="fp32,qsgd,qsgd_inf,nuqsgd,dqsgd,global_qsgd,torch_fp16,torch_powersgd",
        help=f"comma list of schemes: {', '.join(known_schemes())} (one that cannot run "
        "on gloo is reported unavailable, with the reason)",
    )
    parser.add_argument("--bits", type=_comma(int), default="4", help="comma list; "
                        "float schemes and peers run once at their own width")  # fmt: skip
    parser.add_argument(
        "--coding", type=_comma(str), default="packed",
        help="comma list of packed, entropy: how the codes go on the wire (schemes without "
        "codes run packed once)",
    )  # fmt: skip
    parser.add_argument(
        "--world-size", type=_comma(int), help="comma list of ranks, one per node (default 2)"
    )
    parser.add_argument(
        "--topology",
        type=_comma(_topology),
        help="comma list of NxL: N nodes of L ranks each (in an emulated network a node is "
        "a namespace; its ranks talk over its loopback); instead of --world-size",
    )
    parser.add_argument(
        "--hierarchical",
        type=_comma(_hierarchy),
        default="auto",
        help="comma list of auto, true, false: reduce inside a node at full precision and "
        "quantize only between nodes (auto: with several nodes of several ranks)",
    )
    parser.add_argument(
        "--collective",
        type=_comma(str),
        default=AUTO,
        help=f"comma list of {', '.join([AUTO, *Collective])}: how payloads are reduced; "
        "each scheme runs once per one it supports (auto: the fewest bytes per rank)",
    )
    parser.add_argument(
        "--link",
        type=_comma(str),
        default="none",
        help="comma list of none or tbf rates (10mbit, 100mbit, 1gbit, 10gbit...); "
        "shaped links need root",
    )
    parser.add_argument(
        "--link-change",
        metavar="STEP:RATE",
        help="change every run's link to RATE (a tbf rate) once rank 0 has done STEP steps, "
        "e.g. 30:100mbit; recorded with the run",
    )
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps per run")
    parser.add_argument("--warmup", type=int, default=3, help="first steps not timed")
    parser.add_argument("--seeds", type=_comma(int), default="0", help="comma list of seeds")
    parser.add_argument("--batch-size", type=int, help="per rank (default: the task's)")
    parser.add_argument(
        "--val-every", type=int, default=0,
        help="validate every N steps (0: never); time to target needs it",
    )  # fmt: skip
    parser.add_argument(
        "--target", type=float,
        help="the value of the task's target metric (validation loss for lm, accuracy for "
        "the classifiers) to time; default: fp32 DDP's final value in the same sweep",
    )  # fmt: skip
    parser.add_argument(
        "--error-feedback",
        action="store_true",
        help="run the quantized schemes with error feedback (recorded with each run)",
    )
    parser.add_argument(
        "--race",
        action="store_true",
        help="after fp32 DDP's run, run every other configuration until it reaches the target "
        "(a validation, every --val-every steps) or 3x --steps, whichever comes first",
    )
    parser.add_argument(
        "--start-step", type=int, default=0, help="uncompressed warm-up steps (recorded)"
    )
    parser.add_argument(
        "--check-error",
        action="store_true",
        help="reduce every bucket in fp32 too, to record the exact error beside the estimate "
        "(one more all-reduce per bucket, not counted: step times and bytes are not the run's)",
    )
    parser.add_argument("--bucket-size", type=int, default=512, help="quantization bucket")
    parser.add_argument(
        "--settings", type=_settings, default={},
        help="comma list of key=value quantizer settings, given to every scheme that has "
        "them (e.g. target_error=200,min_bits=2 for dqsgd; levels=reference for nuqsgd)",
    )  # fmt: skip
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per run")
    parser.add_argument("--json", type=Path, help="write the records (a list) here")
    parser.add_argument("--markdown", type=Path, help="write the tables as Markdown here")
    parser.add_argument("--logs", type=Path, help="keep every rank's log under this folder")
    parser.add_argument("--api", metavar="URL", help="store every run in this lightning-quant API")
    parser.add_argument("--api-token", help="bearer token for API writes (LQ_API_TOKEN)")
    args = parser.parse_args(argv)
    unknown = [s for s in args.schemes if s not in known_schemes()]
    if unknown:
        parser.error(
            f"unknown scheme(s) {', '.join(unknown)}; available: {', '.join(known_schemes())}"
        )
    for key in args.settings:
        if not any(key in own for own in map(_scheme_settings, args.schemes)):
            parser.error(f"no scheme of {', '.join(args.schemes)} has the setting {key!r}")
    bad_collectives = [c for c in args.collective if c not in (AUTO, *Collective)]
    if bad_collectives:
        parser.error(
            f"unknown collective(s) {', '.join(bad_collectives)}; choose from "
            f"{', '.join([AUTO, *Collective])}"
        )
    for link in args.link:
        try:
            link_preset(link)
        except ValueError as error:
            parser.error(str(error))
    if args.link_change is not None:
        step, _, rate = args.link_change.partition(":")
        try:
            link_preset(rate)
            args.link_change = (int(step), rate)
        except ValueError as error:
            parser.error(f"--link-change {args.link_change}: {error} (give STEP:RATE)")
        if "none" in args.link or not 0 < args.link_change[0] < args.steps:
            parser.error("--link-change needs shaped --link rates and 0 < STEP < --steps")
    bad_codings = [c for c in args.coding if c not in CODINGS]
    if bad_codings:
        allowed = ", ".join(CODINGS)
        parser.error(f"unknown coding(s) {', '.join(bad_codings)}; choose from {allowed}")
    if args.topology is not None and args.world_size is not None:
        parser.error("give --world-size or --topology, not both")
    if args.topology is None:
        args.topology = [(world, 1) for world in args.world_size or [2]]
    args.world_size = list(dict.fromkeys(nodes * per_node for nodes, per_node in args.topology))
    if any(world < 2 for world in args.world_size):
        parser.error("every run needs 2 ranks or more (--world-size, or N x L of --topology)")
    if args.steps < 1 or args.warmup < 0:
        parser.error("--steps must be >= 1 and --warmup >= 0")
    if args.race and not args.val_every:
        parser.error("--race needs --val-every: the target is checked at validations")
    if args.val_every < 0 or args.start_step < 0:
        parser.error("--val-every and --start-step must be >= 0")
    if args.warmup >= args.steps:
        parser.error(f"--warmup ({args.warmup}) must be below --steps ({args.steps})")
    return args


def _scheme_settings(scheme: str) -> list[str]:
    return sorted(scheme_settings(scheme))


def _check_network(links: Sequence[str], console: Console) -> bool:
    """Build and remove a small shaped network once, to fail before any run if we cannot."""
    if all(link == "none" for link in links):
        return True
    try:
        cleanup_stale()
        with emulated_network(2, "100mbit", install_signal_handlers=False):
            pass
    except NetworkEmulationError as error:
        console.print(f"[red]error:[/] {error}", highlight=False)
        return False
    return True


@dataclass
class _Workdir:
    path: Path
    temporary: tempfile.TemporaryDirectory[str] | None

    def cleanup(self) -> None:
        if self.temporary is not None:
            self.temporary.cleanup()


def _workdir(logs: Path | None) -> _Workdir:
    if logs is not None:
        logs.mkdir(parents=True, exist_ok=True)
        return _Workdir(logs, None)
    temporary = tempfile.TemporaryDirectory(prefix="lq-sweep-")
    return _Workdir(Path(temporary.name), temporary)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console(stderr=True)
    if not _check_network(args.link, console):
        return 2
    specs = plan_runs(args)
    if args.api_token:  # the ranks report with it too, without it on their command line
        os.environ["LQ_API_TOKEN"] = args.api_token
    workdir = _workdir(args.logs)
    sweep = Sweep(args, console)
    previous = signal.signal(signal.SIGTERM, on_sigterm)
    code = 0
    try:
        sweep.run(specs, workdir.path)
    except NetworkEmulationError as error:
        console.print(f"[red]error:[/] {error}", highlight=False)
        code = 2
    except (KeyboardInterrupt, Terminated):
        console.print(
            "[red]interrupted:[/] ranks killed, emulated network removed", highlight=False
        )
        code = 130
    finally:
        signal.signal(signal.SIGTERM, previous)
        if sweep.store is not None and not sweep.store.close():
            console.print(
                f"[yellow]warning:[/] the run store at {args.api} did not take every record; "
                "they are spooled for `lightning-quant replay`",
                highlight=False,
            )
        workdir.cleanup()
    records = sweep.records
    if args.json is not None:
        write_json(args.json, records)
    if args.markdown is not None:
        args.markdown.write_text(markdown_tables(records))
    out = Console()
    if not out.is_terminal:
        out = Console(width=max(out.width, 200))
    rows, notes = run_rows(records)
    out.print(rich_table("Sweep", RUN_COLUMNS, rows))
    for index, note in enumerate(notes, 1):
        out.print(f"[{index}] {note}", highlight=False, markup=False)
    if len(args.seeds) > 1:
        out.print(rich_table("Mean over seeds", CONFIG_COLUMNS, config_rows(records)))
    if len(args.world_size) > 1:
        out.print(rich_table("Scaling: step time (x fp32) and sent bytes", *scaling_rows(records)))
    return code
