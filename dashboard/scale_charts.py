"""Charts of how runs scale: bytes and step time across world sizes, and across nodes.

Like :mod:`dashboard.charts`, one function per chart over frames of
:mod:`dashboard.frames`, typed fields, tooltips, schemes in their page-wide colours.
"""

import altair as alt
import pandas as pd

from dashboard.charts import HEIGHT, Schemes, legend, scheme_color

__all__ = ["SCALING_MEASURES", "scaling_chart", "traffic_chart"]

SCALING_MEASURES = {
    "sent_bytes": ("sent bytes per rank and step", "~s", "Bytes sent per rank as ranks grow"),
    "step_ms": ("time per step (ms)", ",.0f", "Step time as ranks grow"),
}


def scaling_chart(scaling: pd.DataFrame, measure: str, *, schemes: Schemes = None) -> alt.Chart:
    """``measure`` (``"sent_bytes"`` or ``"step_ms"``) against world size, a line per
    scheme, width and collective (``frames.scaling``): flat lines are what scale."""
    title, fmt, heading = SCALING_MEASURES[measure]
    frame = scaling.copy()
    frame["bits"] = frame["bits"].astype("float64")
    base = alt.Chart(frame).encode(
        x=alt.X("world_size:Q", title="ranks", scale=alt.Scale(type="log", base=2)),
        y=alt.Y(f"{measure}:Q", title=title, axis=alt.Axis(format=fmt),
                scale=alt.Scale(type="log")),
        color=scheme_color(frame, schemes),
        detail="line:N",
    )  # fmt: skip
    lines = base.mark_line(strokeWidth=1.8).encode(
        strokeDash=alt.StrokeDash("collective:N", legend=legend("collective"))
    )
    points = base.mark_point(filled=True, size=60).encode(
        tooltip=[
            alt.Tooltip("scheme:N", title="scheme"),
            alt.Tooltip("bits:Q", title="bits", format="d"),
            alt.Tooltip("collective:N", title="collective"),
            alt.Tooltip("world_size:Q", title="ranks", format="d"),
            alt.Tooltip(f"{measure}:Q", title=title, format=",.4~g"),
            alt.Tooltip("runs:Q", title="runs (median)", format="d"),
        ]
    )
    return alt.layer(lines, points).properties(title=heading, height=HEIGHT)


TRAFFIC_COLORS = ("#e45756", "#9aa5b1")  # inter-node (the slow link), intra-node


def traffic_chart(traffic: pd.DataFrame) -> alt.Chart:
    """Bytes a rank sent per step, inter- and intra-node, as stacked bars per run, the bars
    grouped by topology (``frames.node_traffic``): the hierarchical path moves bytes off
    the slow link between nodes."""
    frame = traffic.assign(label=traffic["run"] + " · " + traffic["path"])
    order = list(dict.fromkeys(frame.sort_values(["topology", "run"])["label"]))
    return (
        alt.Chart(frame)
        .mark_bar()
        .encode(
            y=alt.Y("label:N", sort=order, title=None, axis=alt.Axis(labelLimit=260)),
            x=alt.X(
                "sum(bytes):Q",
                stack="zero",
                title="bytes sent per rank and step",
                axis=alt.Axis(format="~s"),
            ),
            color=alt.Color(
                "kind:N",
                title="to",
                scale=alt.Scale(domain=["inter-node", "intra-node"], range=list(TRAFFIC_COLORS)),
                legend=legend("sent to"),
            ),
            row=alt.Row(
                "topology:N",
                title="topology (nodes x ranks)",
                header=alt.Header(labelAngle=0, labelAlign="left"),
            ),
            tooltip=[
                alt.Tooltip("run:N", title="run"),
                alt.Tooltip("scheme:N", title="scheme"),
                alt.Tooltip("topology:N", title="topology"),
                alt.Tooltip("path:N", title="path"),
                alt.Tooltip("kind:N", title="sent to"),
                alt.Tooltip("bytes:Q", title="bytes per step", format=",.0f"),
            ],
        )  # fmt: skip
        .resolve_scale(y="independent")
        .properties(title="Bytes sent inside and between nodes")
    )
