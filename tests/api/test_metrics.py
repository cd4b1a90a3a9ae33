"""Metrics: idempotent batches, reading back, downsampling, limits, bad values."""

import json

import pytest

from tests.api.conftest import API
from tests.utils.factories import METRIC_NAMES, metric_batch, metric_points


@pytest.fixture
def run(make_run):
    return make_run("qsgd", status="running")


def _post(client, run_id, body, **kwargs):
    return client.post(f"{API}/runs/{run_id}/metrics", json=body, **kwargs)


def test_posting_the_same_batch_twice_stores_it_once(client, run, query):
    batch = metric_batch("qsgd", steps=50)
    first = _post(client, run["id"], batch)
    assert first.status_code == 200, first.text
    assert first.json() == {"received": 50 * len(METRIC_NAMES), "inserted": 50 * len(METRIC_NAMES)}
    again = _post(client, run["id"], batch)
    assert again.json() == {"received": 50 * len(METRIC_NAMES), "inserted": 0}
    count = query("SELECT count(*) FROM metric WHERE run_id = ?", run["id"])
    assert count == [(50 * len(METRIC_NAMES),)]
    distinct = query("SELECT count(*) FROM (SELECT DISTINCT run_id, step, name FROM metric) AS d")
    assert distinct == count


def test_an_overlapping_retry_adds_only_the_new_steps_and_keeps_stored_values(client, run, query):
    _post(client, run["id"], {"points": [{"step": 0, "values": {"loss": 1.0}}]})
    response = _post(
        client,
        run["id"],
        {
            "points": [
                {"step": 0, "values": {"loss": 5.0, "accuracy": 0.1}},
                {"step": 1, "values": {"loss": 0.9}},
                {"step": 1, "values": {"loss": 0.8}},  # the same key twice in one batch
            ]
        },
    )
    assert response.json() == {"received": 4, "inserted": 2}
    rows = query("SELECT step, name, value FROM metric ORDER BY step, name")
    assert rows == [(0, "accuracy", 0.1), (0, "loss", 1.0), (1, "loss", 0.9)]


def test_metrics_read_back_in_long_format(client, run):
    points = metric_points("qsgd", steps=30)
    _post(client, run["id"], {"points": points})
    response = client.get(f"{API}/runs/{run['id']}/metrics", params={"names": "loss,step_s"})
    assert response.status_code == 200
    body = response.json()
    assert body["count"] == 60 == len(body["data"])
    by_key = {(p["name"], p["step"]): p for p in body["data"]}
    for point in points:
        for name in ("loss", "step_s"):
            stored = by_key[(name, point["step"])]
            assert stored["value"] == point["values"][name]
            assert stored["epoch"] == point["epoch"]
            assert stored["wall_time"] == point["wall_time"]
    # ordered by name, then step
    keys = [(p["name"], p["step"]) for p in body["data"]]
    assert keys == sorted(keys)


def test_step_range_and_names_filter(client, run):
    _post(client, run["id"], metric_batch(steps=100))
    data = client.get(
        f"{API}/runs/{run['id']}/metrics",
        params=[("names", "loss"), ("names", "accuracy"), ("step_min", 10), ("step_max", 19)],
    ).json()["data"]
    assert {p["name"] for p in data} == {"loss", "accuracy"}
    assert sorted({p["step"] for p in data}) == list(range(10, 20))
    names = client.get(f"{API}/runs/{run['id']}/metrics/names").json()
    assert names == {"data": sorted(METRIC_NAMES), "count": len(METRIC_NAMES)}


@pytest.mark.parametrize(
    ("steps", "max_points"),
    [(1000, 100), (1000, 2), (101, 11), (7, 3), (999, 998), (50, 50), (10, 1000)],
)
def test_downsampling_keeps_at_most_n_even_points_with_first_and_last(
    client, run, steps, max_points
):
    # steps are sparse and uneven, so picking by step number would not be even by rank
    points = [
        {"step": 3 * i + i % 3, "values": {"loss": float(i), "accuracy": -i}} for i in range(steps)
    ]
    for first in range(0, steps, 4000):
        _post(client, run["id"], {"points": points[first : first + 4000]})
    data = client.get(f"{API}/runs/{run['id']}/metrics", params={"max_points": max_points}).json()[
        "data"
    ]
    for name in ("loss", "accuracy"):
        kept = [p for p in data if p["name"] == name]
        expected = min(steps, max_points)
        assert len(kept) == expected
        ranks = [abs(int(p["value"])) for p in kept]
        assert ranks[0] == 0 and ranks[-1] == steps - 1
        assert ranks == sorted(set(ranks))
        if steps > max_points:
            # evenly spread: the gaps between kept ranks differ by at most one
            gaps = {b - a for a, b in zip(ranks, ranks[1:], strict=False)}
            assert max(gaps) - min(gaps) <= 1


def test_downsampling_counts_each_metric_separately(client, run):
    long = [{"step": s, "values": {"loss": 1.0}} for s in range(500)]
    short = [{"step": s, "values": {"lr": 0.1}} for s in range(0, 500, 100)]
    _post(client, run["id"], {"points": long + short})
    data = client.get(f"{API}/runs/{run['id']}/metrics", params={"max_points": 10}).json()["data"]
    assert sum(p["name"] == "loss" for p in data) == 10
    assert [p["step"] for p in data if p["name"] == "lr"] == [0, 100, 200, 300, 400]


