"""Alembic environment for the run store.

The app runs it on startup through ``api.core.db.init_db`` (which hands over an open
connection); on the command line, ``alembic -c api/alembic.ini upgrade head`` migrates
the database named by ``LQ_DATABASE_URL`` (or the SQLite file in ``LQ_DATA_DIR``).
"""

from logging.config import fileConfig
from typing import Any

from alembic import context
from sqlmodel import SQLModel
from sqlmodel.sql.sqltypes import AutoString

import api.models  # noqa: F401 - registers the tables on SQLModel.metadata
from api.core.config import settings
from api.core.db import create_db_engine

target_metadata = SQLModel.metadata

if context.config.config_file_name is not None:  # the command line, not the app
    fileConfig(context.config.config_file_name, disable_existing_loggers=False)


def _render_item(kind: str, obj: Any, _autogen_context: Any) -> str | bool:
    """Write SQLModel's ``AutoString`` as plain ``sa.String`` in generated revisions."""
    if kind == "type" and isinstance(obj, AutoString):
        return f"sa.String(length={obj.length})" if obj.length else "sa.String()"
    return False


def run_migrations_offline() -> None:
    """Emit the migration SQL without a database (``alembic upgrade head --sql``)."""
    url = context.config.get_main_option("sqlalchemy.url") or settings.SQLALCHEMY_DATABASE_URI
    context.configure(
        url=url,
        target_metadata=target_metadata,
        literal_binds=True,
        render_as_batch=url.startswith("sqlite"),
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    """Migrate through the connection handed over by the app, or a new one."""
    connection = context.config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    url = context.config.get_main_option("sqlalchemy.url") or settings.SQLALCHEMY_DATABASE_URI
    engine = create_db_engine(url)
    try:
        with engine.begin() as new_connection:
            _run(new_connection)
    finally:
        engine.dispose()


def _run(connection: Any) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        # SQLite cannot ALTER most things: later migrations copy the table instead.
        render_as_batch=connection.dialect.name == "sqlite",
        render_item=_render_item,
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
