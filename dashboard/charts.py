"""Altair charts of runs: one function per chart, each returning an ``alt.Chart``.

Every chart takes long-format frames from ``dashboard.frames`` (one row per run, step
and metric), writes its field types out (``"scheme:N"``, ``"step:Q"``), carries
tooltips, and colours by scheme. ``schemes`` fixes the colour of each scheme so that it
is the same in every chart of a page (default: the schemes in the data, sorted).
"""

from collections.abc import Sequence

import altair as alt
import pandas as pd

from dashboard.frames import PHASES

__all__ = [
    "accuracy_chart",
    "bits_chart",
    "compression_chart",
    "cumulative_bytes_chart",
    "loss_chart",
    "metric_chart",
    "phase_chart",
    "prediction_chart",
    "step_phases_chart",
    "sent_bytes_chart",
    "tradeoff_chart",
]

HEIGHT = 300  # the whole chart: title, legend, plot and axes
PHASE_COLORS = ("#9aa5b1", "#f2a541", "#4c78a8", "#e45756")  # compute, encode, comm, decode
X_FIELDS = {
    "step": alt.X("step:Q", title="step"),
    "time_s": alt.X("time_s:Q", title="wall-clock time (s)"),
}
Schemes = Sequence[str] | None


def percent_format(values: pd.Series) -> str:
    """A percent format with enough decimals that nearby values' ticks differ."""
    span = float(values.max() - values.min()) if len(values) else 1.0
    decimals = 0 if span >= 0.1 else 1 if span >= 0.01 else 2
    return f".{decimals}%"


def legend(title: str) -> alt.Legend:
    """A legend right of the plot, one entry a line, so none is cut off."""
    return alt.Legend(orient="right", title=title, labelLimit=140)


def bits_legend() -> alt.Legend:
    """The bit widths in one row under the scheme legend."""
    return alt.Legend(orient="right", title="bits", columns=4, symbolSize=120)


def scheme_color(frame: pd.DataFrame, schemes: Schemes = None) -> alt.Color:
    """Colour by scheme from Vega's ``tableau10``: ``schemes`` (all schemes of the page)
    fixes each one's colour across charts, and the legend lists only those in ``frame``."""
    present = set(frame["scheme"].dropna())
    order = list(schemes or []) + sorted(present - set(schemes or []))
    return alt.Color(
        "scheme:N",
        scale=alt.Scale(domain=order, scheme="tableau10"),
        legend=alt.Legend(
            orient="right",
            title="scheme",
            labelLimit=140,
            values=[s for s in order if s in present],
        ),
    )


def series_chart(
    series: pd.DataFrame,
    *,
    name: str,
    title: str,
    y_title: str,
    x: str = "step",
    schemes: Schemes = None,
    y_format: str = ",.4~g",
    log_y: bool = False,
    interpolate: str = "linear",
) -> alt.Chart:
    """One metric of several runs as lines over ``x``, with a hover rule and tooltips."""
    frame = series[series["name"] == name].dropna(subset=[x, "value"])
    frame = frame[["run", "scheme", "bits", "step", "time_s", "value"]]
    sparse = bool(not frame.empty and frame.groupby("run").size().max() <= 40)
    y = alt.Y(
        "value:Q",
        title=y_title,
        axis=alt.Axis(format=y_format),
        scale=alt.Scale(type="log") if log_y else alt.Scale(zero=False),
    )
    tooltip = [
        alt.Tooltip("run:N", title="run"),
        alt.Tooltip("scheme:N", title="scheme"),
        alt.Tooltip("bits:O", title="bits"),
        alt.Tooltip("step:Q", title="step"),
        alt.Tooltip("time_s:Q", title="time (s)", format=".2f"),
        alt.Tooltip("value:Q", title=y_title, format=y_format),
    ]
    hover = alt.selection_point(
        fields=[x], nearest=True, on="pointerover", empty=False, clear="pointerout"
    )
    base = alt.Chart(frame).encode(x=X_FIELDS[x], y=y, color=scheme_color(frame, schemes))
    lines = base.mark_line(interpolate=interpolate, point=sparse, strokeWidth=1.8).encode(
        detail="run:N"
    )
    if not frame.empty and frame.groupby("scheme")["bits"].nunique().max() > 1:
        # a scheme at several widths: one colour, told apart by the dash
        lines = lines.encode(strokeDash=alt.StrokeDash("bits:O", legend=bits_legend()))
    points = (
        base.mark_point(filled=True, size=50)
        .encode(
            opacity=alt.condition(hover, alt.value(1.0), alt.value(0.0)),
            tooltip=tooltip,
        )
        .add_params(hover)
    )
    rule = (
        alt.Chart(frame)
        .mark_rule(color="gray", strokeDash=[3, 3])
        .encode(x=X_FIELDS[x])
        .transform_filter(hover)
    )
    return alt.layer(lines, points, rule).properties(title=title, height=HEIGHT)


