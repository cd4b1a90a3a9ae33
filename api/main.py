"""The run store's FastAPI app: ``uvicorn api.main:app``.

Routes live under ``/api/v1`` (``/api/v1/runs``, ``/api/v1/runs/{run_id}/metrics``);
``/health`` and the OpenAPI pages (``/docs``, ``/openapi.json``) are at the root.
"""

import logging
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, FastAPI, Request, status
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from sqlalchemy.exc import InterfaceError, OperationalError

from api.core.config import Settings
from api.core.config import settings as default_settings
from api.core.db import create_db_engine, init_db
from api.core.security import ReadAccess
from api.deps import UNAUTHORIZED
from api.routes import health, metrics, runs
from api.routes.health import VERSION

__all__ = ["UNAVAILABLE", "api_router", "app", "create_app"]

log = logging.getLogger("api")
# What a client hears when the database fails; the driver's own text (which can name the
# host, the user or the SQL) goes to the server's log only.
UNAVAILABLE = "The database is unavailable; try again later."

api_router = APIRouter(dependencies=[ReadAccess], responses=UNAUTHORIZED)
api_router.include_router(runs.router)
api_router.include_router(metrics.router)


def _operation_id(route: APIRoute) -> str:
    return f"{route.tags[0]}-{route.name}"


def _json_safe(value: Any) -> Any:
    """Make echoed input writable as strict UTF-8 JSON: NaN and lone surrogates are not."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, str):
        return value.encode("utf-8", "replace").decode("utf-8")
    if isinstance(value, dict):
        return {_json_safe(key): _json_safe(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_json_safe(item) for item in value]
    return value


async def _validation_error(_request: Request, error: Exception) -> JSONResponse:
    """FastAPI's 422, except that the input it echoes may hold NaN or bad text."""
    assert isinstance(error, RequestValidationError)
    detail = _json_safe(jsonable_encoder(error.errors()))
    return JSONResponse(
        status_code=status.HTTP_422_UNPROCESSABLE_CONTENT, content={"detail": detail}
    )


async def _database_unavailable(request: Request, error: Exception) -> JSONResponse:
    log.error("database unavailable for %s %s: %s", request.method, request.url.path, error)
    return JSONResponse(status_code=503, content={"detail": UNAVAILABLE})


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app; the database is migrated to the newest schema when it starts."""
    settings = settings or default_settings

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = create_db_engine(settings.SQLALCHEMY_DATABASE_URI)
        init_db(engine)
        app.state.engine = engine
        yield
        engine.dispose()

    app = FastAPI(
        title=settings.PROJECT_NAME,
        version=VERSION,
        description="Stores training runs of quantized data-parallel training and their "
        "metrics. Writes need `Authorization: Bearer <token>` when the server sets "
        "LQ_API_TOKEN; reads need a token too when it sets LQ_API_READ_TOKEN.",
        lifespan=lifespan,
        generate_unique_id_function=_operation_id,
        max_body_size=settings.MAX_BODY_BYTES,
    )
    app.state.settings = settings
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(OperationalError, _database_unavailable)
    app.add_exception_handler(InterfaceError, _database_unavailable)
    app.include_router(health.router)
    app.include_router(api_router, prefix=settings.API_V1_STR)
    return app


app = create_app()
