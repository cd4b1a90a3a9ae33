"""The Streamlit app, run by ``AppTest`` against a real API server."""

import importlib
import re
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from tests.dashboard.conftest import SEEDED
from tests.utils.api_server import free_port, running_api_server
from tests.utils.factories import SCHEMES, seed_runs

pytestmark = pytest.mark.timeout(120)

APP = str(Path(__file__).resolve().parents[2] / "dashboard" / "app.py")
CHART = "vega_lite_chart"  # what AppTest calls st.altair_chart's element in Streamlit 1.67
RUNNING_ID = len(SEEDED) + 1


def _app(api_url: str, monkeypatch: pytest.MonkeyPatch, **query: str) -> AppTest:
    monkeypatch.setenv("LQ_API_URL", api_url)
    at = AppTest.from_file(APP, default_timeout=60)
    for key, value in query.items():
        at.query_params[key] = value
    return at.run()


def _texts(at: AppTest, kind: str) -> str:
    return "\n".join(str(element.value) for element in getattr(at, kind))


def test_the_browser_lists_every_run_and_asks_for_a_selection(seeded_api, monkeypatch):
    at = _app(seeded_api.base_url, monkeypatch)
    assert not at.exception
    (table,) = at.dataframe
    assert sorted(table.value["id"]) == list(range(1, RUNNING_ID + 1))
    assert set(table.value["open"]) == {f"?run={i}" for i in range(1, RUNNING_ID + 1)}
    labels = {widget.label for widget in at.multiselect}
    assert {"Scheme", "Bits", "Dataset", "Model", "Status", "Tag", "Runs to compare"} <= labels
    assert "Pick two or more runs" in _texts(at, "info")
    assert not at.get(CHART)


def test_a_comparison_from_the_url_draws_every_chart_and_the_cards(seeded_api, monkeypatch):
    at = _app(seeded_api.base_url, monkeypatch, runs="1,2,4")
    assert not at.exception and not at.error
    assert at.multiselect(key="compare").value == [1, 2, 4]
    assert at.selectbox(key="baseline").value == 1  # the fp32 run
    cards = {metric.label: metric for metric in at.metric}
    assert list(cards) == [
        "Runs compared", "Best final accuracy", "Fewest bytes sent", "Top compression",
        "Fastest step", "Fastest to target",
    ]  # fmt: skip
    assert cards["Runs compared"].value == "3"
    assert cards["Fewest bytes sent"].delta.startswith("-")  # 4-bit qsgd against fp32
    assert cards["Fastest to target"].value.endswith(" s")
    assert cards["Fastest to target"].delta.startswith("-")  # quantized runs get there first
    # loss and accuracy by step and by time, bytes per step and cumulative, compression,
    # phases, Pareto, DQ-SGD bits, measured vs predicted, bytes inside and between nodes
    assert len(at.get(CHART)) == 12
    assert dict(at.query_params) == {"runs": "1,2,4", "baseline": "1"}


def test_picking_runs_in_the_multiselect_updates_the_url(seeded_api, monkeypatch):
    at = _app(seeded_api.base_url, monkeypatch)
    at.multiselect(key="compare").set_value([2, 6]).run()
    assert not at.exception
    assert at.query_params["runs"] == "2,6"
    assert at.query_params["baseline"] == "2"  # no fp32 run among them: the first
    assert len(at.get(CHART)) == 11  # no run whose width moves: that chart says so instead
    assert "kept one width" in _texts(at, "caption")
    at.selectbox(key="baseline").set_value(6).run()
    assert at.query_params["baseline"] == "6"


def test_filters_come_from_the_url_and_go_to_the_api(seeded_api, monkeypatch):
    at = _app(seeded_api.base_url, monkeypatch, scheme="qsgd,nosuch", bits="2")
    assert not at.exception
    assert at.multiselect(key="filter_scheme").value == ["qsgd"]
    assert at.multiselect(key="filter_bits").value == [2]
    (table,) = at.dataframe
    assert table.value[["scheme", "bits"]].values.tolist() == [["qsgd", 2]]
    at.multiselect(key="filter_bits").set_value([]).run()
    assert sorted(at.dataframe[0].value["bits"]) == [2, 4]
    assert at.query_params["scheme"] == "qsgd" and "bits" not in at.query_params


