"""One run's page: its cards, charts, full configuration and a CSV of all its metrics."""

import functools
from typing import Any

import pandas as pd
import streamlit as st

from dashboard import charts, data, error_charts, frames
from dashboard.widgets import (
    MAX_POINTS,
    REFRESH_S,
    STATUS_COLORS,
    Box,
    api_errors,
    draw_boxes,
    draw_chart,
    format_bytes,
    metric_box,
)

__all__ = ["run_page"]


def run_page(api_url: str, run_id: int) -> None:
    """One run: its cards, charts, full configuration and a CSV of all its metrics."""
    with st.sidebar:
        st.button("← All runs", on_click=_leave_run_page, type="primary")
    run = data.fetch_run(api_url, run_id)
    if run is None:
        st.error(f"Run {run_id} is not in the run store at `{api_url}`.")
        return
    running = run["status"] == "running"
    st.fragment(run_every=REFRESH_S if running else None)(_run_body)(api_url, run_id, running)


def _leave_run_page() -> None:
    if "run" in st.query_params:
        del st.query_params["run"]


def _run_body(api_url: str, run_id: int, was_running: bool) -> None:
    with api_errors(api_url):
        run = data.fetch_run(api_url, run_id)
        if run is None:
            st.error(f"Run {run_id} is no longer in the run store.")
            return
        if was_running and run["status"] != "running":
            st.rerun()
        label = frames.run_label(run["id"], run["scheme"], run["bits"])
        st.title(run["name"])
        badges = st.container(horizontal=True)
        with badges:
            st.badge(run["status"], color=STATUS_COLORS.get(run["status"], "gray"))
            st.badge(label, color="gray")
            for text in (run.get("model_name"), run.get("dataset")):
                if text:
                    st.badge(text, color="gray")
            if run.get("world_size"):
                st.badge(f"{run['world_size']} ranks × {run.get('num_nodes') or 1} node(s)")
            for tag in run.get("tags") or []:
                st.badge(tag, icon=":material/sell:", color="violet")
        if run["status"] == "running":
            st.caption(f":material/autorenew: Still training: refreshing every {REFRESH_S} s.")
        metrics = data.fetch_metrics(api_url, run_id, (), MAX_POINTS)
        series = frames.metric_series(metrics, pd.DataFrame([run]))
        _run_cards(run, series)
        charts_tab, config_tab = st.tabs(["Charts", "Configuration"])
        with charts_tab:
            _run_charts(series, run)
        with config_tab:
            _run_config(run)
        st.download_button(
            "Download all metrics (CSV)",
            data=functools.partial(data.fetch_metrics_csv, api_url, run_id),
            file_name=f"run-{run_id}-metrics.csv",
            mime="text/csv",
            icon=":material/download:",
            help="Every stored point, not thinned, from the API's export",
        )


def _run_cards(run: dict[str, Any], series: pd.DataFrame) -> None:
    """Cards of the run's figures; while it trains, the latest ones from its metrics."""
    figures = frames.run_figures(run, series)
    latest = "Latest" if run["status"] == "running" else "Final"
    accuracy, loss = figures["final_accuracy"], figures["final_loss"]
    ratio, steps = figures["compression_ratio"], figures["steps"]
    step, predicted = figures["mean_step_s"], figures["predicted_step_s"]
    cards = st.columns(6)
    cards[0].metric(
        f"{latest} accuracy", f"{accuracy:.2%}" if accuracy is not None else "–", border=True
    )
    cards[1].metric(f"{latest} loss", f"{loss:.4f}" if loss is not None else "–", border=True)
    cards[2].metric("Compression", f"{ratio:.1f}x" if ratio is not None else "–", border=True)
    cards[3].metric("Bytes sent", format_bytes(figures["total_sent_bytes"]), border=True)
    cards[4].metric(
        "Mean step",
        f"{1e3 * step:.1f} ms" if step is not None else "–",
        f"{1e3 * predicted:.1f} ms predicted" if predicted is not None else None,
        delta_color="off",
        delta_arrow="off",
        border=True,
    )
    cards[5].metric("Steps", f"{steps:,.0f}" if steps is not None else "–", border=True)


def _run_charts(series: pd.DataFrame, run: dict[str, Any]) -> None:
    if series.empty:
        st.info("This run has no metrics yet.")
        return
    total = frames.cumulative(series, "sent_bytes")
    phases = frames.step_phases(series)
    boxes: list[Box] = [
        metric_box(series, name, build, f"No {name} recorded.")
        for name, build in (
            ("loss", charts.loss_chart),
            ("accuracy", charts.accuracy_chart),
            ("sent_bytes", charts.sent_bytes_chart),
        )
    ]
    boxes += [
        (charts.cumulative_bytes_chart(total) if not total.empty else None, "No sent bytes."),
        metric_box(
            series, "compression_ratio", charts.compression_chart, "No compression_ratio recorded."
        ),  # fmt: skip
        metric_box(series, "bits", charts.bits_chart, "No bits recorded."),
        (charts.step_phases_chart(phases) if not phases.empty else None, "No step times."),
        metric_box(series, "rel_error", error_charts.error_chart, "No compression error."),
    ]
    draw_boxes(boxes)
    candidates = (run.get("strategy_config") or {}).get("auto_candidates")
    choices = error_charts.timeline(series, candidates or [])
    if candidates:
        timeline = error_charts.choice_timeline(choices, series) if not choices.empty else None
        draw_chart(timeline, "No bucket decisions recorded yet.")
    charted = {*frames.CHARTED, "rel_error"}
    others = sorted(
        n for n in set(series["name"]) - charted if not n.startswith(error_charts.CHOICE_PREFIX)
    )
    if others:
        name = st.selectbox("Other metrics", others)
        draw_chart(charts.metric_chart(series, name), "")


def _run_config(run: dict[str, Any]) -> None:
    setup_keys = [
        "id", "name", "status", "scheme", "bits", "collective", "bucket_size", "world_size",
        "num_nodes", "topology", "hierarchical",
        "backend", "device", "model_name", "param_count", "dataset", "host", "created_at",
        "updated_at", "finished_at",
    ]  # fmt: skip
    setup = pd.DataFrame(
        {
            "field": setup_keys,
            "value": ["" if run.get(k) is None else str(run[k]) for k in setup_keys],
        }
    )
    left, right = st.columns([2, 3])
    with left:
        st.markdown("**Setup**")
        st.dataframe(setup, hide_index=True, width="stretch")
    with right:
        for key in (
            "strategy_config",
            "quantizer_config",
            "hyperparameters",
            "summary",
            "versions",
        ):
            st.markdown(f"**{key}**")
            st.json(run.get(key) or {}, expanded=2)
