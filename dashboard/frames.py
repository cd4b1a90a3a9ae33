"""Shape the API's tables into the long-format frames the charts take.

Pure pandas, no Streamlit and no HTTP: every function takes DataFrames as
``dashboard.data`` returns them and gives a new one, so each can be tested on its own.
"""

import math

import pandas as pd

__all__ = [
    "ALIASES",
    "CHARTED",
    "PHASES",
    "chart_name",
    "cumulative",
    "label_runs",
    "metric_series",
    "node_traffic",
    "pareto_front",
    "phase_means",
    "predictions",
    "run_figures",
    "run_label",
    "scaling",
    "scheme_label",
    "step_phases",
    "tradeoff",
]

# The parts of an optimizer step, in stacking order; compute is what the others leave.
PHASES = ("compute", "encode", "communicate", "decode")
SERIES_COLUMNS = ["run_id", "run", "scheme", "bits", "step", "time_s", "name", "value"]


def scheme_label(scheme: str, bits: object = None) -> str:
    """Name a scheme at a width: ``qsgd 4-bit``."""
    if bits is None or (isinstance(bits, float) and math.isnan(bits)) or bits is pd.NA:
        return scheme
    return f"{scheme} {int(bits)}-bit"  # type: ignore[call-overload]


def run_label(run_id: int, scheme: str, bits: object = None, coding: object = None) -> str:
    """Name a run in legends and axes: ``#3 qsgd 4-bit``, ``#4 qsgd 4-bit entropy``."""
    coded = " entropy" if coding == "entropy" else ""
    return f"#{run_id} {scheme_label(scheme, bits)}{coded}"


def label_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """Return ``runs`` with a ``run`` column holding each run's label."""
    runs = runs.copy()
    codings = runs["coding"] if "coding" in runs else [None] * len(runs)  # older frames
    runs["run"] = [
        run_label(i, s, b, c)
        for i, s, b, c in zip(runs["id"], runs["scheme"], runs["bits"], codings, strict=True)
    ]
    return runs


# Names the charts read, for what loggers commonly call them: the strategy's step figures
# come as comm/<name>; a LightningModule logs its loss and accuracy under names of its own.
ALIASES = {
    "train_loss": "loss",
    "val_acc": "accuracy",
    "val_accuracy": "accuracy",
    "test_acc": "accuracy",
    "test_accuracy": "accuracy",
}
CHARTED = ("loss", "accuracy", "sent_bytes", "compression_ratio", "bits", "step_s",
           "encode_s", "communicate_s", "decode_s")  # fmt: skip


def chart_name(name: str) -> str:
    """The name a chart reads a stored metric under: ``comm/sent_bytes`` is ``sent_bytes``,
    ``train_loss`` is ``loss``."""
    name = name.removeprefix("comm/")
    return ALIASES.get(name, name)


