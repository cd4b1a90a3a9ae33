"""What every page of the dashboard shares: errors, the URL, formats, chart boxes."""

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import altair as alt
import pandas as pd
import streamlit as st

from dashboard import data

__all__ = [
    "MAX_POINTS",
    "REFRESH_S",
    "STATUS_COLORS",
    "Box",
    "api_errors",
    "draw_boxes",
    "draw_chart",
    "format_bytes",
    "has_metric",
    "metric_box",
    "number",
    "set_url",
    "state_from_url",
    "url_ints",
    "url_values",
]

REFRESH_S = 5  # how often a view with a running run reloads its data
MAX_POINTS = 500  # points per metric and run asked of the API (a chart is ~500 px)
STATUS_COLORS = {"running": "blue", "finished": "green", "failed": "red"}


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


def url_values(key: str) -> list[str]:
    """A query parameter's values, repeated (``?a=1&a=2``) or comma-separated."""
    return [part.strip() for v in st.query_params.get_all(key) for part in v.split(",") if part]


def url_ints(key: str) -> list[int]:
    return [int(v) for v in url_values(key) if v.isdigit()]


def set_url(key: str, values: list[Any] | Any) -> None:
    text = ",".join(map(str, values)) if isinstance(values, list) else str(values or "")
    if text:
        if st.query_params.get(key) != text:
            st.query_params[key] = text
    elif key in st.query_params:
        del st.query_params[key]


def state_from_url(key: str, url_key: str, options: list[Any], cast: Callable = str) -> None:
    """Seed a widget's state from the URL once per session, keeping only known options."""
    if key not in st.session_state:
        wanted = []
        for value in url_values(url_key):
            try:
                wanted.append(cast(value))
            except ValueError:
                continue
        st.session_state[key] = [v for v in dict.fromkeys(wanted) if v in options]


# --- formatting -------------------------------------------------------------------------


def format_bytes(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "–"
    for unit in ("B", "kB", "MB", "GB"):
        if abs(value) < 999.5:
            return f"{value:.3g} {unit}"
        value /= 1000
    return f"{value:,.0f} TB"


def number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def draw_chart(chart: alt.Chart | None, empty: str) -> None:
    """Draw a chart in a bordered box, or say why there is none."""
    with st.container(border=True):
        if chart is None:
            st.caption(empty)
        else:
            st.altair_chart(chart, width="stretch")


def has_metric(series: pd.DataFrame, name: str, x: str = "step") -> bool:
    rows = series[series["name"] == name]
    return not rows.empty and rows[x].notna().any()


Box = tuple[alt.Chart | None, str]  # a chart, or why there is none


def metric_box(series: pd.DataFrame, name: str, build: Callable[..., alt.Chart], empty: str,
                **options: Any) -> Box:  # fmt: skip
    x = options.get("x", "step")
    return (build(series, **options) if has_metric(series, name, x) else None, empty)


def draw_boxes(boxes: list[Box]) -> None:
    """Draw charts two to a row."""
    for start in range(0, len(boxes), 2):
        for column, (chart, empty) in zip(st.columns(2, gap="small"), boxes[start : start + 2],
                                          strict=False):  # fmt: skip
            with column:
                draw_chart(chart, empty)