def loss_chart(series: pd.DataFrame, *, x: str = "step", schemes: Schemes = None) -> alt.Chart:
    """Training loss of each run against ``x`` (``"step"`` or ``"time_s"``)."""
    where = "step" if x == "step" else "wall-clock time"
    return series_chart(
        series,
        name="loss",
        title=f"Loss by {where} (log)",
        y_title="loss",
        x=x,
        schemes=schemes,
        log_y=True,
    )


def accuracy_chart(series: pd.DataFrame, *, x: str = "step", schemes: Schemes = None) -> alt.Chart:
    """Validation accuracy of each run against ``x`` (``"step"`` or ``"time_s"``)."""
    where = "step" if x == "step" else "wall-clock time"
    return series_chart(
        series,
        name="accuracy",
        title=f"Accuracy by {where}",
        y_title="accuracy",
        x=x,
        schemes=schemes,
        y_format=".1%",
    )


def sent_bytes_chart(series: pd.DataFrame, *, schemes: Schemes = None) -> alt.Chart:
    """Bytes a rank of each run sent per optimizer step (what its collectives transmit)."""
    return series_chart(
        series,
        name="sent_bytes",
        title="Bytes sent per rank and step (log)",
        y_title="bytes",
        schemes=schemes,
        y_format="~s",
        log_y=True,
    )


def cumulative_bytes_chart(cumulative: pd.DataFrame, *, schemes: Schemes = None) -> alt.Chart:
    """Total bytes each run has sent so far (``frames.cumulative(series)``)."""
    return series_chart(
        cumulative,
        name="cumulative_sent_bytes",
        title="Cumulative bytes sent per rank",
        y_title="bytes sent",
        schemes=schemes,
        y_format="~s",
    )


def compression_chart(series: pd.DataFrame, *, schemes: Schemes = None) -> alt.Chart:
    """fp32 DDP's sent bytes at the run's world size over the run's, per step: how many
    times fewer bytes than plain DDP each rank sends."""
    return series_chart(
        series,
        name="compression_ratio",
        title="Compression ratio (fp32 DDP's bytes sent / this run's)",
        y_title="ratio (x)",
        schemes=schemes,
        y_format=".3~g",
    )


def bits_chart(series: pd.DataFrame, *, schemes: Schemes = None) -> alt.Chart:
    """The bit width each run used per step (DQ-SGD chooses it afresh every step)."""
    return series_chart(
        series,
        name="bits",
        title="Bits per coordinate by step",
        y_title="bits",
        schemes=schemes,
        y_format="d",
        interpolate="step-after",
    )


def metric_chart(series: pd.DataFrame, name: str, *, schemes: Schemes = None) -> alt.Chart:
    """Any stored metric ``name`` by step."""
    return series_chart(series, name=name, title=name, y_title=name, schemes=schemes)


def phase_chart(phases: pd.DataFrame) -> alt.Chart:
    """Mean time per step of each run as stacked bars: compute, encode, communicate,
    decode (``frames.phase_means``). Bars are labelled by run, which names the scheme."""
    frame = phases.assign(ms=phases["seconds"] * 1e3)
    order = list(dict.fromkeys(frame["run"]))
    return (
        alt.Chart(frame)
        .mark_bar()
        .encode(
            y=alt.Y("run:N", sort=order, title=None, axis=alt.Axis(labelLimit=220)),
            x=alt.X("sum(ms):Q", stack="zero", title="mean time per step (ms)"),
            color=alt.Color(
                "phase:N",
                title="phase",
                scale=alt.Scale(domain=list(PHASES), range=list(PHASE_COLORS)),
                legend=legend("phase"),
            ),
            order=alt.Order("phase_order:Q"),
            tooltip=[
                alt.Tooltip("run:N", title="run"),
                alt.Tooltip("scheme:N", title="scheme"),
                alt.Tooltip("phase:N", title="phase"),
                alt.Tooltip("ms:Q", title="ms per step", format=".2f"),
                alt.Tooltip("share:Q", title="share of step", format=".0%"),
            ],
        )
        .properties(title="Time per step by phase", height=HEIGHT)
    )


def step_phases_chart(phases: pd.DataFrame) -> alt.Chart:
    """One run's time per step over training, stacked by phase (``frames.step_phases``)."""
    frame = phases.assign(ms=phases["seconds"] * 1e3)
    return (
        alt.Chart(frame)
        .mark_area(interpolate="step-after", opacity=0.85)
        .encode(
            x=alt.X("step:Q", title="step"),
            y=alt.Y("ms:Q", stack="zero", title="time per step (ms)"),
            color=alt.Color(
                "phase:N",
                title="phase",
                scale=alt.Scale(domain=list(PHASES), range=list(PHASE_COLORS)),
                legend=legend("phase"),
            ),
            order=alt.Order("phase_order:Q"),
            tooltip=[
                alt.Tooltip("step:Q", title="step"),
                alt.Tooltip("phase:N", title="phase"),
                alt.Tooltip("ms:Q", title="ms", format=".2f"),
            ],
        )
        .properties(title="Time per step by phase", height=HEIGHT)
    )


