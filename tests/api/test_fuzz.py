"""Fuzz every operation in the OpenAPI document with schemathesis, on SQLite and on
PostgreSQL: never a server error, and with a token configured, no write gets through
without it."""

import tempfile
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from sqlmodel import Session

from api import crud
from api.core.config import Settings
from api.main import create_app
from api.models import MAX_ID, MetricCreate, RunCreate
from benchmarks import postgres_server as postgres
from tests.utils.databases import KINDS, run_sql
from tests.utils.factories import METRIC_NAMES, metric_points, run_payload

pytestmark = pytest.mark.timeout(120)

TOKEN = "fuzz-token"
WRITES = {"POST", "PUT", "PATCH", "DELETE"}
SEEDED_SCHEMES = ("qsgd", "fp32", "dqsgd")
SEEDED_RUNS = len(SEEDED_SCHEMES)
FUZZ = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,  # the same cases every run: a failure here is reproducible
)


def _aim_at_stored_runs(_context, path_parameters):
    """Most generated run ids would be 404s: fold valid ones onto the seeded runs (and
    one missing id) so request bodies get validated too; keep out-of-range ids as they are."""
    if not path_parameters:
        return path_parameters
    run_id = path_parameters.get("run_id")
    if isinstance(run_id, int) and not isinstance(run_id, bool) and 1 <= run_id <= MAX_ID:
        path_parameters["run_id"] = run_id % (SEEDED_RUNS + 1) + 1
    return path_parameters


def _undecodable_json(response) -> bool:
    if response.status_code != 422:
        return False
    return [error["type"] for error in response.json()["detail"]] == ["json_invalid"]


def _database_url(kind: str) -> str:
    if kind == "postgresql":
        return postgres.shared_server().fresh_database()
    return f"sqlite:///{Path(_DATA.name) / f'runs-{len(list(Path(_DATA.name).iterdir()))}.db'}"


def _fuzzed_app(kind: str, **overrides):
    """An app on a new database of ``kind`` (SQLite files go in a temporary directory,
    removed at exit), with runs seeded, and its schema. The schema must exist when the
    module is collected, so this runs at import, not in a fixture; schemathesis keeps the
    app's lifespan running."""
    url = _database_url(kind)
    app = create_app(Settings(_env_file=None, DATABASE_URL=url, **overrides))
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    with Session(app.state.engine) as session:
        for scheme in SEEDED_SCHEMES:
            run = crud.create_run(session=session, run_in=RunCreate(**run_payload(scheme)))
            points = [MetricCreate(**point) for point in metric_points(scheme, steps=20)]
            crud.create_metrics(session=session, db_run=run, points=points)
    schema.hook("map_path_parameters")(_aim_at_stored_runs)
    return schema, url


def _no_server_error(case):
    case.call_and_validate(
        checks=[
            not_a_server_error,
            response_schema_conformance,
            status_code_conformance,
            content_type_conformance,
        ]
    )


def _no_write_without_the_token(case):
    response = case.call()  # no Authorization header
    assert response.status_code < 500, response.text
    if case.method.upper() in WRITES:
        # Refused: 401 from the token check, or earlier, when FastAPI cannot even parse
        # the body (400/422) or the path takes no such method (405). Never a success;
        # the next test checks that nothing was stored.
        assert response.status_code in (400, 401, 405, 422), (case.method, case.path)
        if response.status_code == 422:
            assert _undecodable_json(response), response.text


def _fuzz(schema, check):
    """A test running ``check`` on every case schemathesis generates from ``schema``."""

    @schema.parametrize()
    @FUZZ
    def test(case):
        check(case)

    return test


def _nothing_written(database: str):
    def test():
        assert run_sql(database, "SELECT count(*) FROM run") == [(SEEDED_RUNS,)]
        assert run_sql(database, "SELECT count(*) FROM metric") == [
            (SEEDED_RUNS * 20 * len(METRIC_NAMES),)
        ]

    return test


_DATA = tempfile.TemporaryDirectory(prefix="lq-fuzz-")

# For each database: the fuzz tests, then the check of what was stored (pytest keeps a
# module's order). Named test_..._on_<database>.
for _kind in KINDS:
    if _kind == "postgresql" and postgres.unavailable() is not None:
        continue
    _open, _ = _fuzzed_app(_kind, API_TOKEN=None)
    _token, _token_database = _fuzzed_app(_kind, API_TOKEN=TOKEN)
    globals().update(
        {
            f"test_no_input_makes_a_server_error_on_{_kind}": _fuzz(_open, _no_server_error),
            f"test_with_a_token_no_write_gets_through_on_{_kind}": _fuzz(
                _token, _no_write_without_the_token
            ),
            f"test_nothing_was_written_without_the_token_on_{_kind}": _nothing_written(
                _token_database
            ),
        }
    )


@pytest.mark.skipif(postgres.unavailable() is None, reason="PostgreSQL is fuzzed above")
def test_fuzzing_on_postgresql():
    pytest.skip(str(postgres.unavailable()))
