"""The dashboard's sections: sidebar filters, run browser, comparison and run page.

Each function draws one part of the page from what ``dashboard.data`` fetched; the
selection (filters, compared runs, baseline, the open run) lives in ``st.query_params``,
so any view can be shared as a link: ``?runs=3,5&baseline=3&scheme=qsgd,fp32``,
``?run=5``.
"""

import functools
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import altair as alt
import pandas as pd
import streamlit as st

from dashboard import charts, data, frames

__all__ = ["api_errors", "browser_page", "run_page"]

REFRESH_S = 5  # how often a view with a running run reloads its data
MAX_POINTS = 500  # points per metric and run asked of the API (a chart is ~500 px)
FILTER_LABELS = {
    "scheme": "Scheme",
    "bits": "Bits",
    "collective": "Collective",
    "dataset": "Dataset",
    "model": "Model",
    "status": "Status",
    "tag": "Tag",
}
STATUS_COLORS = {"running": "blue", "finished": "green", "failed": "red"}


# --- errors and the URL -----------------------------------------------------------------


@contextmanager
def api_errors(api_url: str) -> Iterator[None]:
    """Show what went wrong with the API as a message on the page, never a traceback."""
    try:
        yield
    except data.ApiUnreachable as error:
        st.error(
            f"**Cannot reach the run store API at `{api_url}`**: {error}.\n\n"
            "Start it with `uvicorn api.main:app --port 8000` (or `lightning-quant serve`), "
            "or point the dashboard at yours: "
            "`streamlit run dashboard/app.py -- --api-url http://HOST:PORT` or `LQ_API_URL`.",
            icon=":material/cloud_off:",
        )
        st.button("Retry", key="retry", on_click=st.cache_data.clear)
    except data.ApiError as error:
        st.error(f"**The run store API at `{api_url}` answered with an error**: {error}")
        st.button("Retry", key="retry", on_click=st.cache_data.clear)


def _url_values(key: str) -> list[str]:
    """A query parameter's values, repeated (``?a=1&a=2``) or comma-separated."""
    return [part.strip() for v in st.query_params.get_all(key) for part in v.split(",") if part]


def _url_ints(key: str) -> list[int]:
    return [int(v) for v in _url_values(key) if v.isdigit()]


def _set_url(key: str, values: list[Any] | Any) -> None:
    text = ",".join(map(str, values)) if isinstance(values, list) else str(values or "")
    if text:
        if st.query_params.get(key) != text:
            st.query_params[key] = text
    elif key in st.query_params:
        del st.query_params[key]


def _state_from_url(key: str, url_key: str, options: list[Any], cast: Callable = str) -> None:
    """Seed a widget's state from the URL once per session, keeping only known options."""
    if key not in st.session_state:
        wanted = []
        for value in _url_values(url_key):
            try:
                wanted.append(cast(value))
            except ValueError:
                continue
        st.session_state[key] = [v for v in dict.fromkeys(wanted) if v in options]


# --- formatting -------------------------------------------------------------------------


