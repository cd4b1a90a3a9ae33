"""Runs: create, read, update, delete, filters, sorting, paging, compare, bad input."""

import json
from datetime import UTC, datetime

import pytest

from api.models import RunSortField
from tests.api.conftest import API
from tests.utils.factories import SCHEMES, metric_batch, run_payload


def test_create_then_read_returns_what_was_sent(client, query):
    body = run_payload("nuqsgd", bits=3, seed=7)
    created = client.post(f"{API}/runs", json=body)
    assert created.status_code == 201
    run = created.json()
    for field, value in body.items():
        assert run[field] == value, field
    assert client.get(f"{API}/runs/{run['id']}").json() == run
    # stored in the database, JSON fields as JSON (text in SQLite, decoded by psycopg)
    (row,) = query("SELECT scheme, bits, quantizer_config, tags FROM run WHERE id = ?", run["id"])
    assert row[:2] == ("nuqsgd", 3)
    as_json = [value if isinstance(value, dict | list) else json.loads(value) for value in row[2:]]
    assert as_json == [body["quantizer_config"], body["tags"]]


def test_timestamps_are_utc_and_finishing_sets_finished_at(client):
    before = datetime.now(UTC)
    run = client.post(f"{API}/runs", json=run_payload(status="running")).json()
    created_at = datetime.fromisoformat(run["created_at"])
    assert created_at.tzinfo is not None and created_at >= before
    assert run["finished_at"] is None and run["status"] == "running"

    finished = client.patch(f"{API}/runs/{run['id']}", json={"status": "finished"}).json()
    assert finished["status"] == "finished"
    assert datetime.fromisoformat(finished["finished_at"]) >= created_at
    assert datetime.fromisoformat(finished["updated_at"]) >= created_at
    assert finished["created_at"] == run["created_at"]


def test_finished_at_given_with_an_offset_is_stored_as_utc(client):
    body = run_payload(status="failed", finished_at="2024-05-01T12:00:00+02:00")
    run = client.post(f"{API}/runs", json=body).json()
    assert datetime.fromisoformat(run["finished_at"]) == datetime(2024, 5, 1, 10, tzinfo=UTC)


def test_patch_changes_only_the_fields_sent(client):
    run = client.post(f"{API}/runs", json=run_payload("qsgd", status="running")).json()
    update = {
        "status": "finished",
        "final_loss": 0.25,
        "final_accuracy": 0.91,
        "total_raw_bytes": 8_000,
        "total_sent_bytes": 1_500,
        "mean_step_s": 0.2,
        "predicted_step_s": 0.19,
        "summary": {"best_accuracy": 0.92},
        "tags": ["sweep-3"],
    }
    response = client.patch(f"{API}/runs/{run['id']}", json=update)
    assert response.status_code == 200, response.text
    patched = response.json()
    for field, value in update.items():
        assert patched[field] == value, field
    # fp32 DDP's 2 (n-1)/n of the raw bytes over the sent ones, as none was sent (n = 4)
    assert patched["compression_ratio"] == pytest.approx(1.5 * 8_000 / 1_500)
    unchanged = set(run) - set(update) - {"updated_at", "finished_at", "compression_ratio"}
    assert {f: patched[f] for f in unchanged} == {f: run[f] for f in unchanged}
    # the tag filter follows the new tags
    assert client.get(f"{API}/runs", params={"tag": "sweep-3"}).json()["count"] == 1
    assert client.get(f"{API}/runs", params={"tag": "qsgd"}).json()["count"] == 0


def test_patch_cannot_null_a_required_field(client, make_run):
    run = make_run()
    response = client.patch(f"{API}/runs/{run['id']}", json={"name": None, "status": None})
    assert response.status_code == 422
    assert {tuple(e["loc"]) for e in response.json()["detail"]} == {
        ("body", "name"),
        ("body", "status"),
    }


