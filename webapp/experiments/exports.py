"""Downloads of a run's data that stream, so a long run's millions of points never sit in memory.

`metrics_csv_rows` yields `(step, name, value)` tuples (after a header row) read from the database
in chunks; `metrics_csv_response` wraps them in a StreamingHttpResponse.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator

from django.http import StreamingHttpResponse

from .models import MetricPoint, Run

CSV_HEADER = ("step", "name", "value")
CHUNK_SIZE = 2000


def metrics_csv_rows(run: Run) -> Iterator[tuple]:
    """The header, then every metric point of the run as `(step, name, value)`, ordered by name
    then step (the order of the (run, name, step) index), fetched CHUNK_SIZE rows at a time.
    Floats keep full precision (`repr`); a non-finite value is written as `nan` / `inf`."""
    yield CSV_HEADER
    points = (
        MetricPoint.objects.filter(run=run)
        .order_by("name", "step")
        .values_list("step", "name", "value")
    )
    for step, name, value in points.iterator(chunk_size=CHUNK_SIZE):
        yield (step, name, "" if value is None else repr(float(value)))


class _Echo:
    """A file-like object whose write returns the line, so csv.writer can feed a generator."""

    def write(self, value: str) -> str:
        return value


def metrics_csv_lines(run: Run) -> Iterator[str]:
    """`metrics_csv_rows` formatted as CSV lines (RFC 4180 quoting, CRLF line ends)."""
    writer = csv.writer(_Echo())
    for row in metrics_csv_rows(run):
        yield writer.writerow(row)


def metrics_csv_filename(run: Run) -> str:
    return f"run-{run.pk}-metrics.csv"


def metrics_csv_response(run: Run) -> StreamingHttpResponse:
    """A download of the run's metric points as CSV, streamed."""
    response = StreamingHttpResponse(metrics_csv_lines(run), content_type="text/csv")
    response["Content-Disposition"] = f'attachment; filename="{metrics_csv_filename(run)}"'
    return response
