"""With LQ_API_TOKEN set, every write needs the bearer token; reads stay open."""

import pytest

from api.main import app
from tests.api.conftest import API
from tests.utils.factories import metric_batch, run_payload

TOKEN = "s3cret-token"
WRITES = {"POST", "PUT", "PATCH", "DELETE"}


@pytest.fixture
def secured(make_client):
    return make_client(API_TOKEN=TOKEN)


def _auth(token):
    return {"Authorization": f"Bearer {token}"}


def _write_requests(run_id):
    return [
        ("POST", f"{API}/runs", run_payload()),
        ("PATCH", f"{API}/runs/{run_id}", {"status": "failed"}),
        ("POST", f"{API}/runs/{run_id}/metrics", metric_batch(steps=3)),
        ("DELETE", f"{API}/runs/{run_id}", None),
    ]


@pytest.mark.parametrize(
    "headers",
    [{}, _auth("wrong"), _auth(""), {"Authorization": TOKEN}, {"Authorization": f"Basic {TOKEN}"}],
    ids=["none", "wrong", "empty", "no-scheme", "basic"],
)
def test_writes_without_the_right_token_are_401_and_change_nothing(secured, query, headers):
    body = run_payload(status="running")
    run_id = secured.post(f"{API}/runs", json=body, headers=_auth(TOKEN)).json()["id"]
    for method, path, body in _write_requests(run_id):
        response = secured.request(method, path, json=body, headers=headers)
        assert response.status_code == 401, (method, path)
        assert response.headers["www-authenticate"] == "Bearer"
        assert "Authorization: Bearer" in response.json()["detail"]
    assert query("SELECT id, status FROM run") == [(run_id, "running")]
    assert query("SELECT count(*) FROM metric") == [(0,)]


def test_writes_with_the_token_succeed(secured):
    run_id = secured.post(f"{API}/runs", json=run_payload(), headers=_auth(TOKEN)).json()["id"]
    expected = [201, 200, 200, 204]
    for (method, path, body), status in zip(_write_requests(run_id), expected, strict=True):
        response = secured.request(method, path, json=body, headers=_auth(TOKEN))
        assert response.status_code == status, (method, path, response.text)


def test_reads_need_no_token(secured):
    run_id = secured.post(f"{API}/runs", json=run_payload(), headers=_auth(TOKEN)).json()["id"]
    secured.post(f"{API}/runs/{run_id}/metrics", json=metric_batch(steps=3), headers=_auth(TOKEN))
    for path in (
        "/health",
        f"{API}/runs",
        f"{API}/runs/{run_id}",
        f"{API}/runs/compare?ids={run_id}",
        f"{API}/runs/export.csv",
        f"{API}/runs/{run_id}/metrics",
        f"{API}/runs/{run_id}/metrics/names",
        f"{API}/runs/{run_id}/metrics/export.csv",
        "/openapi.json",
    ):
        assert secured.get(path).status_code == 200, path


def test_without_a_configured_token_writes_are_open(client):
    assert client.post(f"{API}/runs", json=run_payload()).status_code == 201
    # a token sent anyway is ignored
    assert client.post(f"{API}/runs", json=run_payload(), headers=_auth("x")).status_code == 201


def test_openapi_marks_every_write_and_no_read_as_needing_the_token():
    # The token check is the HTTPBearer dependency, which is what puts "security" on an
    # operation: so this checks every route, including ones added later.
    operations = [
        (method.upper(), path, operation)
        for path, item in app.openapi()["paths"].items()
        for method, operation in item.items()
    ]
    assert sum(method in WRITES for method, _, _ in operations) >= 4
    for method, path, operation in operations:
        secured = operation.get("security") == [{"HTTPBearer": []}]
        assert secured == (method in WRITES), (method, path)
