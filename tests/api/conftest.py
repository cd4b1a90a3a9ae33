"""Fixtures for the run store's tests: an app on a real database of each kind, a SQLite
file in ``tmp_path`` and a database on a throwaway PostgreSQL server (every test that
takes ``client``, ``make_client`` or ``query`` runs on both)."""

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.core.config import Settings
from api.main import create_app
from tests.utils.api_server import api_server  # noqa: F401 - a pytest fixture
from tests.utils.databases import KINDS, database_url, run_sql

API = "/api/v1"


@pytest.fixture(params=KINDS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database of each kind."""
    return database_url(request.param, tmp_path / "database")


@pytest.fixture
def make_client(db_url: str) -> Iterator[Callable[..., TestClient]]:
    """Start the app (lifespan included) on ``db_url`` with settings overridden."""
    clients: list[TestClient] = []

    def make(**overrides: Any) -> TestClient:
        settings = Settings(
            _env_file=None,  # type: ignore[call-arg]
            DATABASE_URL=db_url,
            **{"API_TOKEN": None, **overrides},
        )
        client = TestClient(create_app(settings))
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def client(make_client: Callable[..., TestClient]) -> TestClient:
    return make_client()


@pytest.fixture
def query(db_url: str) -> Callable[..., list[tuple[Any, ...]]]:
    """Run SQL (``?`` placeholders) on the database directly, past the API."""

    def run(sql: str, *params: Any) -> list[tuple[Any, ...]]:
        return run_sql(db_url, sql, *params)

    return run


@pytest.fixture
def make_run(client: TestClient) -> Callable[..., dict[str, Any]]:
    """Create a run through the API from ``run_payload(**kwargs)``; return it."""
    from tests.utils.factories import run_payload

    def make(scheme: str = "qsgd", **kwargs: Any) -> dict[str, Any]:
        response = client.post(f"{API}/runs", json=run_payload(scheme, **kwargs))
        assert response.status_code == 201, response.text
        return response.json()

    return make
