"""Tables and request/response schemas of the run store.

Two families, as in the FastAPI full-stack template:

* runs: ``RunBase`` -> ``Run`` (table), ``RunCreate``, ``RunUpdate``, ``RunPublic``,
  ``RunsPublic`` (data, count); ``RunTag`` indexes tags for filtering;
  ``RunComparison`` is the side-by-side view of several runs.
* metrics, stored in long format, one row per (run_id, name, step):
  ``MetricBase`` -> ``Metric`` (table), ``MetricCreate`` (one step with named values),
  ``MetricsCreate`` (a batch), ``MetricsCreated``, ``MetricPublic``, ``MetricsPublic``.

Every value that reaches the database is bounded here, so bad input is a 422 that names
the field and never a database error: integers fit a signed 64-bit column, floats are
finite (JSON has no NaN), text is valid Unicode, JSON objects are finite and shallow.
"""

from api.models.metrics import (
    Metric,
    MetricBase,
    MetricCreate,
    MetricNamesPublic,
    MetricPublic,
    MetricsCreate,
    MetricsCreated,
    MetricsPublic,
)
from api.models.runs import (
    Run,
    RunBase,
    RunComparison,
    RunCreate,
    RunFilters,
    RunPublic,
    RunSortField,
    RunsPublic,
    RunStatus,
    RunSummary,
    RunTag,
    RunUpdate,
    SortOrder,
)
from api.models.service import Health
from api.models.types import MAX_ID, MAX_INT, Ids, MetricNames, utc_now

__all__ = [
    "MAX_ID",
    "MAX_INT",
    "Health",
    "Ids",
    "Metric",
    "MetricBase",
    "MetricCreate",
    "MetricNames",
    "MetricNamesPublic",
    "MetricPublic",
    "MetricsCreate",
    "MetricsCreated",
    "MetricsPublic",
    "Run",
    "RunBase",
    "RunComparison",
    "RunCreate",
    "RunFilters",
    "RunPublic",
    "RunSortField",
    "RunStatus",
    "RunSummary",
    "RunTag",
    "RunUpdate",
    "RunsPublic",
    "SortOrder",
    "utc_now",
]
