"""The two databases the run store supports, for tests: a SQLite file and PostgreSQL.

``database_url(kind, directory)`` gives an empty database of either kind: a new SQLite
file in ``directory``, or a new database on this process's throwaway PostgreSQL server
(:func:`benchmarks.postgres_server.shared_server`). ``run_sql`` reads either past the API.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine

from benchmarks import postgres_server as postgres

__all__ = ["KINDS", "database_url", "run_sql", "skip_unless_available"]

KINDS = ("sqlite", "postgresql")


def skip_unless_available(kind: str) -> None:
    """Skip the test, with the reason, where a database of ``kind`` cannot run."""
    if kind == "postgresql" and (reason := postgres.unavailable()) is not None:
        pytest.skip(reason)


def database_url(kind: str, directory: Path) -> str:
    """Return the SQLAlchemy URL of a new, empty database of ``kind``."""
    if kind == "sqlite":
        directory.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{directory / 'runs.db'}"
    skip_unless_available(kind)
    return postgres.shared_server().fresh_database()


def run_sql(url: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    """Run ``sql`` (``?`` placeholders) on the database at ``url``; return its rows."""
    engine = create_engine(url)
    try:
        if engine.dialect.paramstyle != "qmark":
            sql = sql.replace("%", "%%").replace("?", "%s")
        with engine.begin() as connection:
            result = connection.exec_driver_sql(sql, tuple(params))
            return [tuple(row) for row in result] if result.returns_rows else []
    finally:
        engine.dispose()
