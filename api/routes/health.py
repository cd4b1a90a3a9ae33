"""Service health."""

import logging
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from fastapi import APIRouter, Response, status
from sqlalchemy import text

from api.core.db import SessionDep
from api.models import Health

router = APIRouter(tags=["health"])
log = logging.getLogger("api")

try:
    VERSION = version("lightning-quant")
except PackageNotFoundError:  # running from a source tree that was never installed
    VERSION = "0+unknown"


@router.get(
    "/health",
    response_model=Health,
    responses={503: {"model": Health, "description": "The database does not answer"}},
)
def health(session: SessionDep, response: Response) -> Any:
    """Report whether the service and its database are up, and the version."""
    try:
        revision = session.execute(text("SELECT version_num FROM alembic_version")).scalar()
    except Exception as error:  # any database failure is the answer, not a crash
        log.error("health check: the database does not answer: %s", error)  # not to clients
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
        return Health(status="error", database="unavailable", version=VERSION, schema_revision=None)
    return Health(status="ok", database="ok", version=VERSION, schema_revision=revision)
