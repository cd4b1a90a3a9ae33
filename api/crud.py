"""Database operations of the run store; every function takes keyword-only arguments.

Functions return ``None`` for a missing row and leave the 404 to the route.
"""

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Row,
    case,
    delete,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlmodel import Session, col

from api.models import (
    Metric,
    MetricCreate,
    Run,
    RunCreate,
    RunFilters,
    RunStatus,
    RunSummary,
    RunTag,
    RunUpdate,
    SortOrder,
    utc_now,
)

__all__ = [
    "compare_runs",
    "create_metrics",
    "create_run",
    "delete_run",
    "get_run",
    "get_run_by_key",
    "list_metric_names",
    "list_runs",
    "read_metrics",
    "update_run",
]

_FINAL_STATUSES = (RunStatus.finished, RunStatus.failed)


# ---------------------------------------------------------------------------------------
# Runs
# ---------------------------------------------------------------------------------------


def _fill_derived(run: Run, *, changed: Iterable[str], now: datetime) -> None:
    """Fill in what follows from the fields just set, unless the client set it too."""
    changed = set(changed)
    if run.status in _FINAL_STATUSES and run.finished_at is None:
        run.finished_at = now
    derived_from = {"total_raw_bytes", "total_sent_bytes", "world_size"}
    if changed & derived_from and "compression_ratio" not in changed:
        run.compression_ratio = derived_compression_ratio(
            run.total_raw_bytes, run.total_sent_bytes, run.world_size
        )


def derived_compression_ratio(raw: int | None, sent: int | None, n: int | None) -> float | None:
    """What fp32 DDP's ring all-reduce sends at this world size over what the run sent: the
    library's ``lightning_quant.figures.compression_ratio`` (a test checks they agree; the
    API does not import the library)."""
    if raw is None or not sent or not n:
        return None
    return 2 * (n - 1) / n * raw / sent


def _set_tags(*, session: Session, run: Run) -> None:
    session.execute(delete(RunTag).where(col(RunTag.run_id) == run.id))
    session.add_all(RunTag(run_id=run.id, tag=tag) for tag in run.tags)  # type: ignore[arg-type]


def create_run(*, session: Session, run_in: RunCreate) -> Run:
    """Store a new run; ``finished_at`` and ``compression_ratio`` are filled in if left out."""
    now = utc_now()
    db_run = Run.model_validate(run_in, update={"created_at": now, "updated_at": now})
    _fill_derived(db_run, changed=run_in.model_fields_set, now=now)
    session.add(db_run)
    session.flush()  # assigns the id the tag rows refer to
    _set_tags(session=session, run=db_run)
    session.commit()
    session.refresh(db_run)
    return db_run


def get_run_by_key(*, session: Session, run_key: str) -> Run | None:
    """Return the run stored under the idempotency key, or ``None``."""
    return session.scalars(select(Run).where(col(Run.run_key) == run_key)).first()


def get_run(*, session: Session, run_id: int) -> Run | None:
    """Return the run, or ``None``."""
    return session.get(Run, run_id)


def _run_conditions(filters: RunFilters) -> list[ColumnElement[bool]]:
    conditions: list[ColumnElement[bool]] = []
    for column, values in (
        (Run.scheme, filters.scheme),
        (Run.bits, filters.bits),
        (Run.coding, filters.coding),
        (Run.collective, filters.collective),
        (Run.topology, filters.topology),
        (Run.status, [status.value for status in filters.status]),
        (Run.dataset, filters.dataset),
        (Run.model_name, filters.model),
    ):
        if values:
            conditions.append(col(column).in_(values))
    if filters.run_key is not None:
        conditions.append(col(Run.run_key) == filters.run_key)
    for tag in filters.tag:
        tagged = select(RunTag.run_id).where(col(RunTag.tag) == tag)
        conditions.append(col(Run.id).in_(tagged))
    return conditions


def list_runs(
    *, session: Session, filters: RunFilters, offset: int = 0, limit: int | None = None
) -> tuple[Sequence[Run], int]:
    """Return one page of the runs matching ``filters``, sorted, and how many match in all."""
    conditions = _run_conditions(filters)
    count = session.scalar(select(func.count()).select_from(Run).where(*conditions)) or 0
    sort_column = col(getattr(Run, filters.sort.value))
    if filters.order is SortOrder.asc:
        order_by = (sort_column.asc().nulls_last(), col(Run.id).asc())
    else:
        order_by = (sort_column.desc().nulls_last(), col(Run.id).desc())
    statement = select(Run).where(*conditions).order_by(*order_by).offset(offset).limit(limit)
    return session.scalars(statement).all(), count


