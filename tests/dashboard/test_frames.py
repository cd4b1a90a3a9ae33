"""The dashboard's data shaping and charts, on frames shaped as the API returns them."""

import itertools

import pandas as pd
import pytest

from dashboard import charts, data, error_charts, frames, scale_charts
from tests.utils.factories import REPORTER_METRIC_NAMES, metric_points, run_payload

pytestmark = pytest.mark.timeout(60)


def _runs(*specs: tuple[int, str, int | None, str]) -> pd.DataFrame:
    rows = []
    for run_id, scheme, bits, status in specs:
        rows.append({"id": run_id, **run_payload(scheme, bits=bits, status=status, steps=50)})
    return pd.DataFrame(rows)


def _metrics(run_id: int, scheme: str, steps: int = 50, **kwargs: object) -> pd.DataFrame:
    """What ``data.fetch_metrics`` returns for a run seeded by the factories."""
    points = metric_points(scheme, steps=steps, names=REPORTER_METRIC_NAMES, **kwargs)
    return pd.DataFrame(
        [
            {"run_id": run_id, "step": p["step"], "epoch": p["epoch"],
             "wall_time": p["wall_time"], "name": name, "value": value}
            for p in points
            for name, value in p["values"].items()
        ]
    )  # fmt: skip


@pytest.fixture
def series() -> pd.DataFrame:
    runs = _runs((1, "fp32", None, "finished"), (2, "qsgd", 4, "finished"))
    metrics = pd.concat([_metrics(1, "fp32"), _metrics(2, "qsgd")], ignore_index=True)
    return frames.metric_series(metrics, runs)


def test_api_url_comes_from_the_command_line_then_the_environment():
    env = {"LQ_API_URL": "http://env:1/"}
    assert data.resolve_api_url(["--api-url", "http://cli:2/api/v1"], env) == "http://cli:2"
    assert data.resolve_api_url(["--api-url=http://cli:3"], env) == "http://cli:3"
    assert data.resolve_api_url(["-x", "tests/dashboard", "--api"], env) == "http://env:1"
    assert data.resolve_api_url([], {}) == data.DEFAULT_API_URL


def test_logged_names_are_read_under_the_charts_names():
    assert frames.chart_name("comm/sent_bytes") == "sent_bytes"
    assert frames.chart_name("train_loss") == "loss" and frames.chart_name("val_acc") == "accuracy"
    assert frames.chart_name("lr") == "lr"
    metrics = pd.DataFrame(
        {"run_id": [1, 1, 1], "step": [0, 0, 1], "wall_time": [0.0, 0.0, 1.0],
         "name": ["train_loss", "loss", "comm/sent_bytes"], "value": [2.0, 3.0, 10.0]}
    )  # fmt: skip
    series = frames.metric_series(metrics, _runs((1, "qsgd", 4, "running")))
    assert sorted(zip(series["name"], series["value"], strict=True)) == [
        ("loss", 2.0), ("sent_bytes", 10.0)
    ]  # fmt: skip


def test_series_are_labelled_and_timed_from_each_runs_first_point(series):
    assert list(series.columns) == frames.SERIES_COLUMNS
    assert set(series["run"]) == {"#1 fp32 32-bit", "#2 qsgd 4-bit"}
    loss = series[(series["name"] == "loss") & (series["run_id"] == 2)]
    assert loss["time_s"].iloc[0] == 0.0
    assert loss["time_s"].is_monotonic_increasing
    assert frames.run_label(3, "fp32") == "#3 fp32"


def test_cumulative_bytes_are_exact_and_survive_thinning(series):
    total = frames.cumulative(series, "sent_bytes")
    wire = series[(series["name"] == "sent_bytes")]
    for run_id, rows in total.groupby("run_id"):
        assert rows["value"].iloc[-1] == pytest.approx(wire[wire.run_id == run_id].value.sum())
    # every 7th step kept, as the API's downsampling would: the total stays right
    thinned = series[(series["step"] % 7 == 0) | (series["step"] == 49)]
    thin_total = frames.cumulative(thinned, "sent_bytes").groupby("run_id")["value"].last()
    full_total = total.groupby("run_id")["value"].last()
    assert (thin_total / full_total).between(0.97, 1.03).all()


