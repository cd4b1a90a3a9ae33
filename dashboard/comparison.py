"""The comparison's charts, the side-by-side table and the scaling view."""

import pandas as pd
import streamlit as st

from dashboard import charts, error_charts, frames, scale_charts
from dashboard.widgets import Box, draw_boxes, has_metric, metric_box

__all__ = ["comparison_charts", "side_by_side"]


def comparison_charts(
    summary: pd.DataFrame,
    series: pd.DataFrame,
    runs: pd.DataFrame,
    schemes: list[str],
    api_url: str,
) -> None:
    total = frames.cumulative(series, "sent_bytes")
    phases = frames.phase_means(summary, series)
    points = frames.tradeoff(runs)
    widths = frames.varying(series, "bits")
    predicted = frames.predictions(summary)
    traffic = frames.node_traffic(summary)
    variance = error_charts.frontier(frames.label_runs(runs))
    on = {"schemes": schemes}
    boxes: list[Box] = [
        metric_box(series, "loss", charts.loss_chart, "No loss points yet.", **on),
        metric_box(
            series,
            "loss",
            charts.loss_chart,
            "No wall-clock times stored with the loss.",
            x="time_s",
            **on,
        ),  # fmt: skip
        metric_box(
            series,
            "accuracy",
            charts.accuracy_chart,
            "No accuracy points yet (they come at validation).",
            **on,
        ),  # fmt: skip
        metric_box(
            series,
            "accuracy",
            charts.accuracy_chart,
            "No accuracy points with wall-clock times yet.",
            x="time_s",
            **on,
        ),  # fmt: skip
        metric_box(series, "sent_bytes", charts.sent_bytes_chart, "No sent bytes recorded.", **on),
        (
            charts.cumulative_bytes_chart(total, **on) if not total.empty else None,
            "No sent bytes recorded.",
        ),  # fmt: skip
        metric_box(
            series,
            "compression_ratio",
            charts.compression_chart,
            "No compression ratio recorded.",
            **on,
        ),  # fmt: skip
        (charts.phase_chart(phases) if not phases.empty else None, "No step times recorded."),
        (
            charts.tradeoff_chart(points, **on) if not points.empty else None,
            "No run in the filters has both a final accuracy and a byte count.",
        ),  # fmt: skip
        (
            charts.bits_chart(widths, **on).properties(title="Bits by step, where they moved")
            if has_metric(widths, "bits")
            else None,
            "Every compared run kept one width; a scheme that picks its width per step "
            "(DQ-SGD) shows it here.",
        ),  # fmt: skip
        (
            charts.prediction_chart(predicted, **on) if not predicted.empty else None,
            "No compared run has a predicted step time (the sweep's performance model).",
        ),  # fmt: skip
        (
            scale_charts.traffic_chart(traffic) if not traffic.empty else None,
            "No compared run says how many of its bytes left its node.",
        ),  # fmt: skip
        (
            error_charts.frontier_chart(variance, **on) if not variance.empty else None,
            "No compared run measured its relative variance.",
        ),  # fmt: skip
        metric_box(series, "rel_error", error_charts.error_chart, "No compression error."),
    ]
    draw_boxes(boxes)
    with st.container(border=True):
        st.markdown("**Side by side** (ratios against the baseline)")
        side_by_side(summary)
    _scaling(runs, schemes)


def _scaling(runs: pd.DataFrame, schemes: list[str]) -> None:
    """Bytes per rank and step time against world size, for the runs in the filters."""
    table = frames.scaling(runs)
    if table["world_size"].nunique() < 2:
        return
    st.subheader("Scaling")
    st.caption(
        "Finished runs in the filters, median per scheme, width, collective and world "
        "size. Flat bytes per rank are what scale: an all-gather sends (n-1) payloads, "
        "the reduce-scatter 2 (n-1)/n."
    )
    draw_boxes(
        [
            (scale_charts.scaling_chart(table, m, schemes=schemes), "")
            for m in scale_charts.SCALING_MEASURES
        ]
    )


def side_by_side(summary: pd.DataFrame) -> None:
    table = frames.label_runs(summary)
    table["open"] = "?run=" + table["id"].astype(str)
    table["step_ms"] = table["mean_step_s"] * 1e3
    table["predicted_ms"] = table["predicted_step_s"] * 1e3
    table["to_target_s"] = [(extra or {}).get("time_to_target_s") for extra in table["summary"]]
    st.dataframe(
        table[
            [
                "run",
                "open",
                "status",
                "collective",
                "topology",
                "hierarchical",
                "final_accuracy",
                "accuracy_delta",
                "final_loss",
                "total_sent_bytes",
                "sent_bytes_ratio",
                "compression_ratio",
                "step_ms",
                "speedup",
                "to_target_s",
                "predicted_ms",
                "prediction_error",
            ]
        ],  # fmt: skip
        hide_index=True,
        placeholder="–",
        column_config={
            "open": st.column_config.LinkColumn("page", display_text="open", width="small"),
            "final_accuracy": st.column_config.NumberColumn("accuracy", format="percent"),
            "accuracy_delta": st.column_config.NumberColumn("Δ accuracy", format="%+.4f"),
            "final_loss": st.column_config.NumberColumn("loss", format="%.3f"),
            "hierarchical": st.column_config.CheckboxColumn("hierarchical"),
            "total_sent_bytes": st.column_config.NumberColumn("bytes sent", format="compact"),
            "sent_bytes_ratio": st.column_config.NumberColumn("bytes ratio", format="%.3f"),
            "compression_ratio": st.column_config.NumberColumn(
                "compression", format="%.1fx", help="fp32 DDP's bytes sent / this run's"
            ),
            "step_ms": st.column_config.NumberColumn("ms / step", format="%.1f"),
            "speedup": st.column_config.NumberColumn("speedup", format="%.2fx"),
            "to_target_s": st.column_config.NumberColumn(
                "s to target", format="%.1f", help="training time to the target metric"
            ),
            "predicted_ms": st.column_config.NumberColumn("predicted ms", format="%.1f"),
            "prediction_error": st.column_config.NumberColumn("model error", format="percent"),
        },
    )
