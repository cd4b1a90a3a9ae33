"""Charts of what compression cost in accuracy: the error per step, the variance-bytes
frontier of stored runs, and which configuration each bucket of an ``auto`` run used."""

from __future__ import annotations

import altair as alt
import pandas as pd

from dashboard.charts import HEIGHT, scheme_color, series_chart

__all__ = [
    "CHOICE_PREFIX",
    "choice_timeline",
    "error_chart",
    "frontier",
    "frontier_chart",
    "timeline",
]

CHOICE_PREFIX = "choice/"  # auto's comm/choice/<bucket>: the index of its configuration


def error_chart(series: pd.DataFrame) -> alt.Chart:
    """The estimated relative error of the averaged gradient per step (log scale)."""
    frame = series[(series["name"] == "rel_error") & (series["value"] > 0)]
    return series_chart(
        frame,
        name="rel_error",
        title="Compression error per step: ||m^ - m||² / ||m||²",
        y_title="relative error",
        y_format=".2~g",
        log_y=True,
    )


def frontier(runs: pd.DataFrame) -> pd.DataFrame:
    """Runs with a measured relative variance and the wire bits per coordinate they sent
    (their payload bytes over the gradient's fp32 coordinates)."""
    needed = ["mean_rel_variance", "total_payload_bytes", "total_raw_bytes"]
    if any(column not in runs for column in needed):
        return pd.DataFrame()
    frame = runs.dropna(subset=needed).copy()
    frame = frame[(frame["mean_rel_variance"] > 0) & (frame["total_raw_bytes"] > 0)]
    coordinates = frame["total_raw_bytes"].astype("float64") / 4
    frame["wire_bits"] = 8 * frame["total_payload_bytes"].astype("float64") / coordinates
    frame["coding"] = frame.get("coding", pd.Series("packed", index=frame.index)).fillna("packed")
    return frame.reset_index(drop=True)


def frontier_chart(points: pd.DataFrame, *, schemes: list[str] | None = None) -> alt.Chart:
    """Relative variance against wire bits per coordinate: down and left is better."""
    return (
        alt.Chart(points)
        .mark_point(filled=True, size=90)
        .encode(
            x=alt.X("wire_bits:Q", title="wire bits per coordinate", scale=alt.Scale(zero=False)),
            y=alt.Y("mean_rel_variance:Q", title="relative variance", scale=alt.Scale(type="log")),
            color=scheme_color(points, schemes),
            shape=alt.Shape("coding:N", title="coding"),
            tooltip=[
                alt.Tooltip("run:N"),
                alt.Tooltip("wire_bits:Q", format=".2f"),
                alt.Tooltip("mean_rel_variance:Q", title="relative variance", format=".3g"),
                alt.Tooltip("mean_rel_error:Q", title="relative error", format=".3g"),
            ],
        )
        .properties(title="Variance against bytes, from stored runs", height=HEIGHT)
    )


def timeline(series: pd.DataFrame, candidates: list[str]) -> pd.DataFrame:
    """Each bucket's configuration per step, from an ``auto`` run's choice metrics."""
    frame = series[series["name"].str.startswith(CHOICE_PREFIX)].copy()
    if frame.empty:
        return pd.DataFrame(columns=["step", "bucket", "configuration"])
    frame["bucket"] = frame["name"].str.removeprefix(CHOICE_PREFIX).astype(int)
    frame["configuration"] = [
        candidates[int(v)] if 0 <= int(v) < len(candidates) else "other" for v in frame["value"]
    ]
    return frame[["step", "bucket", "configuration"]].reset_index(drop=True)


def choice_timeline(choices: pd.DataFrame, series: pd.DataFrame) -> alt.Chart:
    """Which configuration each bucket used over the steps, above the fitted bandwidth
    (where the hook fitted one: it needs collectives of 64 KB or more)."""
    steps = alt.X("step:Q", title="step")
    grid = (
        alt.Chart(choices)
        .mark_rect()
        .encode(
            x=steps,
            y=alt.Y("bucket:O", title="bucket"),
            color=alt.Color("configuration:N", scale=alt.Scale(scheme="tableau20")),
            tooltip=["step:Q", "bucket:O", "configuration:N"],
        )
        .properties(title="auto: each bucket's configuration by step", height=HEIGHT // 2)
    )
    link = series[(series["name"] == "link_bytes_per_s") & (series["value"] > 0)].copy()
    if link.empty:
        return grid
    link["Mbit/s"] = link["value"] * 8 / 1e6
    bandwidth = (
        alt.Chart(link)
        .mark_line(point=True)
        .encode(x=steps, y=alt.Y("Mbit/s:Q", title="fitted link (Mbit/s)"), tooltip=["step:Q"])
        .properties(height=HEIGHT // 3)
    )
    return alt.vconcat(grid, bandwidth).resolve_scale(x="shared")  # type: ignore[return-value]
