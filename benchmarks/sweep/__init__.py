"""Train with real multi-process Lightning DDP for every scheme x bits x world size x seed.

The package's modules: :mod:`~benchmarks.sweep.plan` (which runs), ``launch`` (their
processes), ``records`` (a run's figures), ``tables``, ``store`` (the run store),
``runner`` (the loop) and ``cli``.

Each run starts one ``python -m benchmarks.train_rank`` process per rank, each its own
Lightning node (``num_nodes``), on loopback (``--link none``) or each in its own network
namespace behind a ``tbf``-shaped link (``--link 1gbit``/``100mbit``, root only; see
:mod:`benchmarks.netem`). Every run becomes one record: measured step time (median over
the steps after the warm-up, of the slower rank), bytes on the wire, final training loss,
test accuracy, and the step time :func:`benchmarks.perf_model.predict_step_time`
predicts from the run's own compute time, codec time and sent bytes. ``--collective``
runs each scheme once per collective it supports (``auto`` by default). In an emulated
network every rank also reads its interface's byte counter around each step, so the
bytes that really crossed stand beside those the hook counted. A rich progress bar
runs while the sweep does, a table follows; ``--json`` writes the records and
``--api URL`` stores every run, its per-step metrics and its summary in the run store.

Example::

    python -m benchmarks.sweep --task large --schemes fp32,qsgd,nuqsgd,torch_fp16 \\
        --bits 4 --world-size 2 --link 100mbit --steps 30 --json large-100mbit.json

Requested schemes are never dropped: a scheme that cannot run on gloo/CPU
(``Scheme.unavailable``) and settings a scheme refuses (a width it has not) become
records with status
``"unavailable"`` and the reason; a run that crashes or times out becomes a record with
status ``"failed"`` and the tail of its log, and the sweep goes on.
"""

from benchmarks.sweep.cli import main, parse_args
from benchmarks.sweep.launch import RunFailed, free_port, launch_ranks
from benchmarks.sweep.plan import RunSpec, known_schemes, plan_runs
from benchmarks.sweep.records import (
    RECORD_FIELDS,
    compare_with_baseline,
    first_reaching,
    summarize,
)
from benchmarks.sweep.tables import markdown_tables

__all__ = [
    "RECORD_FIELDS",
    "RunFailed",
    "RunSpec",
    "free_port",
    "known_schemes",
    "launch_ranks",
    "main",
    "markdown_tables",
    "parse_args",
    "plan_runs",
    "summarize",
    "first_reaching",
    "compare_with_baseline",
]
