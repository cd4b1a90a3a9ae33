"""CSV answers that are safe to open in a spreadsheet.

A cell that begins with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return is read as
a formula by spreadsheet programs (CSV injection). As OWASP recommends, such text cells
get a leading ``'``, which shows the text as it is; numbers are written as numbers, a
negative one included. Lists and objects are JSON text, booleans ``true``/``false``.
"""

import csv
import io
import json
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from fastapi import Response

__all__ = ["FORMULA_STARTS", "csv_cell", "csv_response"]

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: Any) -> Any:
    """Return ``value`` as a CSV cell: text neutralized, numbers as they are."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"  # as JSON writes them
    if isinstance(value, int | float):
        return value
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, list | dict):
        value = json.dumps(value, separators=(",", ":"))
    text = str(value)
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def csv_response(columns: Sequence[str], rows: Iterable[Sequence[Any]], filename: str) -> Response:
    """Answer with ``rows`` under a header of ``columns``, as a CSV attachment."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(columns)
    writer.writerows([csv_cell(value) for value in row] for row in rows)
    return Response(
        content=buffer.getvalue(),
        media_type="text/csv",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )
