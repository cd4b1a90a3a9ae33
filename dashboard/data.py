"""Read the run store's REST API into DataFrames, cached for a few seconds.

The dashboard's only way to the data: every function here is an HTTP GET against
``<api_url>/api/v1/...``, wrapped in ``st.cache_data(ttl=...)`` so a rerun of the script
(each widget change) costs no request, while a run that is still training shows new
steps within ``TTL_S``. Errors are raised as ``ApiError`` (the API answered with an
error) or ``ApiUnreachable`` (no answer at all); neither is cached, so a retry asks again.
"""

import argparse
import os
from collections.abc import Mapping, Sequence
from typing import Any

import httpx
import pandas as pd
import streamlit as st

__all__ = [
    "API_PREFIX",
    "DEFAULT_API_URL",
    "FILTER_FIELDS",
    "MAX_RUNS",
    "TTL_S",
    "ApiError",
    "ApiUnreachable",
    "fetch_comparison",
    "fetch_metrics",
    "fetch_metrics_csv",
    "fetch_run",
    "fetch_runs",
    "read_token",
    "resolve_api_url",
]

DEFAULT_API_URL = "http://127.0.0.1:8000"
API_PREFIX = "/api/v1"
TTL_S = 5  # seconds a cached answer is reused; running runs refresh at about this pace
TIMEOUT_S = 5.0
PAGE_SIZE = 1000  # the API's largest page
MAX_RUNS = 5000  # the most runs the browser lists
# The run list's filters: query parameter of the API (and of the dashboard's URL).
FILTER_FIELDS = (
    "scheme", "bits", "coding", "collective", "topology", "dataset", "model", "status", "tag",
)  # fmt: skip

RUN_COLUMNS = (
    "id", "name", "scheme", "bits", "coding", "collective", "status", "world_size", "num_nodes",
    "topology", "hierarchical", "dataset", "model_name", "tags", "final_loss",
    "final_accuracy", "total_raw_bytes", "total_payload_bytes", "total_sent_bytes",
    "total_inter_node_bytes", "total_fallbacks", "compression_ratio", "mean_step_s",
    "mean_encode_s", "mean_communicate_s", "mean_decode_s", "mean_rel_error",
    "mean_rel_variance", "predicted_step_s", "steps", "wall_s", "created_at",
    "finished_at",
)  # fmt: skip
METRIC_COLUMNS = ("run_id", "step", "epoch", "wall_time", "name", "value")


class ApiError(RuntimeError):
    """The run store answered a request with an error (``status``: its HTTP status)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class ApiUnreachable(ApiError):
    """The run store did not answer at all (refused, timed out, bad address)."""


def resolve_api_url(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
) -> str:
    """Return the API's base URL: ``--api-url`` after ``--``, else ``LQ_API_URL``, else
    ``DEFAULT_API_URL``; a trailing ``/`` or ``/api/v1`` is dropped.

    Example::

        streamlit run dashboard/app.py -- --api-url http://10.0.0.5:8000
    """
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--api-url", default=None)
    args, _ = parser.parse_known_args(argv)
    environ = os.environ if environ is None else environ
    url = (args.api_url or environ.get("LQ_API_URL") or DEFAULT_API_URL).strip().rstrip("/")
    return url.removesuffix(API_PREFIX)


def read_token(environ: Mapping[str, str] | None = None) -> str | None:
    """Return the token reads send: ``LQ_API_READ_TOKEN``, else ``LQ_API_TOKEN`` (a store
    that sets a read token accepts either), else none."""
    environ = os.environ if environ is None else environ
    return environ.get("LQ_API_READ_TOKEN") or environ.get("LQ_API_TOKEN") or None


@st.cache_resource
def _client(api_url: str, token: str | None) -> httpx.Client:
    """One pooled HTTP client per API and token, shared by every session of this server."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=api_url + API_PREFIX, timeout=TIMEOUT_S, headers=headers)


def _get(api_url: str, path: str, params: Mapping[str, Any] | None = None) -> httpx.Response:
    try:
        response = _client(api_url, read_token()).get(path, params=params)
    except httpx.InvalidURL as error:
        raise ApiUnreachable(f"{api_url!r} is not a valid URL ({error})") from None
    except httpx.TransportError as error:
        reason = str(error) or type(error).__name__
        raise ApiUnreachable(f"no answer from {api_url} ({reason})") from None
    if response.status_code >= 400:
        try:
            detail = response.json().get("detail", response.text)
        except (ValueError, AttributeError):
            detail = response.text
        raise ApiError(
            f"GET {path} failed with {response.status_code}: {str(detail)[:300]}",
            status=response.status_code,
        )
    return response


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        raise ApiError(f"{response.url} did not answer with JSON; is it the run store?") from None


@st.cache_data(ttl=TTL_S, show_spinner=False)
def fetch_runs(
    api_url: str,
    filters: tuple[tuple[str, tuple[str, ...]], ...] = (),
    sort: str = "created_at",
    order: str = "desc",
) -> pd.DataFrame:
    """Return the runs matching ``filters`` (``(("scheme", ("qsgd", "fp32")), ...)``), one
    row per run with every field of ``RunPublic``, at most ``MAX_RUNS`` of them."""
    params: dict[str, Any] = {key: ",".join(values) for key, values in filters if values}
    params |= {"sort": sort, "order": order, "limit": PAGE_SIZE}
    rows: list[dict[str, Any]] = []
    while len(rows) < MAX_RUNS:
        page = _json(_get(api_url, "/runs", {**params, "offset": len(rows)}))
        rows.extend(page["data"])
        if not page["data"] or len(rows) >= page["count"]:
            break
    return _runs_frame(rows)


@st.cache_data(ttl=TTL_S, show_spinner=False)
def fetch_run(api_url: str, run_id: int) -> dict[str, Any] | None:
    """Return one run's full record (setup, configuration, summary), or None if missing."""
    try:
        return _json(_get(api_url, f"/runs/{int(run_id)}"))
    except ApiError as error:
        if error.status == 404:
            return None
        raise


@st.cache_data(ttl=TTL_S, show_spinner=False)
def fetch_comparison(
    api_url: str, ids: tuple[int, ...], baseline: int | None = None
) -> pd.DataFrame:
    """Return ``/runs/compare``: one row per run in the order of ``ids``, with the ratios
    to the baseline (``speedup``, ``sent_bytes_ratio``, ``accuracy_delta``...)."""
    params: dict[str, Any] = {"ids": ",".join(map(str, ids))}
    if baseline is not None:
        params["baseline"] = baseline
    answer = _json(_get(api_url, "/runs/compare", params))
    frame = pd.DataFrame(answer["data"])
    frame["is_baseline"] = frame["id"] == answer["baseline_id"]
    return frame


@st.cache_data(ttl=TTL_S, show_spinner=False)
def fetch_metrics(
    api_url: str, run_id: int, names: tuple[str, ...] = (), max_points: int = 1000
) -> pd.DataFrame:
    """Return a run's metrics in long format (``run_id, step, epoch, wall_time, name,
    value``), each name downsampled by the API to at most ``max_points`` points."""
    params: dict[str, Any] = {"max_points": max_points}
    if names:
        params["names"] = ",".join(names)
    answer = _json(_get(api_url, f"/runs/{int(run_id)}/metrics", params))
    frame = pd.DataFrame(answer["data"], columns=list(METRIC_COLUMNS[1:]))
    frame.insert(0, "run_id", int(run_id))
    return frame.astype(
        {"step": "int64", "epoch": "Int64", "wall_time": "float64", "value": "float64"}
    )


@st.cache_data(ttl=TTL_S, show_spinner=False)
def fetch_metrics_csv(api_url: str, run_id: int) -> bytes:
    """Return the API's CSV export of all of a run's metric points (not downsampled)."""
    return _get(api_url, f"/runs/{int(run_id)}/metrics/export.csv").content


def _runs_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    frame = pd.DataFrame(rows)
    for column in RUN_COLUMNS:
        if column not in frame:
            frame[column] = None
    if frame.empty:
        return frame
    for column in ("created_at", "finished_at"):
        frame[column] = pd.to_datetime(frame[column], utc=True, errors="coerce", format="ISO8601")
    frame["bits"] = frame["bits"].astype("Int64")
    return frame
