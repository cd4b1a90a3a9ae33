"""A real uvicorn server on loopback, on each database: data lands and survives a restart."""

import logging
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from fastapi.testclient import TestClient

from api.core.config import Settings
from api.main import UNAVAILABLE, create_app
from benchmarks import postgres_server as postgres
from tests.api.conftest import API
from tests.utils.api_server import running_api_server
from tests.utils.factories import METRIC_NAMES, SCHEMES, metric_points, run_payload, seed_runs

pytestmark = pytest.mark.timeout(120)


def test_runs_and_metrics_are_stored_and_survive_a_restart(db_server):
    with db_server.client() as client:
        runs = seed_runs(client, schemes=SCHEMES[:3], steps=40, prefix="")
        health = httpx.get(f"{db_server.base_url}/health").json()
        assert (health["status"], health["database"]) == ("ok", "ok")

    stored = db_server.query("SELECT id, scheme FROM run ORDER BY id")
    assert stored == [(run["id"], run["scheme"]) for run in runs]
    assert db_server.query("SELECT count(*) FROM metric") == [(3 * 40 * len(METRIC_NAMES),)]

    db_server.restart()
    with db_server.client() as client:
        listed = client.get("/runs", params={"sort": "id", "order": "asc"}).json()
        assert [run["id"] for run in listed["data"]] == [run["id"] for run in runs]
        names = client.get(f"/runs/{runs[0]['id']}/metrics/names").json()
        assert names["count"] == len(METRIC_NAMES)


def test_concurrent_batches_from_several_clients_all_land(db_server):
    with db_server.client() as client:
        run_ids = [
            client.post("/runs", json=run_payload(scheme, status="running")).json()["id"]
            for scheme in SCHEMES
        ]

    def report(run_id: int) -> int:
        inserted = 0
        with db_server.client(timeout=30) as client:
            for first in range(0, 300, 50):
                points = metric_points(steps=50, start=first, names=("loss", "step_s"))
                response = client.post(f"/runs/{run_id}/metrics", json={"points": points})
                response.raise_for_status()
                inserted += response.json()["inserted"]
        return inserted

    with ThreadPoolExecutor(max_workers=len(run_ids)) as pool:
        assert list(pool.map(report, run_ids)) == [600] * len(run_ids)
    counts = db_server.query("SELECT run_id, count(*) FROM metric GROUP BY run_id ORDER BY run_id")
    assert counts == [(run_id, 600) for run_id in run_ids]


def test_a_server_with_a_token_refuses_anonymous_writes(tmp_path):
    with running_api_server(tmp_path, token="tok") as server:
        anonymous = httpx.post(f"{server.api_url}/runs", json=run_payload())
        assert anonymous.status_code == 401
        with server.client() as client:  # sends the token
            run = client.post("/runs", json=run_payload()).json()
        assert httpx.get(f"{server.api_url}/runs/{run['id']}").status_code == 200


@pytest.mark.skipif(postgres.unavailable() is not None, reason=str(postgres.unavailable()))
def test_a_database_gone_away_is_a_plain_503_that_names_no_secret(caplog):
    with postgres.postgres_server() as server:
        url = server.create_database("gone")
        client = TestClient(create_app(Settings(_env_file=None, DATABASE_URL=url)))
        client.__enter__()
        assert client.post(f"{API}/runs", json=run_payload()).status_code == 201
    # the server is stopped now
    try:
        with caplog.at_level(logging.ERROR, logger="api"):
            answers = [
                client.get(f"{API}/runs"),
                client.post(f"{API}/runs", json=run_payload()),
                client.get("/health"),
            ]
    finally:
        client.__exit__(None, None, None)
    assert [a.status_code for a in answers] == [503, 503, 503]
    assert answers[0].json() == {"detail": UNAVAILABLE}
    assert answers[2].json()["database"] == "unavailable"
    for answer in answers:
        for secret in (str(server.port), "127.0.0.1", "postgres", "gone", "psycopg"):
            assert secret not in answer.text, (secret, answer.text)
    assert str(server.port) in caplog.text  # the cause is in the server's log
