"""CSV export of a run's metric points, streamed."""

from __future__ import annotations

import csv
import io
import types

from webapp.experiments.exports import metrics_csv_response, metrics_csv_rows
from webapp.experiments.models import MetricPoint


def test_it_yields_a_header_then_every_point_ordered_by_name_and_step(owner, make_run):
    run = make_run(owner)
    other = make_run(owner, name="other")
    MetricPoint.objects.bulk_create(
        [
            MetricPoint(run=run, name="loss", step=2, value=0.1),
            MetricPoint(run=run, name="acc", step=1, value=0.5),
            MetricPoint(run=run, name="loss", step=1, value=1 / 3),
            MetricPoint(run=other, name="loss", step=1, value=9.0),
        ]
    )

    rows = metrics_csv_rows(run)

    assert isinstance(rows, types.GeneratorType)
    assert list(rows) == [
        ("step", "name", "value"),
        (1, "acc", "0.5"),
        (1, "loss", repr(1 / 3)),
        (2, "loss", "0.1"),
    ]


def test_the_response_streams_csv_that_parses_back(owner, make_run):
    run = make_run(owner)
    MetricPoint.objects.bulk_create(
        [MetricPoint(run=run, name="inner_loss", step=s, value=s / 7) for s in range(5000)]
    )

    response = metrics_csv_response(run)

    assert response.streaming
    assert response["Content-Type"] == "text/csv"
    assert f"run-{run.pk}-metrics.csv" in response["Content-Disposition"]
    body = b"".join(response.streaming_content).decode()
    parsed = list(csv.reader(io.StringIO(body)))
    assert parsed[0] == ["step", "name", "value"]
    assert len(parsed) == 5001
    assert float(parsed[-1][2]) == 4999 / 7


def test_a_run_without_points_gives_only_the_header(owner, make_run):
    assert list(metrics_csv_rows(make_run(owner))) == [("step", "name", "value")]