def update_run(*, session: Session, db_run: Run, run_in: RunUpdate) -> Run:
    """Change the fields sent in ``run_in`` (JSON fields are replaced, not merged)."""
    update_data = run_in.model_dump(exclude_unset=True)
    db_run.sqlmodel_update(update_data)
    db_run.updated_at = now = utc_now()
    _fill_derived(db_run, changed=update_data, now=now)
    if "tags" in update_data:
        _set_tags(session=session, run=db_run)
    session.add(db_run)
    session.commit()
    session.refresh(db_run)
    return db_run


def delete_run(*, session: Session, db_run: Run) -> None:
    """Delete the run with its metrics and tags."""
    # Explicit, so it does not depend on the database enforcing ON DELETE CASCADE.
    session.execute(delete(Metric).where(col(Metric.run_id) == db_run.id))
    session.execute(delete(RunTag).where(col(RunTag.run_id) == db_run.id))
    session.delete(db_run)
    session.commit()


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def _difference(value: float | None, baseline: float | None) -> float | None:
    if value is None or baseline is None:
        return None
    return value - baseline


def compare_runs(
    *, session: Session, ids: Sequence[int], baseline_id: int
) -> tuple[list[RunSummary], list[int]]:
    """Summarize the runs ``ids`` beside the baseline, in the order asked.

    Returns the summaries and the ids that were not found (summaries are empty then).
    """
    runs = {run.id: run for run in session.scalars(select(Run).where(col(Run.id).in_(ids)))}
    missing = [run_id for run_id in ids if run_id not in runs]
    if missing:
        return [], missing
    baseline = runs[baseline_id]
    summaries = []
    for run_id in ids:
        run = runs[run_id]
        summary = RunSummary.model_validate(run)
        summary.speedup = _ratio(baseline.mean_step_s, run.mean_step_s)
        summary.sent_bytes_ratio = _ratio(run.total_sent_bytes, baseline.total_sent_bytes)
        summary.loss_delta = _difference(run.final_loss, baseline.final_loss)
        summary.accuracy_delta = _difference(run.final_accuracy, baseline.final_accuracy)
        error = _difference(run.predicted_step_s, run.mean_step_s)
        summary.prediction_error = _ratio(error, run.mean_step_s)
        summaries.append(summary)
    return summaries, []


# ---------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------


def _insert_ignoring_duplicates(*, session: Session, rows: list[dict[str, Any]]) -> int:
    """Insert metric rows in one statement, skipping keys already stored; return the count."""
    table = Metric.__table__
    dialect = session.get_bind().dialect
    if dialect.name == "sqlite":
        statement = sqlite_insert(table).on_conflict_do_nothing()
    elif dialect.name == "postgresql" and dialect.driver == "psycopg":
        return _copy_ignoring_duplicates(session=session, rows=rows)
    else:  # portable fallback: drop the keys already stored, then a plain insert
        run_id = rows[0]["run_id"]
        stored = set(
            session.execute(
                select(Metric.name, Metric.step).where(col(Metric.run_id) == run_id)
            ).all()
        )
        unique = {(row["name"], row["step"]): row for row in rows}
        rows = [row for key, row in unique.items() if key not in stored]
        if not rows:
            return 0
        statement = insert(table)
    result = session.execute(statement, rows)
    return max(result.rowcount, 0)  # type: ignore[attr-defined]


