"""Schema migrations, on each database: the shipped revisions build the tables and keep
stored data."""

import os
import subprocess
import sys
from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from fastapi.testclient import TestClient
from sqlalchemy import inspect
from sqlmodel import SQLModel

from api.core.config import Settings
from api.core.db import alembic_config, create_db_engine, init_db
from api.main import create_app
from api.models import RunCreate, RunUpdate
from tests.api.conftest import API
from tests.utils.databases import run_sql
from tests.utils.factories import metric_batch, run_payload

REPO_ROOT = Path(__file__).resolve().parents[2]


def _tables(url: str) -> set[str]:
    engine = create_db_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_alembic_upgrade_head_on_an_empty_database_creates_the_tables(db_url):
    env = {key: value for key, value in os.environ.items() if not key.startswith("LQ_")}
    result = subprocess.run(
        [sys.executable, "-m", "alembic", "-c", "api/alembic.ini", "upgrade", "head"],
        cwd=REPO_ROOT,
        env={**env, "LQ_DATABASE_URL": db_url},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert {"run", "run_tag", "metric", "alembic_version"} <= _tables(db_url)
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert run_sql(db_url, "SELECT version_num FROM alembic_version") == [(head,)]


def test_the_migrations_build_exactly_the_models_schema(db_url):
    engine = create_db_engine(db_url)
    init_db(engine)
    with engine.connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection), SQLModel.metadata)
    engine.dispose()
    assert diff == [], "models and migrations differ: write a new revision"


def test_no_text_the_api_accepts_is_longer_than_its_column():
    # SQLite ignores VARCHAR(n); PostgreSQL refuses a longer value with a server error
    lengths = {
        c.name: getattr(c.type, "length", None) for c in SQLModel.metadata.tables["run"].columns
    }
    for model in (RunCreate, RunUpdate):
        schema = model.model_json_schema()
        for name, field in schema["properties"].items():
            if lengths.get(name) is None:
                continue  # not a VARCHAR(n) column
            if name == "status":  # an enum of short words
                assert all(len(v) <= lengths[name] for v in schema["$defs"]["RunStatus"]["enum"])
                continue
            limits = [field, *field.get("anyOf", [])]
            longest = next((s["maxLength"] for s in limits if "maxLength" in s), None)
            assert longest is not None and longest <= lengths[name], (model.__name__, name)


def test_upgrading_revision_by_revision_keeps_a_stored_run(db_url):
    engine = create_db_engine(db_url)
    revisions = [
        script.revision
        for script in reversed(list(ScriptDirectory.from_config(alembic_config()).walk_revisions()))
    ]
    init_db(engine, revisions[0])
    # a run and a metric written with the first schema's columns only; the first release
    # kept a run's idempotency key as a tag, and its total_wire_bytes
    run_sql(
        db_url,
        "INSERT INTO run (id, name, tags, status, created_at, updated_at, scheme, "
        "strategy_config, quantizer_config, hyperparameters, versions, summary, "
        "total_wire_bytes) VALUES "
        "(7, 'old', '[\"x\", \"run-key:abc123\"]', 'finished', '2024-01-01 00:00:00', "
        "'2024-01-01 00:00:00', 'qsgd', '{}', '{}', '{}', '{}', '{}', 640)",
    )
    run_sql(db_url, "INSERT INTO run_tag (run_id, tag) VALUES (7, 'x')")
    run_sql(db_url, "INSERT INTO run_tag (run_id, tag) VALUES (7, 'run-key:abc123')")
    run_sql(db_url, "INSERT INTO metric (run_id, name, step, value) VALUES (7, 'loss', 0, 1.5)")
    for revision in revisions[1:]:
        init_db(engine, revision)
    engine.dispose()
    with TestClient(create_app(Settings(_env_file=None, DATABASE_URL=db_url))) as c:
        run = c.get(f"{API}/runs/7").json()
        assert (run["name"], run["scheme"], run["tags"]) == ("old", "qsgd", ["x"])
        assert run["created_at"] == "2024-01-01T00:00:00Z"
        assert run["run_key"] == "abc123" and run["total_payload_bytes"] == 640
        assert c.get(f"{API}/runs", params={"run_key": "abc123"}).json()["count"] == 1
        assert c.get(f"{API}/runs", params={"tag": "run-key:abc123"}).json()["count"] == 0
        assert c.get(f"{API}/runs/7/metrics").json()["data"][0]["value"] == 1.5
        # the next id the database hands out is past the one inserted by hand
        assert c.post(f"{API}/runs", json=run_payload()).json()["id"] != 7


def test_restarting_the_app_upgrades_again_and_keeps_runs_and_metrics(db_url):
    settings = Settings(_env_file=None, DATABASE_URL=db_url)
    with TestClient(create_app(settings)) as client:
        run = client.post(f"{API}/runs", json=run_payload("nuqsgd")).json()
        client.post(f"{API}/runs/{run['id']}/metrics", json=metric_batch(steps=10))
        run = client.get(f"{API}/runs/{run['id']}").json()
        metrics = client.get(f"{API}/runs/{run['id']}/metrics").json()
    for _ in range(2):
        with TestClient(create_app(settings)) as client:
            assert client.get(f"{API}/runs/{run['id']}").json() == run
            assert client.get(f"{API}/runs/{run['id']}/metrics").json() == metrics
            assert client.get("/health").json()["schema_revision"] is not None


def test_the_default_database_is_a_file_in_the_data_dir_created_on_start(tmp_path, monkeypatch):
    data_dir = tmp_path / "not" / "there" / "yet"
    monkeypatch.setenv("LQ_DATA_DIR", str(data_dir))
    monkeypatch.delenv("LQ_DATABASE_URL", raising=False)
    settings = Settings(_env_file=None)
    assert settings.SQLALCHEMY_DATABASE_URI == f"sqlite:///{data_dir / 'lightning_quant.db'}"
    with TestClient(create_app(settings)) as client:
        assert client.post(f"{API}/runs", json=run_payload()).status_code == 201
    assert "run" in _tables(f"sqlite:///{data_dir / 'lightning_quant.db'}")


def test_sqlite_connections_use_wal_and_normal_sync(tmp_path):
    engine = create_db_engine(f"sqlite:///{tmp_path / 'wal.db'}")
    init_db(engine)
    with engine.connect() as connection:
        pragma = connection.exec_driver_sql
        assert pragma("PRAGMA journal_mode").scalar() == "wal"
        assert pragma("PRAGMA synchronous").scalar() == 1  # NORMAL
        assert pragma("PRAGMA foreign_keys").scalar() == 1
    engine.dispose()


def test_settings_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("LQ_DATABASE_URL", "postgresql+psycopg://u:p@db/runs")
    monkeypatch.setenv("LQ_API_TOKEN", "t0k")
    monkeypatch.setenv("LQ_MAX_BATCH_POINTS", "500")
    settings = Settings(_env_file=None)
    assert settings.SQLALCHEMY_DATABASE_URI == "postgresql+psycopg://u:p@db/runs"
    assert (settings.API_TOKEN, settings.MAX_BATCH_POINTS) == ("t0k", 500)
