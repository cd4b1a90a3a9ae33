"""A run's metrics: post batches (idempotent), read (filtered, downsampled), export."""

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request, Response, status

from api import crud
from api.core.db import SessionDep
from api.core.security import WriteAccess
from api.csv_export import csv_response
from api.deps import NOT_FOUND, WRITE_ERRORS, RunDep
from api.models import (
    MAX_INT,
    MetricNames,
    MetricNamesPublic,
    MetricsCreate,
    MetricsCreated,
    MetricsPublic,
)

router = APIRouter(prefix="/runs/{run_id}/metrics", tags=["metrics"])

CSV_COLUMNS = ["step", "name", "value", "epoch", "wall_time"]

Names = Annotated[
    MetricNames, Query(description="Metric names, comma-separated or repeated (default: all)")
]
StepMin = Annotated[int | None, Query(ge=0, le=MAX_INT, description="First step to include")]
StepMax = Annotated[int | None, Query(ge=0, le=MAX_INT, description="Last step to include")]


@router.post(
    "",
    response_model=MetricsCreated,
    dependencies=[WriteAccess],
    responses={**NOT_FOUND, **WRITE_ERRORS},
)
def create_metrics(
    *, request: Request, session: SessionDep, db_run: RunDep, metrics_in: MetricsCreate
) -> Any:
    """Store a batch of steps; values already stored for a (step, name) are kept, so
    retrying a batch is safe."""
    received = sum(len(point.values) for point in metrics_in.points)
    limit = request.app.state.settings.MAX_BATCH_POINTS
    if received > limit:
        raise HTTPException(
            status_code=status.HTTP_413_CONTENT_TOO_LARGE,
            detail=f"points: the batch has {received} metric values, the limit is {limit} "
            "per request (LQ_MAX_BATCH_POINTS); split it",
        )
    inserted = crud.create_metrics(session=session, db_run=db_run, points=metrics_in.points)
    return MetricsCreated(received=received, inserted=inserted)


@router.get("", response_model=MetricsPublic, responses=NOT_FOUND)
def read_metrics(
    session: SessionDep,
    db_run: RunDep,
    names: Names = [],  # noqa: B006 - FastAPI copies defaults
    step_min: StepMin = None,
    step_max: StepMax = None,
    max_points: Annotated[
        int | None,
        Query(
            ge=2,
            le=100_000,
            description="Downsample each metric to at most this many points, evenly, "
            "keeping the first and the last",
        ),
    ] = 1000,
) -> Any:
    """Read a run's metrics in long format, each metric downsampled to max_points."""
    rows = crud.read_metrics(
        session=session,
        run_id=db_run.id,  # type: ignore[arg-type]
        names=names,
        step_min=step_min,
        step_max=step_max,
        max_points=max_points,
    )
    return MetricsPublic(data=rows, count=len(rows))  # type: ignore[arg-type]


@router.get("/names", response_model=MetricNamesPublic, responses=NOT_FOUND)
def read_metric_names(session: SessionDep, db_run: RunDep) -> Any:
    """List the names of the metrics stored for a run."""
    names = crud.list_metric_names(session=session, run_id=db_run.id)  # type: ignore[arg-type]
    return MetricNamesPublic(data=names, count=len(names))


@router.get(
    "/export.csv",
    response_class=Response,
    responses={
        200: {"content": {"text/csv": {}}, "description": "One row per (step, name)"},
        **NOT_FOUND,
    },
)
def export_metrics(
    session: SessionDep,
    db_run: RunDep,
    names: Names = [],  # noqa: B006 - FastAPI copies defaults
    step_min: StepMin = None,
    step_max: StepMax = None,
) -> Response:
    """Export a run's metrics as CSV in long format (step, name, value, epoch, wall_time);
    a name a spreadsheet would read as a formula starts with ``'``."""
    rows = crud.read_metrics(
        session=session,
        run_id=db_run.id,  # type: ignore[arg-type]
        names=names,
        step_min=step_min,
        step_max=step_max,
    )
    cells = ([getattr(row, column) for column in CSV_COLUMNS] for row in rows)
    return csv_response(CSV_COLUMNS, cells, f"run-{db_run.id}-metrics.csv")
