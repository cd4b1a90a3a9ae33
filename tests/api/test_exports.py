"""CSV exports parse back to what the JSON endpoints say."""

import csv
import io
import json

from tests.api.conftest import API
from tests.utils.factories import SCHEMES, metric_batch, run_payload


def _rows(response):
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/csv")
    assert "attachment" in response.headers["content-disposition"]
    return list(csv.DictReader(io.StringIO(response.text)))


def test_runs_csv_round_trips_every_field(client):
    for scheme in SCHEMES:
        client.post(f"{API}/runs", json=run_payload(scheme, tags=["a", scheme]))
    listed = client.get(f"{API}/runs", params={"sort": "id", "order": "asc"}).json()["data"]
    rows = _rows(client.get(f"{API}/runs/export.csv", params={"sort": "id", "order": "asc"}))
    assert len(rows) == len(SCHEMES)
    for row, run in zip(rows, listed, strict=True):
        assert set(row) == set(run)
        for field, value in run.items():
            if value is None:
                assert row[field] == "", field
            elif isinstance(value, list | dict | bool):
                assert json.loads(row[field]) == value, field
            elif isinstance(value, bool | int | float):
                assert type(value)(row[field]) == value, field
            else:
                assert row[field].replace("+00:00", "Z") == value, field


def test_runs_csv_takes_the_list_filters(client):
    for scheme in SCHEMES:
        client.post(f"{API}/runs", json=run_payload(scheme))
    rows = _rows(
        client.get(
            f"{API}/runs/export.csv",
            params={"scheme": "qsgd,fp32", "sort": "bits", "order": "desc"},
        )
    )
    assert [(row["scheme"], row["bits"]) for row in rows] == [("fp32", "32"), ("qsgd", "4")]
    assert _rows(client.get(f"{API}/runs/export.csv", params={"tag": "nope"})) == []


def test_metrics_csv_round_trips_all_points(client):
    run = client.post(f"{API}/runs", json=run_payload("dqsgd")).json()
    batch = metric_batch("dqsgd", steps=1500, names=("loss", "bits"))
    client.post(f"{API}/runs/{run['id']}/metrics", json=batch)
    rows = _rows(client.get(f"{API}/runs/{run['id']}/metrics/export.csv"))
    assert len(rows) == 3000  # not downsampled
    assert list(rows[0]) == ["step", "name", "value", "epoch", "wall_time"]
    expected = {
        (point["step"], name): (value, point["epoch"], point["wall_time"])
        for point in batch["points"]
        for name, value in point["values"].items()
    }
    parsed = {
        (int(row["step"]), row["name"]): (
            float(row["value"]),
            int(row["epoch"]),
            float(row["wall_time"]),
        )
        for row in rows
    }
    assert parsed == expected


def test_metrics_csv_filters_by_name_and_steps(client):
    run = client.post(f"{API}/runs", json=run_payload()).json()
    client.post(f"{API}/runs/{run['id']}/metrics", json=metric_batch(steps=50))
    rows = _rows(
        client.get(
            f"{API}/runs/{run['id']}/metrics/export.csv",
            params={"names": "loss", "step_min": 5, "step_max": 9},
        )
    )
    assert [(row["name"], int(row["step"])) for row in rows] == [("loss", s) for s in range(5, 10)]


def test_csv_cells_a_spreadsheet_would_run_are_neutralized_and_numbers_stay_numbers(client):
    formulas = ['=HYPERLINK("http://x")', "+1+2", "-2+3", "@SUM(A1)", "\tx", "\rx"]
    for index, text in enumerate(formulas):
        body = run_payload(name=text, host=text, final_loss=-1.5, tags=[f"t{index}"])
        assert client.post(f"{API}/runs", json=body).status_code == 201, text
    rows = _rows(client.get(f"{API}/runs/export.csv", params={"sort": "id", "order": "asc"}))
    assert [row["name"] for row in rows] == ["'" + text for text in formulas]
    assert [row["host"] for row in rows] == ["'" + text for text in formulas]
    assert {row["final_loss"] for row in rows} == {"-1.5"}  # a number, not text

    run = client.post(f"{API}/runs", json=run_payload()).json()
    points = [{"step": 0, "values": {"-loss": -2.0, "loss": 1.0}}]
    client.post(f"{API}/runs/{run['id']}/metrics", json={"points": points})
    rows = _rows(client.get(f"{API}/runs/{run['id']}/metrics/export.csv"))
    assert [(row["name"], row["value"]) for row in rows] == [("'-loss", "-2.0"), ("loss", "1.0")]