def test_delete_removes_the_run_its_metrics_and_tags(client, make_run, query):
    run, other = make_run("qsgd"), make_run("fp32")
    for r in (run, other):
        client.post(f"{API}/runs/{r['id']}/metrics", json=metric_batch(steps=20))
    assert client.delete(f"{API}/runs/{run['id']}").status_code == 204
    assert client.get(f"{API}/runs/{run['id']}").status_code == 404
    assert query("SELECT count(*) FROM metric WHERE run_id = ?", run["id"]) == [(0,)]
    assert query("SELECT count(*) FROM run_tag WHERE run_id = ?", run["id"]) == [(0,)]
    assert query("SELECT count(*) FROM metric WHERE run_id = ?", other["id"])[0][0] > 0
    assert client.delete(f"{API}/runs/{run['id']}").status_code == 404


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("get", "/runs/12345"),
        ("patch", "/runs/12345"),
        ("delete", "/runs/12345"),
        ("get", "/runs/12345/metrics"),
        ("post", "/runs/12345/metrics"),
        ("get", "/runs/12345/metrics/names"),
        ("get", "/runs/12345/metrics/export.csv"),
    ],
)
def test_missing_run_is_404_with_a_message(client, method, path):
    body = {"points": []} if method == "post" else {} if method == "patch" else None
    response = client.request(method, API + path, json=body)
    assert response.status_code == 404
    assert response.json() == {"detail": "Run 12345 not found"}


@pytest.fixture
def catalog(client, make_run):
    """Runs across schemes, bits, datasets, models, statuses and tags."""
    runs = [make_run(scheme, seed=1) for scheme in SCHEMES]
    runs += [
        make_run("qsgd", bits=2, tags=["sweep", "low-bits"]),
        make_run("qsgd", bits=8, dataset="imagenet", model_name="resnet50", tags=["sweep"]),
        make_run("nuqsgd", bits=2, status="running", tags=["sweep", "low-bits"]),
        make_run("qsgd", bits=3, coding="entropy", tags=["sweep"]),
    ]
    return runs


def _list(client, **params):
    response = client.get(f"{API}/runs", params=params)
    assert response.status_code == 200, response.text
    return response.json()


def _expected(runs, predicate):
    return {run["id"] for run in runs if predicate(run)}


@pytest.mark.parametrize(
    ("params", "predicate"),
    [
        ({"scheme": "qsgd"}, lambda r: r["scheme"] == "qsgd"),
        ({"scheme": "qsgd,nuqsgd"}, lambda r: r["scheme"] in ("qsgd", "nuqsgd")),
        ({"scheme": ["qsgd", "fp32"]}, lambda r: r["scheme"] in ("qsgd", "fp32")),
        ({"bits": 2}, lambda r: r["bits"] == 2),
        ({"status": "running"}, lambda r: r["status"] == "running"),
        ({"dataset": "imagenet"}, lambda r: r["dataset"] == "imagenet"),
        ({"model": "resnet18"}, lambda r: r["model_name"] == "resnet18"),
        ({"tag": "sweep"}, lambda r: "sweep" in r["tags"]),
        ({"tag": "sweep,low-bits"}, lambda r: {"sweep", "low-bits"} <= set(r["tags"])),
        (
            {"scheme": "qsgd", "bits": "2,8", "tag": "sweep"},
            lambda r: r["scheme"] == "qsgd" and r["bits"] in (2, 8) and "sweep" in r["tags"],
        ),
        ({"scheme": "no-such-scheme"}, lambda r: False),
        ({"coding": "entropy"}, lambda r: r["coding"] == "entropy"),
        (
            {"scheme": "qsgd", "coding": "packed"},
            lambda r: r["scheme"] == "qsgd" and r["coding"] == "packed",
        ),
    ],
)
def test_filters_select_exactly_the_matching_runs(client, catalog, params, predicate):
    page = _list(client, limit=1000, **params)
    assert {run["id"] for run in page["data"]} == _expected(catalog, predicate)
    assert page["count"] == len(page["data"])


@pytest.mark.parametrize("field", ["final_loss", "bits", "name", "created_at", "mean_step_s"])
@pytest.mark.parametrize("order", ["asc", "desc"])
def test_sort_by_any_whitelisted_field(client, catalog, field, order):
    data = _list(client, sort=field, order=order, limit=1000)["data"]
    values = [run[field] for run in data if run[field] is not None]
    assert values == sorted(values, reverse=order == "desc")
    # runs without the value come last either way
    missing = [run[field] is None for run in data]
    assert missing == sorted(missing)


