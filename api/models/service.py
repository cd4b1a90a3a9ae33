"""The service's own answers."""

from sqlmodel import SQLModel

__all__ = ["Health"]


class Health(SQLModel):
    status: str  # "ok", or "error" (with HTTP 503) when the database does not answer
    database: str  # "ok" or "unavailable" (the cause goes to the server log)
    version: str  # the lightning-quant package version
    schema_revision: str | None  # the Alembic revision the database is at
