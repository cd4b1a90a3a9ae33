"""Value types shared by the run store's schemas: every value that reaches the database
is bounded here, so bad input is a 422 that names the field and never a database error."""

import math
from datetime import UTC, datetime
from typing import Annotated, Any

from annotated_types import Ge, Le
from pydantic import (
    AfterValidator,
    BeforeValidator,
    FiniteFloat,
    StringConstraints,
)

__all__ = [
    "MAX_ID", "MAX_INT", "Bits", "BitsList", "Count", "Id", "Ids", "JsonObject", "Label", "Labels",
    "MetricName", "MetricNames", "Ratio", "RunKey", "Scheme", "Seconds", "Tag", "TagList",
    "Tags", "Text", "Topologies", "Topology", "UtcDatetime", "split_commas", "utc_now",
]  # fmt: skip

MAX_INT = 2**63 - 1  # the largest value of a signed 64-bit (BIGINT) column
MAX_ID = 2**31 - 1  # the largest id: ids are 32-bit INTEGER columns (SERIAL in PostgreSQL)
MAX_JSON_DEPTH = 32


def utc_now() -> datetime:
    """Return the current time, timezone-aware, in UTC."""
    return datetime.now(UTC)


# ---------------------------------------------------------------------------------------
# Value types shared by both families
# ---------------------------------------------------------------------------------------


def _check_text(value: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode text (no lone surrogates)") from None
    if "\x00" in value:
        raise ValueError("must not contain NUL characters (PostgreSQL text cannot hold them)")
    return value


def _check_label(value: str) -> str:
    if "," in value:
        raise ValueError("must not contain ',' (commas separate values in filters)")
    return _check_text(value)


def _check_json(value: Any, depth: int = 0) -> None:
    if depth > MAX_JSON_DEPTH:
        raise ValueError(f"must not nest deeper than {MAX_JSON_DEPTH} levels")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("must not contain NaN or infinity (JSON has no such numbers)")
    if isinstance(value, str):
        _check_text(value)
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_text(key)
            _check_json(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _check_json(item, depth + 1)


def _check_json_object(value: dict[str, Any]) -> dict[str, Any]:
    _check_json(value)
    return value


def _dedupe(values: list[str]) -> list[str]:
    return list(dict.fromkeys(values))


def _as_utc(value: datetime | None) -> datetime | None:
    """Read naive datetimes as UTC and convert aware ones to UTC."""
    if value is None:
        return None
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise ValueError("is out of range once converted to UTC") from None


def split_commas(value: Any) -> Any:
    """Let a list query parameter be repeated (``?a=1&a=2``), comma-separated, or both."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        return value
    parts: list[Any] = []
    for item in value:
        if isinstance(item, str):
            parts.extend(part.strip() for part in item.split(",") if part.strip())
        else:
            parts.append(item)
    return parts


Text = Annotated[str, AfterValidator(_check_text)]
# A value runs are filtered by (scheme, tag, dataset, model): no commas.
Label = Annotated[
    str, StringConstraints(min_length=1, max_length=200), AfterValidator(_check_label)
]
Tag = Annotated[str, StringConstraints(min_length=1, max_length=64), AfterValidator(_check_label)]
Scheme = Annotated[
    str, StringConstraints(min_length=1, max_length=64), AfterValidator(_check_label)
]
JsonObject = Annotated[dict[str, Any], AfterValidator(_check_json_object)]
UtcDatetime = Annotated[datetime, AfterValidator(_as_utc)]
Count = Annotated[int, Ge(0), Le(MAX_INT)]
Seconds = Annotated[FiniteFloat, Ge(0)]
Ratio = Annotated[FiniteFloat, Ge(0)]  # a ratio of two non-negative figures
Bits = Annotated[int, Ge(1), Le(64)]
TagList = Annotated[list[Tag], AfterValidator(_dedupe)]
MetricName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.:/\-]{1,100}$")]
RunKey = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.:\-]{1,64}$")]
# "NxL": N nodes of L ranks each
Topology = Annotated[str, StringConstraints(pattern=r"^[1-9][0-9]{0,5}x[1-9][0-9]{0,5}$")]
Topologies = Annotated[list[Topology], BeforeValidator(split_commas)]

# List query parameters that may be repeated (``?a=1&a=2``), comma-separated, or both.
Labels = Annotated[list[Label], BeforeValidator(split_commas)]
Tags = Annotated[list[Tag], BeforeValidator(split_commas)]
BitsList = Annotated[list[Bits], BeforeValidator(split_commas)]
Id = Annotated[int, Ge(1), Le(MAX_ID)]
Ids = Annotated[list[Id], BeforeValidator(split_commas)]
MetricNames = Annotated[list[MetricName], BeforeValidator(split_commas)]