def _bytes(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "–"
    for unit in ("B", "kB", "MB", "GB"):
        if abs(value) < 999.5:
            return f"{value:.3g} {unit}"
        value /= 1000
    return f"{value:,.0f} TB"


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _chart(chart: alt.Chart | None, empty: str) -> None:
    """Draw a chart in a bordered box, or say why there is none."""
    with st.container(border=True):
        if chart is None:
            st.caption(empty)
        else:
            st.altair_chart(chart, width="stretch")


def _has(series: pd.DataFrame, name: str, x: str = "step") -> bool:
    rows = series[series["name"] == name]
    return not rows.empty and rows[x].notna().any()


# --- the browser and comparison page ----------------------------------------------------


def browser_page(api_url: str) -> None:
    """Sidebar filters, the run table, and the comparison of the runs picked."""
    all_runs = data.fetch_runs(api_url)
    if all_runs.empty:
        st.info(
            f"**The run store at `{api_url}` holds no runs yet.** Train with "
            "`QuantizedDDPStrategy(..., report_to=URL)` or the `RunReporter` callback, or "
            "run `./run.sh demo` / `python -m benchmarks.sweep --api URL`; runs appear "
            f"here within {data.TTL_S} s.",
            icon=":material/inbox:",
        )
        return
    schemes = sorted(all_runs["scheme"].dropna().unique())
    filters = _sidebar_filters(all_runs)
    runs = data.fetch_runs(api_url, filters)

    st.subheader(f"Runs · {len(runs)} of {len(all_runs)}")
    if runs.empty:
        st.warning("No run matches the filters in the sidebar.", icon=":material/filter_alt:")
    else:
        _run_table(runs)

    st.subheader("Compare")
    labels = {
        int(r.id): frames.run_label(r.id, r.scheme, r.bits)
        + (" (running)" if r.status == "running" else "")
        for r in all_runs.itertuples(index=False)
    }
    _state_from_url("compare", "runs", list(labels), int)
    _drop_missing_from_url(api_url, labels)
    chosen = [i for i in st.session_state["compare"] if i in labels]
    options = list(dict.fromkeys([*map(int, runs["id"]), *chosen]))
    picked_col, baseline_col = st.columns([4, 1])
    with picked_col:
        ids = st.multiselect(
            "Runs to compare",
            options,
            format_func=lambda i: labels.get(i, f"#{i}"),
            key="compare",
            placeholder="Pick runs from the table above",
        )
    _set_url("runs", ids)
    if not ids:
        _set_url("baseline", None)
        st.info("Pick two or more runs to compare them, or open one from the table.")
        return
    with baseline_col:
        baseline = _baseline_picker(all_runs, ids, labels)
    _set_url("baseline", baseline)

    selected = all_runs[all_runs["id"].isin(ids)]
    running = bool((selected["status"] == "running").any())
    st.fragment(run_every=REFRESH_S if running else None)(_comparison)(
        api_url, tuple(ids), baseline, filters, schemes, running
    )


def _sidebar_filters(all_runs: pd.DataFrame) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """Filters in the sidebar, mirrored in the URL; returns them as ``fetch_runs`` takes
    them."""
    options: dict[str, list[Any]] = {
        "scheme": sorted(all_runs["scheme"].dropna().unique()),
        "bits": sorted(int(b) for b in all_runs["bits"].dropna().unique()),
        "collective": sorted(all_runs["collective"].dropna().unique()),
        "dataset": sorted(all_runs["dataset"].dropna().unique()),
        "model": sorted(all_runs["model_name"].dropna().unique()),
        "status": sorted(all_runs["status"].dropna().unique()),
        "tag": sorted({tag for tags in all_runs["tags"] for tag in (tags or [])}),
    }
    filters = []
    with st.sidebar:
        st.header("Filters")
        for field in data.FILTER_FIELDS:
            cast = int if field == "bits" else str
            _state_from_url(f"filter_{field}", field, options[field], cast)
            values = st.multiselect(
                FILTER_LABELS[field],
                options[field],
                key=f"filter_{field}",
                placeholder="any",
                disabled=not options[field],
            )
            _set_url(field, values)
            filters.append((field, tuple(map(str, values))))
    return tuple(filters)


def _run_table(runs: pd.DataFrame) -> None:
    table = frames.label_runs(runs)
    table["open"] = "?run=" + table["id"].astype(str)
    table["accuracy"] = table["final_accuracy"]
    table["sent_bytes"] = table["total_sent_bytes"]
    table["step_ms"] = table["mean_step_s"] * 1e3
    table["tags"] = table["tags"].map(lambda tags: ", ".join(tags or []))
    columns = [
        "id", "open", "name", "scheme", "bits", "collective", "status", "world_size",
        "dataset", "model_name", "accuracy", "final_loss", "compression_ratio", "sent_bytes",
        "step_ms", "tags", "created_at",
    ]  # fmt: skip
    st.dataframe(
        table[columns],
        hide_index=True,
        placeholder="–",
        height=min(38 + 35 * len(table), 320),
        column_config={
            "id": st.column_config.NumberColumn("id", format="%d", width="small"),
            "open": st.column_config.LinkColumn(
                "run page", display_text="open", width="small", help="This run's own page"
            ),
            "bits": st.column_config.NumberColumn("bits", format="%d", width="small"),
            "world_size": st.column_config.NumberColumn("ranks", format="%d", width="small"),
            "model_name": "model",
            "accuracy": st.column_config.NumberColumn("final accuracy", format="percent"),
            "final_loss": st.column_config.NumberColumn("final loss", format="%.3f"),
            "compression_ratio": st.column_config.NumberColumn(
                "compression", format="%.1fx", help="fp32 DDP's bytes sent / this run's"
            ),
            "sent_bytes": st.column_config.NumberColumn(
                "bytes sent", format="compact", help="per rank, over the whole run"
            ),
            "step_ms": st.column_config.NumberColumn("ms / step", format="%.1f"),
            "created_at": st.column_config.DatetimeColumn("created", format="YYYY-MM-DD HH:mm"),
        },
    )


def _drop_missing_from_url(api_url: str, labels: dict[int, str]) -> None:
    """Warn about runs in ``?runs=`` that the store does not hold."""
    if st.session_state.get("_checked_url"):
        return
    st.session_state["_checked_url"] = True
    for run_id in _url_ints("runs"):
        if run_id in labels:
            continue
        run = data.fetch_run(api_url, run_id)
        if run is None:
            st.warning(f"Run {run_id} from the link is not in the store; it is left out.")
        else:
            labels[run_id] = f"{frames.run_label(run_id, run['scheme'], run['bits'])}"
            st.session_state["compare"].append(run_id)


def _baseline_picker(all_runs: pd.DataFrame, ids: list[int], labels: dict[int, str]) -> int:
    """The run the ratios refer to: from the URL, else the first fp32 run, else the first."""
    schemes = dict(zip(all_runs["id"].astype(int), all_runs["scheme"], strict=True))
    default = next((i for i in ids if schemes.get(i) == "fp32"), ids[0])
    if st.session_state.get("baseline") not in ids:
        from_url = _url_ints("baseline")
        st.session_state["baseline"] = from_url[0] if from_url and from_url[0] in ids else default
    return int(
        st.selectbox(
            "Baseline",
            ids,
            format_func=lambda i: labels.get(i, f"#{i}"),
            key="baseline",
            help="Deltas on the cards are against this run",
        )
    )


def _comparison(
    api_url: str,
    ids: tuple[int, ...],
    baseline: int,
    filters: tuple[tuple[str, tuple[str, ...]], ...],
    schemes: list[str],
    was_running: bool,
) -> None:
    """Cards and charts for the runs compared; reruns itself while any is training."""
    with api_errors(api_url):
        summary = data.fetch_comparison(api_url, ids, baseline)
        running = bool((summary["status"] == "running").any())
        if was_running and not running:
            st.rerun()  # the last run finished: redraw the page once, without the timer
        metrics = pd.concat(
            [data.fetch_metrics(api_url, i, data.STEP_METRICS, MAX_POINTS) for i in ids],
            ignore_index=True,
        )
        series = frames.metric_series(metrics, summary)
        if running:
            st.caption(
                f":material/autorenew: A run is still training: refreshing every {REFRESH_S} s."
            )
        _summary_cards(summary)
        _comparison_charts(summary, series, data.fetch_runs(api_url, filters), schemes, api_url)


def _card(
    column: Any, label: str, value: str, run: str, change: str | None, *, lower_is_better: bool
) -> None:
    """A summary card: the figure, its change against the baseline, and whose it is."""
    column.metric(
        label,
        value,
        change or "baseline",
        delta_color=("inverse" if lower_is_better else "normal") if change else "off",
        delta_arrow="auto" if change else "off",
        delta_description=run,
        border=True,
    )


def _summary_cards(summary: pd.DataFrame) -> None:
    """Cards: the best of the compared runs on each figure, against the baseline."""
    table = frames.label_runs(summary)
    base = table[table["is_baseline"]].iloc[0]
    cards = st.columns(5)
    cards[0].metric(
        "Runs compared",
        len(table),
        base["run"],
        delta_color="off",
        delta_arrow="off",
        delta_description="baseline",
        border=True,
    )

    accuracy = table.dropna(subset=["final_accuracy"])
    if accuracy.empty:
        cards[1].metric("Best final accuracy", "–", border=True)
    else:
        best = accuracy.loc[accuracy["final_accuracy"].idxmax()]
        delta = None if best["is_baseline"] else _number(best["accuracy_delta"])
        _card(
            cards[1],
            "Best final accuracy",
            f"{best['final_accuracy']:.1%}",
            best["run"],
            f"{100 * delta:+.2f} pp" if delta is not None else None,
            lower_is_better=False,
        )

    sent = table.dropna(subset=["total_sent_bytes"])
    if sent.empty:
        cards[2].metric("Fewest bytes sent", "–", border=True)
    else:
        least = sent.loc[sent["total_sent_bytes"].astype("float64").idxmin()]
        ratio = None if least["is_baseline"] else _number(least["sent_bytes_ratio"])
        _card(
            cards[2],
            "Fewest bytes sent",
            _bytes(float(least["total_sent_bytes"])),
            least["run"],
            f"{ratio - 1:+.0%}" if ratio is not None else None,
            lower_is_better=True,
        )

    ratios = table.dropna(subset=["compression_ratio"])
    if ratios.empty:
        cards[3].metric("Top compression", "–", border=True)
    else:
        top = ratios.loc[ratios["compression_ratio"].idxmax()]
        base_ratio = _number(base["compression_ratio"])
        _card(
            cards[3],
            "Top compression",
            f"{top['compression_ratio']:.1f}x",
            top["run"],
            f"{top['compression_ratio'] / base_ratio:.1f}x"
            if base_ratio and not top["is_baseline"]
            else None,
            lower_is_better=False,
        )

    timed = table.dropna(subset=["mean_step_s"])
    if timed.empty:
        cards[4].metric("Fastest step", "–", border=True)
    else:
        fastest = timed.loc[timed["mean_step_s"].idxmin()]
        base_step = _number(base["mean_step_s"])
        change = (
            fastest["mean_step_s"] / base_step - 1
            if base_step and not fastest["is_baseline"]
            else None
        )
        _card(
            cards[4],
            "Fastest step",
            f"{1e3 * fastest['mean_step_s']:.1f} ms",
            fastest["run"],
            f"{change:+.0%}" if change is not None else None,
            lower_is_better=True,
        )


Box = tuple[alt.Chart | None, str]  # a chart, or why there is none


def _metric_box(series: pd.DataFrame, name: str, build: Callable[..., alt.Chart], empty: str,
                **options: Any) -> Box:  # fmt: skip
    x = options.get("x", "step")
    return (build(series, **options) if _has(series, name, x) else None, empty)


def _boxes(boxes: list[Box]) -> None:
    """Draw charts two to a row."""
    for start in range(0, len(boxes), 2):
        for column, (chart, empty) in zip(st.columns(2, gap="small"), boxes[start : start + 2],
                                          strict=False):  # fmt: skip
            with column:
                _chart(chart, empty)


def _comparison_charts(
    summary: pd.DataFrame,
    series: pd.DataFrame,
    runs: pd.DataFrame,
    schemes: list[str],
    api_url: str,
) -> None:
    total = frames.cumulative(series, "sent_bytes")
    phases = frames.phase_means(summary, series)
    points = frames.tradeoff(runs)
    dqsgd = series[series["scheme"] == "dqsgd"]
    predicted = frames.predictions(summary)
    on = {"schemes": schemes}
    boxes: list[Box] = [
        _metric_box(series, "loss", charts.loss_chart, "No loss points yet.", **on),
        _metric_box(
            series,
            "loss",
            charts.loss_chart,
            "No wall-clock times stored with the loss.",
            x="time_s",
            **on,
        ),  # fmt: skip
        _metric_box(
            series,
            "accuracy",
            charts.accuracy_chart,
            "No accuracy points yet (they come at validation).",
            **on,
        ),  # fmt: skip
        _metric_box(
            series,
            "accuracy",
            charts.accuracy_chart,
            "No accuracy points with wall-clock times yet.",
            x="time_s",
            **on,
        ),  # fmt: skip
        _metric_box(series, "sent_bytes", charts.sent_bytes_chart, "No sent bytes recorded.", **on),
        (
            charts.cumulative_bytes_chart(total, **on) if not total.empty else None,
            "No sent bytes recorded.",
        ),  # fmt: skip
        _metric_box(
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
            charts.bits_chart(dqsgd, **on).properties(title="DQ-SGD bits by step")
            if _has(dqsgd, "bits")
            else None,
            "DQ-SGD picks its bit width every step: add a dqsgd run to see it here.",
        ),  # fmt: skip
        (
            charts.prediction_chart(predicted, **on) if not predicted.empty else None,
            "No compared run has a predicted step time (the sweep's performance model).",
        ),  # fmt: skip
    ]
    _boxes(boxes)
    with st.container(border=True):
        st.markdown("**Side by side** (ratios against the baseline)")
        _side_by_side(summary)
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
    _boxes([(charts.scaling_chart(table, m, schemes=schemes), "") for m in charts.SCALING_MEASURES])


def _side_by_side(summary: pd.DataFrame) -> None:
    table = frames.label_runs(summary)
    table["open"] = "?run=" + table["id"].astype(str)
    table["step_ms"] = table["mean_step_s"] * 1e3
    table["predicted_ms"] = table["predicted_step_s"] * 1e3
    st.dataframe(
        table[
            [
                "run",
                "open",
                "status",
                "collective",
                "world_size",
                "final_accuracy",
                "accuracy_delta",
                "final_loss",
                "total_sent_bytes",
                "sent_bytes_ratio",
                "compression_ratio",
                "step_ms",
                "speedup",
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
            "world_size": st.column_config.NumberColumn("ranks", format="%d"),
            "total_sent_bytes": st.column_config.NumberColumn("bytes sent", format="compact"),
            "sent_bytes_ratio": st.column_config.NumberColumn("bytes ratio", format="%.3f"),
            "compression_ratio": st.column_config.NumberColumn(
                "compression", format="%.1fx", help="fp32 DDP's bytes sent / this run's"
            ),
            "step_ms": st.column_config.NumberColumn("ms / step", format="%.1f"),
            "speedup": st.column_config.NumberColumn("speedup", format="%.2fx"),
            "predicted_ms": st.column_config.NumberColumn("predicted ms", format="%.1f"),
            "prediction_error": st.column_config.NumberColumn("model error", format="percent"),
        },
    )


# --- one run ----------------------------------------------------------------------------


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
            _run_charts(series)
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
    cards[3].metric("Bytes sent", _bytes(figures["total_sent_bytes"]), border=True)
    cards[4].metric(
        "Mean step",
        f"{1e3 * step:.1f} ms" if step is not None else "–",
        f"{1e3 * predicted:.1f} ms predicted" if predicted is not None else None,
        delta_color="off",
        delta_arrow="off",
        border=True,
    )
    cards[5].metric("Steps", f"{steps:,.0f}" if steps is not None else "–", border=True)


def _run_charts(series: pd.DataFrame) -> None:
    if series.empty:
        st.info("This run has no metrics yet.")
        return
    total = frames.cumulative(series, "sent_bytes")
    phases = frames.step_phases(series)
    boxes: list[Box] = [
        _metric_box(series, name, build, f"No {name} recorded.")
        for name, build in (
            ("loss", charts.loss_chart),
            ("accuracy", charts.accuracy_chart),
            ("sent_bytes", charts.sent_bytes_chart),
        )
    ]
    boxes += [
        (charts.cumulative_bytes_chart(total) if not total.empty else None, "No sent bytes."),
        _metric_box(
            series, "compression_ratio", charts.compression_chart, "No compression_ratio recorded."
        ),  # fmt: skip
        _metric_box(series, "bits", charts.bits_chart, "No bits recorded."),
        (charts.step_phases_chart(phases) if not phases.empty else None, "No step times."),
    ]
    _boxes(boxes)
    others = sorted(set(series["name"]) - set(data.STEP_METRICS))
    if others:
        name = st.selectbox("Other metrics", others)
        _chart(charts.metric_chart(series, name), "")


def _run_config(run: dict[str, Any]) -> None:
    setup_keys = [
        "id", "name", "status", "scheme", "bits", "collective", "bucket_size", "world_size",
        "num_nodes",
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