def test_pages_cover_every_run_once_with_the_total_count(client, catalog):
    seen = []
    for offset in range(0, len(catalog) + 3, 3):
        page = _list(client, sort="final_loss", order="asc", offset=offset, limit=3)
        assert page["count"] == len(catalog)
        seen += [run["id"] for run in page["data"]]
    assert sorted(seen) == sorted(run["id"] for run in catalog)
    filtered = _list(client, scheme="qsgd", limit=1)
    assert len(filtered["data"]) == 1 and filtered["count"] == 4


def test_default_order_is_newest_first(client, catalog):
    ids = [run["id"] for run in _list(client)["data"]]
    assert ids == sorted(ids, reverse=True)


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"sort": "password"}, "sort"),
        ({"order": "sideways"}, "order"),
        ({"status": "paused"}, "status"),
        ({"bits": "x"}, "bits"),
        ({"bits": "65"}, "bits"),
        ({"limit": "0"}, "limit"),
        ({"limit": "100000"}, "limit"),
        ({"offset": "-1"}, "offset"),
        ({"offset": str(10**30)}, "offset"),
        ({"collective": "\x00"}, "collective"),  # PostgreSQL text holds no NUL
        ({"tag": "a\x00b"}, "tag"),
        ({"scheme": "q\x00"}, "scheme"),
    ],
)
def test_bad_list_parameters_are_422_naming_the_parameter(client, params, field):
    response = client.get(f"{API}/runs", params=params)
    assert response.status_code == 422
    assert field in {error["loc"][1] for error in response.json()["detail"]}


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"status": "paused"}, "status"),
        ({"name": ""}, "name"),
        ({"bits": 0}, "bits"),
        ({"bits": 2**70}, "bits"),
        ({"total_sent_bytes": 2**64}, "total_sent_bytes"),
        ({"collective": "a,b"}, "collective"),
        ({"total_raw_bytes": -1}, "total_raw_bytes"),
        ({"world_size": "four"}, "world_size"),
        ({"tags": "a"}, "tags"),
        ({"tags": ["a,b"]}, "tags"),
        ({"scheme": None}, "scheme"),
        ({"mean_step_s": -0.1}, "mean_step_s"),
        ({"finished_at": "yesterday"}, "finished_at"),
        ({"strategy_config": [1, 2]}, "strategy_config"),
        ({"hyperparameters": {"lr": float("nan")}}, "hyperparameters"),
        ({"summary": {"x": float("inf")}}, "summary"),
        ({"final_loss": float("nan")}, "final_loss"),
        ({"final_accuracy": float("-inf")}, "final_accuracy"),
        ({"host": "\ud800"}, "host"),
        ({"name": "run\x00"}, "name"),  # PostgreSQL text holds no NUL
        ({"tags": ["a\x00"]}, "tags"),
        ({"hyperparameters": {"k\x00": 1}}, "hyperparameters"),
        ({"strategy_config": {"k": ["\x00"]}}, "strategy_config"),
        ({"scheme": "s" * 65}, "scheme"),  # its column is VARCHAR(64)
    ],
)
def test_bad_run_fields_are_422_naming_the_field(client, change, field):
    # NaN and infinity travel as the non-standard JSON literals Python writes
    body = json.dumps(run_payload() | change)
    response = client.post(
        f"{API}/runs", content=body, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 422, response.text
    assert field in {error["loc"][1] for error in response.json()["detail"]}


def test_bad_run_id_in_the_path_is_422(client):
    # ids are 32-bit: 2**31 is out of range on PostgreSQL's INTEGER, refused before it
    for run_id in ("abc", "0", str(2**64), str(2**31), str(2**63 - 2)):
        response = client.get(f"{API}/runs/{run_id}")
        assert response.status_code == 422
        assert response.json()["detail"][0]["loc"] == ["path", "run_id"]


def test_missing_required_fields_are_named(client):
    response = client.post(f"{API}/runs", json={"tags": []})
    assert response.status_code == 422
    assert {tuple(e["loc"]) for e in response.json()["detail"]} == {
        ("body", "name"),
        ("body", "scheme"),
    }


def test_malformed_json_is_422_not_500(client):
    response = client.post(
        f"{API}/runs", content=b'{"name": ', headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 422


def test_compare_puts_runs_side_by_side_with_ratios_to_the_baseline(client, catalog):
    baseline = next(run for run in catalog if run["scheme"] == "fp32")
    others = [run for run in catalog if run["scheme"] in ("qsgd", "global_qsgd")][:2]
    ids = [baseline["id"], *(run["id"] for run in others)]
    response = client.get(f"{API}/runs/compare", params={"ids": ",".join(map(str, ids))})
    assert response.status_code == 200, response.text
    comparison = response.json()
    assert comparison["baseline_id"] == baseline["id"]
    assert comparison["count"] == 3
    assert [row["id"] for row in comparison["data"]] == ids
    first, *rest = comparison["data"]
    assert first["speedup"] == 1.0 and first["loss_delta"] == 0.0
    for row, run in zip(rest, others, strict=True):
        assert row["mean_step_s"] == run["mean_step_s"]
        assert row["speedup"] == pytest.approx(baseline["mean_step_s"] / run["mean_step_s"])
        assert row["speedup"] > 1  # quantized runs send less and step faster here
        assert row["sent_bytes_ratio"] == pytest.approx(
            run["total_sent_bytes"] / baseline["total_sent_bytes"]
        )
        assert row["collective"] == run["collective"]
        assert row["loss_delta"] == pytest.approx(run["final_loss"] - baseline["final_loss"])
        assert row["prediction_error"] == pytest.approx(
            (run["predicted_step_s"] - run["mean_step_s"]) / run["mean_step_s"]
        )


def test_compare_accepts_repeated_ids_and_a_chosen_baseline(client, catalog):
    a, b = catalog[0]["id"], catalog[1]["id"]
    response = client.get(f"{API}/runs/compare?ids={a}&ids={b}&ids={a}&baseline={b}")
    assert response.status_code == 200
    assert response.json()["baseline_id"] == b
    assert [row["id"] for row in response.json()["data"]] == [a, b]


@pytest.mark.parametrize(
    ("query_string", "status", "field"),
    [
        ("ids=1,x", 422, "ids"),
        ("", 422, "ids"),
        ("ids=", 422, "ids"),
        ("ids=" + ",".join(map(str, range(1, 150))), 422, "ids"),
        ("ids=1&baseline=2", 422, "baseline"),
        (f"ids=1,{2**31}", 422, "ids"),
    ],
)
def test_compare_rejects_bad_ids(client, catalog, query_string, status, field):
    response = client.get(f"{API}/runs/compare?{query_string}")
    assert response.status_code == status
    assert field in {error["loc"][1] for error in response.json()["detail"]}


def test_compare_with_a_missing_run_is_404_naming_it(client, catalog):
    response = client.get(f"{API}/runs/compare", params={"ids": f"{catalog[0]['id']},9999"})
    assert response.status_code == 404
    assert response.json() == {"detail": "Runs not found: 9999"}


def test_every_sort_field_is_a_column(client, catalog):
    for field in RunSortField:
        assert _list(client, sort=field.value)["count"] == len(catalog)


def test_a_run_key_makes_creation_idempotent_and_cannot_change(client):
    body = run_payload("qsgd", run_key="rank0-abc")
    first = client.post(f"{API}/runs", json=body)
    again = client.post(f"{API}/runs", json={**body, "name": "another name"})
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json() == first.json()  # the stored run, unchanged
    assert client.get(f"{API}/runs", params={"run_key": "rank0-abc"}).json()["count"] == 1
    patched = client.patch(f"{API}/runs/{first.json()['id']}", json={"run_key": "other"})
    assert patched.status_code == 422 and "run_key" in str(patched.json()["detail"])
    assert client.post(f"{API}/runs", json=run_payload(run_key="a b")).status_code == 422