def test_step_phases_add_up_to_the_step_and_never_go_negative(series):
    phases = frames.step_phases(series)
    assert set(phases["phase"]) == set(frames.PHASES)
    sums = phases.groupby(["run_id", "step"])["seconds"].sum()
    step_s = series[series["name"] == "step_s"].set_index(["run_id", "step"])["value"]
    assert sums.to_numpy() == pytest.approx(step_s.loc[sums.index].to_numpy())
    # a step reported shorter than its parts: compute is floored at 0
    odd = series.copy()
    odd.loc[odd["name"] == "step_s", "value"] = 0.0
    assert (frames.step_phases(odd)["seconds"] >= 0).all()
    assert frames.step_phases(odd).query("phase == 'compute'")["seconds"].max() == 0.0


def test_phase_means_use_the_summary_or_the_metrics_of_a_running_run(series):
    runs = _runs((1, "fp32", None, "finished"), (2, "qsgd", 4, "running"))
    means = frames.phase_means(runs, series)
    assert set(means["run_id"]) == {1, 2}
    finished = means[means["run_id"] == 1].set_index("phase")["seconds"]
    assert finished.sum() == pytest.approx(runs.loc[0, "mean_step_s"])
    running = means[means["run_id"] == 2].set_index("phase")["seconds"]
    step_s = series.query("run_id == 2 and name == 'step_s'")["value"].mean()
    assert running.sum() == pytest.approx(step_s)
    assert means.groupby("run_id")["share"].sum().to_numpy() == pytest.approx([1.0, 1.0])


def test_the_pareto_front_is_exactly_the_undominated_runs():
    frame = pd.DataFrame(
        {
            "bytes": [10, 20, 20, 30, 5, 40, None],
            "accuracy": [0.80, 0.90, 0.85, 0.88, 0.70, 0.95, 0.99],
        }
    )
    front = frames.pareto_front(frame, "bytes", "accuracy")
    assert front.tolist() == [True, True, False, False, True, True, False]
    for i, j in itertools.permutations(frame.dropna().index, 2):
        a, b = frame.loc[i], frame.loc[j]
        if front[i] and b.bytes <= a.bytes and b.accuracy >= a.accuracy:
            assert (b.bytes, b.accuracy) == (a.bytes, a.accuracy)  # nothing beats a front run


def test_running_runs_get_their_figures_from_their_metrics(series):
    (run,) = _runs((2, "qsgd", 4, "running")).to_dict("records")
    figures = frames.run_figures(run, series[series["run_id"] == 2])
    assert figures["steps"] == 50
    assert figures["compression_ratio"] == pytest.approx(1 / (4 / 32 + 1 / 512))
    (done,) = _runs((1, "fp32", None, "finished")).to_dict("records")
    assert frames.run_figures(done, series)["final_loss"] == done["final_loss"]


def _fields(spec: dict) -> list[tuple[str, str]]:
    """Every (field, type) encoded anywhere in a chart's Vega-Lite spec."""
    found = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            if "field" in node and "type" in node:
                found.append((node["field"], node["type"]))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(spec)
    return found


def test_every_chart_is_typed_has_tooltips_and_a_scheme_legend(series):
    runs = _runs(
        (1, "fp32", None, "finished"), (2, "qsgd", 4, "finished"), (3, "qsgd", 2, "finished")
    )
    schemes = ["fp32", "qsgd", "dqsgd"]
    built = {
        "loss": charts.loss_chart(series, schemes=schemes),
        "loss_time": charts.loss_chart(series, x="time_s", schemes=schemes),
        "accuracy": charts.accuracy_chart(series, schemes=schemes),
        "sent": charts.sent_bytes_chart(series, schemes=schemes),
        "cumulative": charts.cumulative_bytes_chart(frames.cumulative(series), schemes=schemes),
        "ratio": charts.compression_chart(series, schemes=schemes),
        "bits": charts.bits_chart(series, schemes=schemes),
        "phases": charts.phase_chart(frames.phase_means(runs, series)),
        "step_phases": charts.step_phases_chart(frames.step_phases(series)),
        "tradeoff": charts.tradeoff_chart(frames.tradeoff(runs), schemes=schemes),
        "prediction": charts.prediction_chart(frames.predictions(runs), schemes=schemes),
        "scaling": scale_charts.scaling_chart(frames.scaling(runs), "sent_bytes", schemes=schemes),
    }
    for name, chart in built.items():
        spec = chart.to_dict()  # validates against the Vega-Lite schema
        fields = _fields(spec)
        assert fields and all(kind in {"quantitative", "nominal", "ordinal"} for _, kind in fields)
        assert "tooltip" in str(spec), name
        if name not in ("phases", "step_phases"):  # those are coloured by phase
            assert ("scheme", "nominal") in fields, name
            colors = [e["color"] for e in _encodings(spec) if "color" in e]
            for color in colors:  # every scheme of the page keeps its colour in every chart
                assert color["scale"] == {"domain": schemes, "scheme": "tableau10"}, name
                shown = color["legend"]["values"]  # the legend lists only the schemes drawn
                assert "fp32" in shown and "dqsgd" not in shown, name