def metric_series(metrics: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """Join long metrics (``run_id, step, wall_time, name, value``) with their runs'
    label, scheme and bits, and add ``time_s``: seconds since the run's first point.
    Names become :func:`chart_name`'s (the first of a run's aliases at a step wins).

    Returns the columns ``run_id, run, scheme, bits, step, time_s, name, value``.
    """
    if metrics.empty:
        return pd.DataFrame(columns=SERIES_COLUMNS)
    metrics = metrics.assign(name=metrics["name"].map(chart_name))
    metrics = metrics.drop_duplicates(subset=["run_id", "name", "step"])
    labelled = label_runs(runs)[["id", "run", "scheme", "bits"]].rename(columns={"id": "run_id"})
    frame = metrics.merge(labelled, on="run_id", how="inner")
    start = frame.groupby("run_id")["wall_time"].transform("min")
    frame["time_s"] = frame["wall_time"] - start
    return frame[SERIES_COLUMNS].sort_values(["run_id", "name", "step"], ignore_index=True)


def varying(series: pd.DataFrame, name: str = "bits") -> pd.DataFrame:
    """Return the points of metric ``name`` of the runs where it took more than one value
    (a width chosen per step, as DQ-SGD's; every scheme logs its width)."""
    frame = series[series["name"] == name]
    if frame.empty:
        return frame
    moving = frame.groupby("run_id")["value"].transform("nunique") > 1
    return frame[moving].reset_index(drop=True)


def cumulative(series: pd.DataFrame, name: str = "sent_bytes") -> pd.DataFrame:
    """Return the running total of metric ``name`` per run, as metric ``cumulative_<name>``.

    The API may have thinned the points evenly; each kept point then stands for the steps
    since the previous one, so the total stays right when the per-step value is steady
    (and is exact when nothing was thinned).
    """
    frame = series[series["name"] == name].sort_values(["run_id", "step"]).copy()
    if frame.empty:
        return frame
    gap = frame.groupby("run_id")["step"].diff().fillna(1).clip(lower=1)
    frame["value"] = (frame["value"] * gap).groupby(frame["run_id"]).cumsum()
    frame["name"] = f"cumulative_{name}"
    return frame.reset_index(drop=True)


def step_phases(series: pd.DataFrame) -> pd.DataFrame:
    """Split each step's time into ``PHASES`` (seconds), long format: one row per
    (run, step, phase); compute is ``step_s`` less encode, communicate and decode,
    floored at 0."""
    names = ["step_s", "encode_s", "communicate_s", "decode_s"]
    keys = ["run_id", "run", "scheme", "step"]
    wide = series[series["name"].isin(names)].pivot_table(
        index=keys, columns="name", values="value", aggfunc="first"
    )
    if wide.empty or "step_s" not in wide:
        return pd.DataFrame(columns=[*keys, "phase", "seconds"])
    wide = wide.reindex(columns=names).fillna(0.0)
    parts = pd.DataFrame(
        {
            "compute": (
                wide["step_s"] - wide["encode_s"] - wide["communicate_s"] - wide["decode_s"]
            ).clip(lower=0.0),
            "encode": wide["encode_s"],
            "communicate": wide["communicate_s"],
            "decode": wide["decode_s"],
        }
    )
    long = parts.reset_index().melt(id_vars=keys, var_name="phase", value_name="seconds")
    return _order_phases(long.sort_values(["run_id", "step"], kind="stable"))


def phase_means(runs: pd.DataFrame, series: pd.DataFrame | None = None) -> pd.DataFrame:
    """Mean time per step of each run split into ``PHASES``, long format (``run_id, run,
    scheme, phase, seconds, share``).

    A run's stored means (``mean_step_s``...) are used when it has them; a run still
    training has none yet, so its per-step metrics in ``series`` are averaged instead.
    """
    rows = []
    per_step = step_phases(series) if series is not None and not series.empty else None
    for run in label_runs(runs).itertuples(index=False):
        means = {
            "step": run.mean_step_s,
            "encode": run.mean_encode_s,
            "communicate": run.mean_communicate_s,
            "decode": run.mean_decode_s,
        }
        if all(_is_number(value) for value in means.values()):
            parts = {phase: float(means[phase]) for phase in PHASES[1:]}
            parts["compute"] = max(float(means["step"]) - sum(parts.values()), 0.0)
        elif per_step is not None and (per_step["run_id"] == run.id).any():
            mine = per_step[per_step["run_id"] == run.id]
            parts = mine.groupby("phase", observed=True)["seconds"].mean().to_dict()
        else:
            continue
        total = sum(parts.values())
        for phase in PHASES:
            seconds = float(parts.get(phase, 0.0))
            rows.append(
                {
                    "run_id": run.id,
                    "run": run.run,
                    "scheme": run.scheme,
                    "phase": phase,
                    "seconds": seconds,
                    "share": seconds / total if total > 0 else 0.0,
                }
            )
    columns = ["run_id", "run", "scheme", "phase", "seconds", "share"]
    return _order_phases(pd.DataFrame(rows, columns=columns))


def pareto_front(frame: pd.DataFrame, x: str, y: str) -> pd.Series:
    """Mark the rows no other row beats: none has ``x`` as low and ``y`` as high with one
    of them strictly better. Rows missing ``x`` or ``y`` are never on the front."""
    on_front = pd.Series(False, index=frame.index)
    best = -math.inf
    valid = frame.dropna(subset=[x, y])
    for index, value in valid.sort_values([x, y], ascending=[True, False])[y].items():
        if value > best:
            on_front[index] = True
            best = value
    return on_front


def tradeoff(runs: pd.DataFrame) -> pd.DataFrame:
    """Runs with a final accuracy and a byte count, labelled, with ``on_front`` marking
    the Pareto front of fewest bytes sent against highest accuracy."""
    frame = label_runs(runs).dropna(subset=["final_accuracy", "total_sent_bytes"])
    frame = frame[frame["total_sent_bytes"] > 0].copy()
    frame["total_sent_bytes"] = frame["total_sent_bytes"].astype("float64")
    frame["final_accuracy"] = frame["final_accuracy"].astype("float64")
    frame["on_front"] = pareto_front(frame, "total_sent_bytes", "final_accuracy")
    return frame.reset_index(drop=True)


SCALING_COLUMNS = ["line", "scheme", "bits", "collective", "world_size", "sent_bytes", "step_ms",
                   "runs"]  # fmt: skip


def scaling(runs: pd.DataFrame) -> pd.DataFrame:
    """Sent bytes per rank and step, and step time, of finished runs by world size.

    One row per (scheme, bits, collective, world size): the medians over its runs. A run's
    bytes per step are its ``total_sent_bytes`` over its steps (``summary["steps"]``).
    """
    frame = runs[runs["status"] == "finished"].copy()
    frame["sent_bytes"] = _per_step(frame, "total_sent_bytes")
    frame["step_ms"] = frame["mean_step_s"].astype("float64") * 1e3
    frame = frame.dropna(subset=["world_size", "sent_bytes", "step_ms"])
    frame = frame[frame["sent_bytes"] > 0]
    if frame.empty:
        return pd.DataFrame(columns=SCALING_COLUMNS)
    frame["collective"] = frame["collective"].fillna("-")
    frame["bits"] = frame["bits"].astype("float64")
    keys = ["scheme", "bits", "collective", "world_size"]
    table = (
        frame.groupby(keys, dropna=False)
        .agg(sent_bytes=("sent_bytes", "median"), step_ms=("step_ms", "median"),
             runs=("id", "size"))
        .reset_index()
    )  # fmt: skip
    table["line"] = [
        f"{scheme_label(s, b)} {c}"
        for s, b, c in zip(table["scheme"], table["bits"], table["collective"], strict=True)
    ]
    return table[SCALING_COLUMNS].sort_values(["line", "world_size"], ignore_index=True)


TRAFFIC_COLUMNS = ["run_id", "run", "scheme", "topology", "path", "kind", "bytes"]


def _per_step(runs: pd.DataFrame, column: str) -> pd.Series:
    return runs[column].astype("float64") / runs["steps"].astype("float64")


def node_traffic(runs: pd.DataFrame) -> pd.DataFrame:
    """Bytes a rank sent per step, split into those that left its node and those that did
    not, long format (``kind``: ``"inter-node"`` / ``"intra-node"``), for runs with both
    totals; ``path`` says flat or hierarchical, ``topology`` is ``"NxL"``."""
    frame = label_runs(runs).dropna(subset=["total_sent_bytes", "total_inter_node_bytes"])
    if frame.empty:
        return pd.DataFrame(columns=TRAFFIC_COLUMNS)
    frame["inter-node"] = _per_step(frame, "total_inter_node_bytes")
    frame["intra-node"] = _per_step(frame, "total_sent_bytes") - frame["inter-node"]
    frame["path"] = frame["hierarchical"].map({True: "hierarchical"}).fillna("flat")
    frame["topology"] = frame["topology"].fillna("-")
    long = frame.melt(
        id_vars=["id", "run", "scheme", "topology", "path"],
        value_vars=["inter-node", "intra-node"],
        var_name="kind",
        value_name="bytes",
    ).rename(columns={"id": "run_id"})
    return long.dropna(subset=["bytes"])[TRAFFIC_COLUMNS].reset_index(drop=True)


def predictions(runs: pd.DataFrame) -> pd.DataFrame:
    """Measured and predicted mean step time of the runs that have both, long format
    (``run_id, run, scheme, kind, seconds, error``); ``error`` is (predicted - measured)
    / measured."""
    frame = label_runs(runs).dropna(subset=["mean_step_s", "predicted_step_s"])
    frame = frame[frame["mean_step_s"] > 0]
    rows = []
    for run in frame.itertuples(index=False):
        error = (run.predicted_step_s - run.mean_step_s) / run.mean_step_s
        for kind, seconds in (("measured", run.mean_step_s), ("predicted", run.predicted_step_s)):
            rows.append(
                {
                    "run_id": run.id,
                    "run": run.run,
                    "scheme": run.scheme,
                    "kind": kind,
                    "seconds": float(seconds),
                    "error": float(error),
                }
            )
    return pd.DataFrame(rows, columns=["run_id", "run", "scheme", "kind", "seconds", "error"])


def run_figures(run: dict, series: pd.DataFrame) -> dict[str, float | None]:
    """A run's headline figures: its stored summary, or, for what a run still training
    has not stored yet, the same figures read off its metrics so far (``series`` as
    ``metric_series`` gives it, possibly thinned)."""

    def last(name: str) -> float | None:
        rows = series[series["name"] == name].sort_values("step")
        return float(rows["value"].iloc[-1]) if not rows.empty else None

    def total(name: str) -> float | None:
        rows = cumulative(series, name)
        return float(rows["value"].iloc[-1]) if not rows.empty else None

    def mean(name: str) -> float | None:
        rows = series[series["name"] == name]["value"]
        return float(rows.mean()) if not rows.empty else None

    steps = run.get("steps")
    estimates = {
        "final_accuracy": last("accuracy"),
        "final_loss": last("loss"),
        "total_sent_bytes": total("sent_bytes"),
        "compression_ratio": mean("compression_ratio"),
        "mean_step_s": mean("step_s"),
        "predicted_step_s": None,
        "steps": float(series["step"].max() + 1) if not series.empty else None,
    }
    figures: dict[str, float | None] = {}
    for key, estimate in estimates.items():
        stored = steps if key == "steps" else run.get(key)
        figures[key] = float(stored) if _is_number(stored) else estimate
    return figures


def _order_phases(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.copy()
    frame["phase_order"] = frame["phase"].map({p: i for i, p in enumerate(PHASES)})
    return frame.reset_index(drop=True)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)