def _copy_ignoring_duplicates(*, session: Session, rows: list[dict[str, Any]]) -> int:
    """PostgreSQL with psycopg: COPY streams the batch in one round trip, several times
    faster than a multi-row insert. A new batch, the usual case, is copied straight into
    the table inside a savepoint. A batch holding a key already stored (a retry) is copied
    instead into a staging table private to this connection, and its new rows move over in
    one ``INSERT ... SELECT ... ON CONFLICT DO NOTHING``."""
    from psycopg.errors import UniqueViolation  # psycopg is an optional extra

    columns = ", ".join(rows[0])
    connection = session.connection()
    cursor = connection.connection.cursor()  # psycopg's, in this transaction

    def copy_into(table: str) -> None:
        with cursor.copy(f"COPY {table} ({columns}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(tuple(row.values()))

    try:
        with connection.begin_nested():  # SAVEPOINT, rolled back on a duplicate key
            copy_into("metric")
        return len(rows)
    except UniqueViolation:
        pass
    cursor.execute(
        "CREATE TEMPORARY TABLE IF NOT EXISTS metric_incoming (LIKE metric) ON COMMIT DELETE ROWS"
    )
    copy_into("metric_incoming")
    cursor.execute(
        f"INSERT INTO metric ({columns}) SELECT {columns} FROM metric_incoming "
        "ON CONFLICT DO NOTHING"
    )
    return max(cursor.rowcount, 0)


def create_metrics(*, session: Session, db_run: Run, points: Sequence[MetricCreate]) -> int:
    """Store each step's named values for the run; values already stored are kept as they
    are, so a retried batch changes nothing. Return how many values were new."""
    run_id = db_run.id
    rows = [
        {
            "run_id": run_id,
            "name": name,
            "step": point.step,
            "value": value,
            "epoch": point.epoch,
            "wall_time": point.wall_time,
        }
        for point in points
        for name, value in point.values.items()
    ]
    if not rows:
        return 0
    inserted = _insert_ignoring_duplicates(session=session, rows=rows)
    session.execute(update(Run).where(col(Run.id) == db_run.id).values(updated_at=utc_now()))
    session.commit()
    return inserted


def _metric_conditions(
    *, run_id: int, names: Sequence[str], step_min: int | None, step_max: int | None
) -> list[ColumnElement[bool]]:
    conditions = [col(Metric.run_id) == run_id]
    if names:
        conditions.append(col(Metric.name).in_(names))
    if step_min is not None:
        conditions.append(col(Metric.step) >= step_min)
    if step_max is not None:
        conditions.append(col(Metric.step) <= step_max)
    return conditions


def read_metrics(
    *,
    session: Session,
    run_id: int,
    names: Sequence[str] = (),
    step_min: int | None = None,
    step_max: int | None = None,
    max_points: int | None = None,
) -> Sequence[Row[Any]]:
    """Return (name, step, value, epoch, wall_time) rows ordered by name and step.

    With ``max_points``, each metric keeps at most that many points, evenly spread over
    its steps and always including the first and the last: of a series of ``n`` points
    (``n > max_points``) the ``r``-th (from 0) is kept when ``floor(r * (m-1) / (n-1))``
    moves on, i.e. when ``r * (m-1) mod (n-1) < m-1`` for ``m = max_points``. The
    database numbers the rows with a window function, so only kept points leave it.
    """
    conditions = _metric_conditions(
        run_id=run_id, names=names, step_min=step_min, step_max=step_max
    )
    columns = (Metric.name, Metric.step, Metric.value, Metric.epoch, Metric.wall_time)
    plain = select(*columns).where(*conditions).order_by(col(Metric.name), col(Metric.step))
    if max_points is None:
        return session.execute(plain).all()
    if max_points < 2:
        raise ValueError("max_points must be at least 2 (the first and the last point)")
    counts = dict(
        session.execute(
            select(Metric.name, func.count()).where(*conditions).group_by(Metric.name)
        ).all()
    )
    too_long = {name: n for name, n in counts.items() if n > max_points}
    if not too_long:
        return session.execute(plain).all()
    gaps = max_points - 1
    rank = func.row_number().over(partition_by=Metric.name, order_by=Metric.step) - 1
    numbered = select(*columns, rank.label("r")).where(*conditions).subquery()
    # n - 1 for the series to thin out; NULL (keep every point) for the others
    last_rank = case(
        {name: n - 1 for name, n in too_long.items()}, value=numbered.c.name, else_=None
    )
    kept = or_(last_rank.is_(None), (numbered.c.r * gaps) % last_rank < gaps)
    statement = (
        select(*(numbered.c[column.key] for column in columns))
        .where(kept)
        .order_by(numbered.c.name, numbered.c.step)
    )
    return session.execute(statement).all()


def list_metric_names(*, session: Session, run_id: int) -> list[str]:
    """Return the names of the metrics stored for the run, sorted."""
    statement = (
        select(Metric.name).where(col(Metric.run_id) == run_id).distinct().order_by(Metric.name)
    )
    return list(session.scalars(statement))