def test_default_read_is_downsampled_to_1000_points_per_metric(client, run):
    for first in range(0, 3000, 1500):
        _post(
            client,
            run["id"],
            {
                "points": [
                    {"step": s, "values": {"loss": 1.0, "accuracy": 0.5}}
                    for s in range(first, first + 1500)
                ]
            },
        )
    body = client.get(f"{API}/runs/{run['id']}/metrics").json()
    assert body["count"] == 2000
    full = client.get(f"{API}/runs/{run['id']}/metrics", params={"max_points": 100_000}).json()
    assert full["count"] == 6000


def test_any_named_scalar_is_accepted(client, run):
    names = ["loss", "train/loss", "val.acc_1", "lr-group:0", "gpu_mem_MB"]
    response = _post(
        client, run["id"], {"points": [{"step": 3, "values": dict.fromkeys(names, 1.5)}]}
    )
    assert response.status_code == 200, response.text
    stored = client.get(f"{API}/runs/{run['id']}/metrics/names").json()["data"]
    assert stored == sorted(names)


def test_posting_metrics_touches_the_run(client, run):
    _post(client, run["id"], metric_batch(steps=1))
    assert client.get(f"{API}/runs/{run['id']}").json()["updated_at"] > run["updated_at"]


@pytest.mark.parametrize(
    ("point", "loc"),
    [
        ({"step": 1, "values": {"loss": float("nan")}}, ["points", 0, "values", "loss"]),
        ({"step": 1, "values": {"loss": float("inf")}}, ["points", 0, "values", "loss"]),
        (
            {"step": 1, "wall_time": float("-inf"), "values": {"loss": 1}},
            ["points", 0, "wall_time"],
        ),
        ({"step": -1, "values": {"loss": 1}}, ["points", 0, "step"]),
        ({"step": 2**63, "values": {"loss": 1}}, ["points", 0, "step"]),
        ({"step": 1, "epoch": 10**40, "values": {"loss": 1}}, ["points", 0, "epoch"]),
        ({"step": 1.5, "values": {"loss": 1}}, ["points", 0, "step"]),
        ({"values": {"loss": 1}}, ["points", 0, "step"]),
        ({"step": 1, "values": {}}, ["points", 0, "values"]),
        ({"step": 1, "values": {"loss": "low"}}, ["points", 0, "values", "loss"]),
        ({"step": 1, "values": {"bad name!": 1.0}}, ["points", 0, "values", "bad name!"]),
        ({"step": 1, "values": {"x" * 101: 1.0}}, ["points", 0, "values", "x" * 101]),
    ],
)
def test_bad_points_are_422_naming_the_field(client, run, point, loc):
    body = json.dumps({"points": [point]})  # NaN/Infinity as Python writes them
    response = client.post(
        f"{API}/runs/{run['id']}/metrics",
        content=body,
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 422, response.text
    locs = [error["loc"][1:] for error in response.json()["detail"]]
    assert any(found[: len(loc)] == loc for found in locs), locs


def test_a_batch_over_the_value_limit_is_413_and_stores_nothing(make_client, query):
    client = make_client(MAX_BATCH_POINTS=100)
    run_id = client.post(f"{API}/runs", json={"name": "r", "scheme": "qsgd"}).json()["id"]
    ok = _post(
        client, run_id, {"points": [{"step": s, "values": {"a": 1, "b": 2}} for s in range(50)]}
    )
    assert ok.status_code == 200
    too_many = _post(
        client,
        run_id,
        {"points": [{"step": s, "values": {"a": 1, "b": 2}} for s in range(100, 151)]},
    )
    assert too_many.status_code == 413
    assert "102" in too_many.json()["detail"] and "100" in too_many.json()["detail"]
    assert query("SELECT count(*) FROM metric") == [(100,)]


def test_the_default_batch_limit_is_10000_values(client, run):
    points = [{"step": s, "values": {"a": 1.0}} for s in range(10_001)]
    assert _post(client, run["id"], {"points": points}).status_code == 413
    assert _post(client, run["id"], {"points": points[:10_000]}).status_code == 200


def test_a_body_over_the_size_limit_is_413(make_client, query):
    client = make_client(MAX_BODY_BYTES=4096)
    run_id = client.post(f"{API}/runs", json={"name": "r", "scheme": "qsgd"}).json()["id"]
    big = {"points": [{"step": s, "values": {"loss": 1.0}} for s in range(500)]}
    assert len(json.dumps(big)) > 4096
    response = _post(client, run_id, big)
    assert response.status_code == 413
    # a body streamed without Content-Length is counted as it arrives
    chunks = (json.dumps(big)[i : i + 1000].encode() for i in range(0, len(json.dumps(big)), 1000))
    response = client.post(
        f"{API}/runs/{run_id}/metrics",
        content=chunks,
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 413
    huge_run = {"name": "r", "scheme": "qsgd", "summary": {"blob": "x" * 5000}}
    assert client.post(f"{API}/runs", json=huge_run).status_code == 413
    assert query("SELECT count(*) FROM metric") == [(0,)]
    assert query("SELECT count(*) FROM run") == [(1,)]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"max_points": 1}, "max_points"),
        ({"max_points": 10**9}, "max_points"),
        ({"step_min": -1}, "step_min"),
        ({"step_max": 2**64}, "step_max"),
        ({"names": "bad name"}, "names"),
    ],
)
def test_bad_read_parameters_are_422_naming_them(client, run, params, field):
    response = client.get(f"{API}/runs/{run['id']}/metrics", params=params)
    assert response.status_code == 422
    assert field in {error["loc"][1] for error in response.json()["detail"]}
