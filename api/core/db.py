"""Database engine, schema migrations and the per-request session."""

from collections.abc import Generator
from pathlib import Path
from typing import Annotated, Any

from alembic import command
from alembic.config import Config
from fastapi import Depends, Request
from sqlalchemy import Engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.pool import StaticPool
from sqlmodel import Session, create_engine

__all__ = [
    "MIGRATIONS_DIR",
    "SessionDep",
    "alembic_config",
    "create_db_engine",
    "get_session",
    "init_db",
]

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"

# Applied to every new SQLite connection: WAL lets readers run beside the writer,
# synchronous=NORMAL is durable across application crashes (not power loss) in WAL mode.
_SQLITE_PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=NORMAL",
    "PRAGMA foreign_keys=ON",
    "PRAGMA busy_timeout=10000",
    "PRAGMA cache_size=-32768",
    "PRAGMA temp_store=MEMORY",
)


def _set_sqlite_pragmas(dbapi_connection: Any, _connection_record: Any) -> None:
    cursor = dbapi_connection.cursor()
    for pragma in _SQLITE_PRAGMAS:
        cursor.execute(pragma)
    cursor.close()


def create_db_engine(url: str) -> Engine:
    """Create an engine for any SQLAlchemy URL; SQLite gets WAL mode and pragmas."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True)
    in_memory = parsed.database in (None, "", ":memory:")
    engine = create_engine(
        url,
        connect_args={"check_same_thread": False},
        # Every connection to ":memory:" is a new, empty database: share one.
        poolclass=StaticPool if in_memory else None,
    )
    event.listen(engine, "connect", _set_sqlite_pragmas)
    return engine


def alembic_config(url: str | None = None) -> Config:
    """Alembic settings pointing at the migrations shipped inside the ``api`` package."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if url is not None:
        # ConfigParser interpolation: a literal "%" must be doubled.
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def init_db(engine: Engine, revision: str = "head") -> None:
    """Create the SQLite file's directory if needed and upgrade the schema to ``revision``.

    Migrations only ever add to the schema, so upgrading keeps every stored run.
    """
    database = engine.url.database
    if engine.url.get_backend_name() == "sqlite" and database not in (None, "", ":memory:"):
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    config = alembic_config()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)


def get_session(request: Request) -> Generator[Session]:
    """Yield a session on the app's engine, closed after the request."""
    with Session(request.app.state.engine) as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]
