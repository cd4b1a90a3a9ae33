"""With LQ_API_TOKEN set, every write needs the bearer token; reads stay open unless
LQ_API_READ_TOKEN is set too."""

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


def _read_paths(run_id):
    return [
        f"{API}/runs",
        f"{API}/runs/{run_id}",
        f"{API}/runs/compare?ids={run_id}",
        f"{API}/runs/export.csv",
        f"{API}/runs/{run_id}/metrics",
        f"{API}/runs/{run_id}/metrics/names",
        f"{API}/runs/{run_id}/metrics/export.csv",
    ]


OPEN_PATHS = ["/health", "/openapi.json", "/docs"]


def test_reads_need_no_token(secured):
    run_id = secured.post(f"{API}/runs", json=run_payload(), headers=_auth(TOKEN)).json()["id"]
    secured.post(f"{API}/runs/{run_id}/metrics", json=metric_batch(steps=3), headers=_auth(TOKEN))
    for path in [*_read_paths(run_id), *OPEN_PATHS]:
        assert secured.get(path).status_code == 200, path


READ_TOKEN = "r3ad-only"


def test_a_read_token_makes_the_store_private_and_health_stays_open(make_client, query):
    private = make_client(API_TOKEN=TOKEN, API_READ_TOKEN=READ_TOKEN)
    run_id = private.post(f"{API}/runs", json=run_payload(), headers=_auth(TOKEN)).json()["id"]
    for path in _read_paths(run_id):
        for headers in ({}, _auth("wrong"), _auth(READ_TOKEN + "x")):
            refused = private.get(path, headers=headers)
            assert refused.status_code == 401, (path, headers)
            assert READ_TOKEN not in refused.text and TOKEN not in refused.text
            assert "LQ_API_READ_TOKEN" in refused.json()["detail"]
        for token in (READ_TOKEN, TOKEN):  # the read token, or the write token
            assert private.get(path, headers=_auth(token)).status_code == 200, (path, token)
    for path in OPEN_PATHS:
        assert private.get(path).status_code == 200, path
    # the read token does not write
    for method, path, body in _write_requests(run_id):
        response = private.request(method, path, json=body, headers=_auth(READ_TOKEN))
        assert response.status_code == 401, (method, path)
    assert query("SELECT count(*) FROM run") == [(1,)]


def test_a_read_token_alone_guards_writes_too(make_client):
    private = make_client(API_READ_TOKEN=READ_TOKEN)
    assert private.post(f"{API}/runs", json=run_payload()).status_code == 401
    created = private.post(f"{API}/runs", json=run_payload(), headers=_auth(READ_TOKEN))
    assert created.status_code == 201


def test_without_a_configured_token_writes_are_open(client):
    assert client.post(f"{API}/runs", json=run_payload()).status_code == 201
    # a token sent anyway is ignored
    assert client.post(f"{API}/runs", json=run_payload(), headers=_auth("x")).status_code == 201


def test_openapi_marks_every_api_route_and_not_health_as_taking_the_token():
    # The token checks are HTTPBearer dependencies, which is what puts "security" on an
    # operation: so this checks every route, including ones added later. Every /api/v1
    # route may need a token (reads with LQ_API_READ_TOKEN), and documents the 401.
    operations = [
        (method.upper(), path, operation)
        for path, item in app.openapi()["paths"].items()
        for method, operation in item.items()
    ]
    assert sum(method in WRITES for method, _, _ in operations) >= 4
    for method, path, operation in operations:
        secured = operation.get("security") == [{"HTTPBearer": []}]
        assert secured == path.startswith(API), (method, path)
        assert ("401" in operation["responses"]) == path.startswith(API), (method, path)
