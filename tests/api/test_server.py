"""A real uvicorn server on loopback: data lands in SQLite and survives a restart."""

import sqlite3
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.utils.api_server import running_api_server
from tests.utils.factories import METRIC_NAMES, SCHEMES, metric_points, run_payload, seed_runs

pytestmark = pytest.mark.timeout(120)


def test_runs_and_metrics_are_in_sqlite_and_survive_a_restart(api_server):
    with api_server.client() as client:
        runs = seed_runs(client, schemes=SCHEMES[:3], steps=40, prefix="")
        health = httpx.get(f"{api_server.base_url}/health").json()
        assert (health["status"], health["database"]) == ("ok", "ok")

    with sqlite3.connect(api_server.database_path) as connection:
        stored = connection.execute("SELECT id, scheme FROM run ORDER BY id").fetchall()
        points = connection.execute("SELECT count(*) FROM metric").fetchone()[0]
    assert stored == [(run["id"], run["scheme"]) for run in runs]
    assert points == 3 * 40 * len(METRIC_NAMES)

    api_server.restart()
    with api_server.client() as client:
        listed = client.get("/runs", params={"sort": "id", "order": "asc"}).json()
        assert [run["id"] for run in listed["data"]] == [run["id"] for run in runs]
        names = client.get(f"/runs/{runs[0]['id']}/metrics/names").json()
        assert names["count"] == len(METRIC_NAMES)


def test_concurrent_batches_from_several_clients_all_land(api_server):
    with api_server.client() as client:
        run_ids = [
            client.post("/runs", json=run_payload(scheme, status="running")).json()["id"]
            for scheme in SCHEMES
        ]

    def report(run_id: int) -> int:
        inserted = 0
        with api_server.client(timeout=30) as client:
            for first in range(0, 300, 50):
                points = metric_points(steps=50, start=first, names=("loss", "step_s"))
                response = client.post(f"/runs/{run_id}/metrics", json={"points": points})
                response.raise_for_status()
                inserted += response.json()["inserted"]
        return inserted

    with ThreadPoolExecutor(max_workers=len(run_ids)) as pool:
        assert list(pool.map(report, run_ids)) == [600] * len(run_ids)
    with sqlite3.connect(api_server.database_path) as connection:
        counts = connection.execute(
            "SELECT run_id, count(*) FROM metric GROUP BY run_id ORDER BY run_id"
        ).fetchall()
    assert counts == [(run_id, 600) for run_id in run_ids]


def test_a_server_with_a_token_refuses_anonymous_writes(tmp_path):
    with running_api_server(tmp_path, token="tok") as server:
        anonymous = httpx.post(f"{server.api_url}/runs", json=run_payload())
        assert anonymous.status_code == 401
        with server.client() as client:  # sends the token
            run = client.post("/runs", json=run_payload()).json()
        assert httpx.get(f"{server.api_url}/runs/{run['id']}").status_code == 200