def _encodings(spec: dict) -> list[dict]:
    layers = spec.get("layer", [spec])
    return [layer["encoding"] for layer in layers if "encoding" in layer]


def test_scaling_is_the_median_per_scheme_collective_and_world_size():
    rows = []
    for run_id, (collective, world, sent) in enumerate(
        [("allgather", 2, 100), ("allgather", 4, 300), ("allgather", 8, 700),
         ("reduce_scatter", 4, 150), ("reduce_scatter", 4, 160), ("reduce_scatter", 8, 175)]
    ):  # fmt: skip
        run = run_payload("qsgd", bits=4, steps=10, world_size=world, collective=collective)
        rows.append({**run, "id": run_id, "total_sent_bytes": sent * 10})
    rows.append({**run_payload("qsgd", status="running", world_size=16), "id": 99})
    table = frames.scaling(pd.DataFrame(rows))
    got = {(r.collective, r.world_size): (r.sent_bytes, r.runs) for r in table.itertuples()}
    assert got == {
        ("allgather", 2): (100, 1),
        ("allgather", 4): (300, 1),
        ("allgather", 8): (700, 1),
        ("reduce_scatter", 4): (155, 2),
        ("reduce_scatter", 8): (175, 1),
    }  # fmt: skip  (the running run has no figures yet)
    assert set(table["line"]) == {"qsgd 4-bit allgather", "qsgd 4-bit reduce_scatter"}
    fields = _fields(scale_charts.scaling_chart(table, "step_ms").to_dict())
    assert ("world_size", "quantitative") in fields and ("collective", "nominal") in fields


@pytest.mark.parametrize(
    ("values", "expected"), [([0.5, 0.9], ".0%"), ([0.95, 0.97], ".1%"), ([0.971, 0.975], ".2%")]
)
def test_accuracy_ticks_have_enough_decimals_to_differ(values, expected):
    assert charts.percent_format(pd.Series(values)) == expected


def test_an_auto_runs_choices_become_a_timeline_beside_its_bandwidth() -> None:
    runs = _runs((7, "auto", 32, "finished"))
    candidates = ["fp32", "fp16", "qsgd-4-entropy"]
    rows = [
        {"run_id": 7, "step": step, "epoch": 0, "wall_time": float(step), "name": name, "value": v}
        for step in range(6)
        for name, v in (
            ("comm/choice/0", 0.0 if step < 3 else 2.0),
            ("comm/choice/1", 1.0),
            ("comm/link_bytes_per_s", 12.5e6),
            ("comm/rel_error", 0.1 * (step + 1)),
        )
    ]  # fmt: skip
    series = frames.metric_series(pd.DataFrame(rows), runs)
    timeline = error_charts.timeline(series, candidates)
    assert len(timeline) == 12 and set(timeline["bucket"]) == {0, 1}
    first = timeline[timeline["bucket"] == 0].sort_values("step")["configuration"].tolist()
    assert first == ["fp32"] * 3 + ["qsgd-4-entropy"] * 3
    chart = error_charts.choice_timeline(timeline, series).to_dict()
    assert len(chart["vconcat"]) == 2
    unfitted = series[series["name"] != "link_bytes_per_s"]  # no link fitted: the grid alone
    assert "vconcat" not in error_charts.choice_timeline(timeline, unfitted).to_dict()
    assert error_charts.error_chart(series).to_dict()["layer"]


def test_the_variance_bytes_frontier_reads_stored_runs() -> None:
    runs = _runs((1, "qsgd", 4, "finished"), (2, "fp32", None, "finished"))
    runs["mean_rel_variance"] = [0.09, 0.0]
    runs["total_raw_bytes"] = [4_000_000, 4_000_000]
    runs["total_payload_bytes"] = [137_000, 4_000_000]
    points = error_charts.frontier(frames.label_runs(runs))
    assert list(points["id"]) == [1]  # fp32 measured no variance
    assert points["wire_bits"].iloc[0] == pytest.approx(8 * 137_000 / 1_000_000)
    assert error_charts.frontier_chart(points).to_dict()["mark"]["type"] == "point"