def tradeoff_chart(tradeoff: pd.DataFrame, *, schemes: Schemes = None) -> alt.Chart:
    """Final accuracy against total bytes sent, one point per run, the Pareto front
    (fewest bytes for the accuracy) drawn as a dashed staircase through ringed points
    (``frames.tradeoff``)."""
    frame = tradeoff[
        ["run", "name", "scheme", "bits", "total_sent_bytes", "final_accuracy", "on_front"]
    ].copy()
    frame["bits"] = frame["bits"].astype("float64")
    frame["front"] = frame["on_front"].map({True: "on the front", False: "dominated"})
    x = alt.X(
        "total_sent_bytes:Q",
        title="total bytes sent per rank (log)",
        scale=alt.Scale(type="log"),
        axis=alt.Axis(format="~s"),
    )
    y = alt.Y(
        "final_accuracy:Q",
        title="final accuracy",
        scale=alt.Scale(zero=False),
        axis=alt.Axis(format=percent_format(frame["final_accuracy"])),
    )
    front = frame[frame["on_front"]].sort_values("total_sent_bytes")
    staircase = (
        alt.Chart(front)
        .mark_line(interpolate="step-after", color="#666", strokeDash=[5, 4])
        .encode(x=x, y=y, order="total_sent_bytes:Q")
    )
    rings = (
        alt.Chart(front)
        .mark_point(size=260, color="#333", strokeWidth=1.5, filled=False)
        .encode(x=x, y=y)
    )
    points = (
        alt.Chart(frame)
        .mark_point(filled=True, size=90, opacity=0.9)
        .encode(
            x=x,
            y=y,
            color=scheme_color(frame, schemes),
            shape=alt.Shape("bits:O", legend=alt.Legend(orient="right", title="bits", columns=4)),
            tooltip=[
                alt.Tooltip("run:N", title="run"),
                alt.Tooltip("name:N", title="name"),
                alt.Tooltip("scheme:N", title="scheme"),
                alt.Tooltip("bits:Q", title="bits", format="d"),
                alt.Tooltip("total_sent_bytes:Q", title="bytes sent", format=",.0f"),
                alt.Tooltip("final_accuracy:Q", title="final accuracy", format=".2%"),
                alt.Tooltip("front:N", title="Pareto"),
            ],
        )
    )
    labels = (
        alt.Chart(front)
        .mark_text(align="left", dx=10, dy=-8, fontSize=11, color="#333")
        .encode(x=x, y=y, text="run:N")
    )
    return alt.layer(staircase, rings, points, labels).properties(
        title="Final accuracy against bytes sent (Pareto front ringed)", height=HEIGHT
    )


def prediction_chart(predictions: pd.DataFrame, *, schemes: Schemes = None) -> alt.Chart:
    """Measured against predicted mean step time per run: a dot for each, joined by a
    line whose length is the model's error (``frames.predictions``)."""
    frame = predictions.assign(ms=predictions["seconds"] * 1e3)
    order = list(dict.fromkeys(frame["run"]))
    wide = frame.pivot_table(index=["run", "scheme"], columns="kind", values="ms").reset_index()
    y = alt.Y("run:N", sort=order, title=None, axis=alt.Axis(labelLimit=220))
    gap = (
        alt.Chart(wide)
        .mark_rule(color="#999", strokeWidth=2)
        .encode(y=y, x=alt.X("measured:Q"), x2="predicted:Q")
    )
    dots = (
        alt.Chart(frame)
        .mark_point(filled=True, size=110)
        .encode(
            y=y,
            x=alt.X("ms:Q", title="mean time per step (ms)", scale=alt.Scale(zero=False)),
            color=scheme_color(frame, schemes),
            shape=alt.Shape(
                "kind:N",
                scale=alt.Scale(domain=["measured", "predicted"], range=["circle", "diamond"]),
                legend=legend("step time"),
            ),
            tooltip=[
                alt.Tooltip("run:N", title="run"),
                alt.Tooltip("kind:N", title="kind"),
                alt.Tooltip("ms:Q", title="ms per step", format=".2f"),
                alt.Tooltip("error:Q", title="prediction error", format="+.1%"),
            ],
        )
    )
    return alt.layer(gap, dots).properties(title="Measured vs predicted step time", height=HEIGHT)
