"""The run browser: sidebar filters, the run table, and the comparison's cards."""

from typing import Any

import pandas as pd
import streamlit as st

from dashboard import data, frames
from dashboard.comparison import comparison_charts
from dashboard.widgets import (
    MAX_POINTS,
    REFRESH_S,
    api_errors,
    format_bytes,
    number,
    set_url,
    state_from_url,
    url_ints,
)

__all__ = ["browser_page"]

FILTER_LABELS = {
    "scheme": "Scheme",
    "bits": "Bits",
    "coding": "Coding",
    "collective": "Collective",
    "topology": "Topology (nodes x ranks)",
    "dataset": "Dataset",
    "model": "Model",
    "status": "Status",
    "tag": "Tag",
}


def browser_page(api_url: str) -> None:
    """Sidebar filters, the run table, and the comparison of the runs picked."""
    all_runs = data.fetch_runs(api_url)
    if all_runs.empty:
        st.info(
            f"**The run store at `{api_url}` holds no runs yet.** Train with "
            "`QuantizedDDPStrategy(..., report_to=URL)`, or add "
            "`lightning_quant.runstore.RunStoreLogger(URL)` to your Trainer's loggers, or "
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
    state_from_url("compare", "runs", list(labels), int)
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
    set_url("runs", ids)
    if not ids:
        set_url("baseline", None)
        st.info("Pick two or more runs to compare them, or open one from the table.")
        return
    with baseline_col:
        baseline = _baseline_picker(all_runs, ids, labels)
    set_url("baseline", baseline)

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
        "coding": sorted(all_runs["coding"].dropna().unique()),
        "collective": sorted(all_runs["collective"].dropna().unique()),
        "topology": sorted(all_runs["topology"].dropna().unique()),
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
            state_from_url(f"filter_{field}", field, options[field], cast)
            values = st.multiselect(
                FILTER_LABELS[field],
                options[field],
                key=f"filter_{field}",
                placeholder="any",
                disabled=not options[field],
            )
            set_url(field, values)
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
        "id", "open", "name", "scheme", "bits", "coding", "collective", "status", "world_size",
        "topology", "dataset", "model_name", "accuracy", "final_loss", "compression_ratio",
        "sent_bytes", "step_ms", "mean_rel_error", "tags", "created_at",
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
            "mean_rel_error": st.column_config.NumberColumn(
                "error", format="%.3g", help="mean over steps of ||m^ - m||² / ||m||²"
            ),
            "created_at": st.column_config.DatetimeColumn("created", format="YYYY-MM-DD HH:mm"),
        },
    )


def _drop_missing_from_url(api_url: str, labels: dict[int, str]) -> None:
    """Warn about runs in ``?runs=`` that the store does not hold."""
    if st.session_state.get("_checked_url"):
        return
    st.session_state["_checked_url"] = True
    for run_id in url_ints("runs"):
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
        from_url = url_ints("baseline")
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
            [data.fetch_metrics(api_url, i, (), MAX_POINTS) for i in ids],
            ignore_index=True,
        )
        series = frames.metric_series(metrics, summary)
        if running:
            st.caption(
                f":material/autorenew: A run is still training: refreshing every {REFRESH_S} s."
            )
        _summary_cards(summary)
        comparison_charts(summary, series, data.fetch_runs(api_url, filters), schemes, api_url)


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
    table["time_to_target_s"] = [
        number((extra or {}).get("time_to_target_s")) for extra in table["summary"]
    ]
    base = table[table["is_baseline"]].iloc[0]
    cards = st.columns(6)
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
        delta = None if best["is_baseline"] else number(best["accuracy_delta"])
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
        ratio = None if least["is_baseline"] else number(least["sent_bytes_ratio"])
        _card(
            cards[2],
            "Fewest bytes sent",
            format_bytes(float(least["total_sent_bytes"])),
            least["run"],
            f"{ratio - 1:+.0%}" if ratio is not None else None,
            lower_is_better=True,
        )

    ratios = table.dropna(subset=["compression_ratio"])
    if ratios.empty:
        cards[3].metric("Top compression", "–", border=True)
    else:
        top = ratios.loc[ratios["compression_ratio"].idxmax()]
        base_ratio = number(base["compression_ratio"])
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
        base_step = number(base["mean_step_s"])
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

    reached = table.dropna(subset=["time_to_target_s"])
    if reached.empty:
        cards[5].metric(
            "Fastest to target",
            "–",
            help="Training time to the target validation metric (fp32 DDP's final value, "
            "or the sweep's --target); sweeps with --val-every record it",
            border=True,
        )
    else:
        first = reached.loc[reached["time_to_target_s"].idxmin()]
        base_time = number(base["time_to_target_s"])
        change = (
            first["time_to_target_s"] / base_time - 1
            if base_time and not first["is_baseline"]
            else None
        )
        _card(
            cards[5],
            "Fastest to target",
            f"{first['time_to_target_s']:.1f} s",
            first["run"],
            f"{change:+.0%}" if change is not None else None,
            lower_is_better=True,
        )