def test_a_running_run_refreshes_itself(seeded_api, monkeypatch):
    at = _app(seeded_api.base_url, monkeypatch, runs=f"1,{RUNNING_ID}")
    assert not at.exception and not at.error
    assert "refreshing every" in _texts(at, "caption")
    assert len(at.get(CHART)) >= 9


def test_a_link_to_missing_runs_keeps_the_others(seeded_api, monkeypatch):
    at = _app(seeded_api.base_url, monkeypatch, runs="2,999,x")
    assert not at.exception
    assert "Run 999" in _texts(at, "warning")
    assert at.multiselect(key="compare").value == [2]
    assert at.query_params["runs"] == "2"


def test_the_run_page_shows_configuration_charts_and_the_csv(seeded_api, monkeypatch):
    at = _app(seeded_api.base_url, monkeypatch, run="4")
    assert not at.exception and not at.error
    assert at.title[0].value == "resnet18-cifar10-dqsgd-4b-s0"
    assert [metric.label for metric in at.metric][:2] == ["Final accuracy", "Final loss"]
    assert len(at.get(CHART)) == 8  # 7 charts, and one of the metrics no chart draws
    assert at.selectbox[0].value == "buckets"  # the first, sorted
    assert [tab.label for tab in at.tabs] == ["Charts", "Configuration"]
    configs = [element.value for element in at.json]
    assert any('"min_bits": 2' in value for value in configs)  # quantizer_config
    (download,) = at.get("download_button")
    assert download.proto.label == "Download all metrics (CSV)"
    back = next(b for b in at.button if b.label == "← All runs")
    back.click().run()
    assert "run" not in at.query_params
    assert at.title[0].value == "Quantized gradient exchange: runs"


def test_the_page_of_a_running_run_shows_its_latest_figures(seeded_api, monkeypatch):
    at = _app(seeded_api.base_url, monkeypatch, run=str(RUNNING_ID))
    assert not at.exception and not at.error
    cards = {metric.label: metric.value for metric in at.metric}
    assert cards["Steps"] == "40"
    assert cards["Latest loss"] != "–" and cards["Bytes sent"] != "–"
    assert "refreshing every" in _texts(at, "caption")


def test_a_missing_run_page_says_so(seeded_api, monkeypatch):
    at = _app(seeded_api.base_url, monkeypatch, run="999")
    assert not at.exception
    assert "Run 999 is not in the run store" in _texts(at, "error")


def test_an_empty_store_says_how_to_fill_it(empty_api, monkeypatch):
    at = _app(empty_api.base_url, monkeypatch, runs="1,2")
    assert not at.exception and not at.error
    text = _texts(at, "info")
    assert "holds no runs yet" in text
    assert not at.get(CHART) and not at.dataframe
    for dotted in re.findall(r"`(lightning_quant(?:\.\w+)+)", text):  # the names it gives exist
        module, name = dotted.rsplit(".", 1)
        assert hasattr(importlib.import_module(module), name), dotted


def test_an_unreachable_api_is_a_message_not_a_traceback(monkeypatch):
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    for query in ({}, {"runs": "1,2"}, {"run": "1"}):
        at = _app(url, monkeypatch, **query)
        assert not at.exception
        message = _texts(at, "error")
        assert "Cannot reach the run store API" in message and url in message
        assert any(button.label == "Retry" for button in at.button)


def test_an_api_error_is_a_message_not_a_traceback(seeded_api, monkeypatch):
    at = _app(f"{seeded_api.base_url}/not-the-api", monkeypatch)
    assert not at.exception
    assert "answered with an error" in _texts(at, "error") and "404" in _texts(at, "error")


def test_a_private_store_is_read_with_the_read_token(tmp_path, monkeypatch):
    env = {"LQ_API_READ_TOKEN": "r3ad"}
    with running_api_server(tmp_path, token="wr1te", env=env) as server:
        with server.client() as client:  # sends the write token, which reads too
            seed_runs(client, schemes=SCHEMES[:2], steps=5, prefix="")
        monkeypatch.delenv("LQ_API_TOKEN", raising=False)
        monkeypatch.delenv("LQ_API_READ_TOKEN", raising=False)
        refused = _app(server.base_url, monkeypatch)
        assert not refused.exception
        assert "401" in _texts(refused, "error") and "r3ad" not in _texts(refused, "error")
        monkeypatch.setenv("LQ_API_READ_TOKEN", "r3ad")
        at = _app(server.base_url, monkeypatch)
        assert not at.exception and not at.error
        (table,) = at.dataframe
        assert len(table.value) == 2
