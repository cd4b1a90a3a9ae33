"""Runs: create, list (filtered, sorted, paged), compare, export, read, update, delete."""

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Response, status
from sqlalchemy.exc import IntegrityError

from api import crud
from api.core.db import SessionDep
from api.core.security import WriteAccess
from api.csv_export import csv_response
from api.deps import NOT_FOUND, UNAUTHORIZED, WRITE_ERRORS, RunDep, query_error
from api.models import (
    MAX_ID,
    MAX_INT,
    Ids,
    RunBase,
    RunComparison,
    RunCreate,
    RunFilters,
    RunPublic,
    RunsPublic,
    RunUpdate,
)

router = APIRouter(prefix="/runs", tags=["runs"])

MAX_COMPARED = 100

# The CSV columns: identity first, then the fields in the order RunBase declares them.
CSV_COLUMNS = ["id", "created_at", "updated_at", *RunBase.model_fields]


@router.post(
    "",
    response_model=RunPublic,
    status_code=status.HTTP_201_CREATED,
    dependencies=[WriteAccess],
    responses={
        **WRITE_ERRORS,
        200: {"model": RunPublic, "description": "A run with this run_key is stored already"},
    },
)
def create_run(*, session: SessionDep, run_in: RunCreate, response: Response) -> Any:
    """Create a run; with a run_key that is stored already, return that run (idempotent)."""
    if run_in.run_key is not None:
        stored = crud.get_run_by_key(session=session, run_key=run_in.run_key)
        if stored is not None:
            response.status_code = status.HTTP_200_OK
            return stored
    try:
        return crud.create_run(session=session, run_in=run_in)
    except IntegrityError:  # the same key posted twice at once: the other one won
        session.rollback()
        stored = crud.get_run_by_key(session=session, run_key=run_in.run_key or "")
        if stored is None:
            raise
        response.status_code = status.HTTP_200_OK
        return stored


@router.get("", response_model=RunsPublic)
def read_runs(
    session: SessionDep,
    filters: Annotated[RunFilters, Query()],
    offset: Annotated[int, Query(ge=0, le=MAX_INT)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> Any:
    """List runs matching the filters, sorted, one page at a time, with the total count."""
    runs, count = crud.list_runs(session=session, filters=filters, offset=offset, limit=limit)
    return RunsPublic(data=runs, count=count)  # type: ignore[arg-type]


@router.get("/compare", response_model=RunComparison, responses=NOT_FOUND)
def compare_runs(
    session: SessionDep,
    ids: Annotated[Ids, Query(description="Run ids, comma-separated or repeated: ?ids=1,2,3")],
    baseline: Annotated[
        int | None,
        Query(ge=1, le=MAX_ID, description="The run the ratios refer to (default: the first)"),
    ] = None,
) -> Any:
    """Compare the summaries of several runs side by side, with ratios to a baseline."""
    ids = list(dict.fromkeys(ids))
    if not 1 <= len(ids) <= MAX_COMPARED:
        raise query_error("ids", f"give between 1 and {MAX_COMPARED} run ids")
    baseline_id = ids[0] if baseline is None else baseline
    if baseline_id not in ids:
        raise query_error("baseline", f"must be one of the compared ids {ids}")
    summaries, missing = crud.compare_runs(session=session, ids=ids, baseline_id=baseline_id)
    if missing:
        raise HTTPException(
            status_code=status.HTTP_404_NOT_FOUND,
            detail=f"Runs not found: {', '.join(map(str, missing))}",
        )
    return RunComparison(baseline_id=baseline_id, data=summaries, count=len(summaries))


@router.get(
    "/export.csv",
    response_class=Response,
    responses={200: {"content": {"text/csv": {}}, "description": "One row per run"}},
)
def export_runs(session: SessionDep, filters: Annotated[RunFilters, Query()]) -> Response:
    """Export the runs matching the filters as CSV (lists and objects as JSON text; text
    that a spreadsheet would read as a formula starts with ``'``)."""
    runs, _ = crud.list_runs(session=session, filters=filters)
    public = (RunPublic.model_validate(run) for run in runs)
    rows = ([getattr(run, column) for column in CSV_COLUMNS] for run in public)
    return csv_response(CSV_COLUMNS, rows, "runs.csv")


@router.get("/{run_id}", response_model=RunPublic, responses=NOT_FOUND)
def read_run(db_run: RunDep) -> Any:
    """Get a run by id."""
    return db_run


@router.patch(
    "/{run_id}",
    response_model=RunPublic,
    dependencies=[WriteAccess],
    responses={**NOT_FOUND, **WRITE_ERRORS},
)
def update_run(*, session: SessionDep, db_run: RunDep, run_in: RunUpdate) -> Any:
    """Update a run's status, timestamps, figures or setup; only the fields sent change."""
    return crud.update_run(session=session, db_run=db_run, run_in=run_in)


@router.delete(
    "/{run_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    dependencies=[WriteAccess],
    responses={**NOT_FOUND, **UNAUTHORIZED},
)
def delete_run(session: SessionDep, db_run: RunDep) -> None:
    """Delete a run and all its metrics."""
    crud.delete_run(session=session, db_run=db_run)
