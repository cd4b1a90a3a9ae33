"""Dependencies and response docs shared by the routers."""

from typing import Annotated, Any

from fastapi import Depends, HTTPException, Path, status

from api import crud
from api.core.db import SessionDep
from api.models import MAX_ID, Run

__all__ = [
    "NOT_FOUND",
    "TOO_LARGE",
    "UNAUTHORIZED",
    "WRITE_ERRORS",
    "RunDep",
    "RunId",
    "get_run_or_404",
    "query_error",
]

RunId = Annotated[int, Path(ge=1, le=MAX_ID, description="The run's id")]

_MESSAGE = {
    "content": {
        "application/json": {
            "schema": {"type": "object", "properties": {"detail": {"type": "string"}}}
        }
    }
}
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"description": "No such run", **_MESSAGE}}
UNAUTHORIZED: dict[int | str, dict[str, Any]] = {
    401: {
        "description": "A token the server requires (LQ_API_TOKEN for writes, "
        "LQ_API_READ_TOKEN for everything) is missing or wrong",
        **_MESSAGE,
    }
}
TOO_LARGE: dict[int | str, dict[str, Any]] = {
    413: {"description": "The body or the batch is over the configured limit", **_MESSAGE}
}
# Every route that takes a body: the token check, unreadable bodies, the size limit.
WRITE_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"description": "The body is not UTF-8 text", **_MESSAGE},
    **UNAUTHORIZED,
    **TOO_LARGE,
}


def get_run_or_404(session: SessionDep, run_id: RunId) -> Run:
    """Return the run named in the path, or answer 404."""
    db_run = crud.get_run(session=session, run_id=run_id)
    if db_run is None:
        raise HTTPException(status_code=status.HTTP_404_NOT_FOUND, detail=f"Run {run_id} not found")
    return db_run


RunDep = Annotated[Run, Depends(get_run_or_404)]


def query_error(name: str, message: str) -> HTTPException:
    """A 422 shaped like FastAPI's own validation errors, naming the query parameter."""
    return HTTPException(
        status_code=status.HTTP_422_UNPROCESSABLE_CONTENT,
        detail=[{"loc": ["query", name], "msg": message, "type": "value_error"}],
    )
