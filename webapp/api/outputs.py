"""Model -> response data for the API's schemas (schemas.py).

Two rules hold for every answer: a config never carries a server path (`visible_config`: no
`data_dir`; the uploaded dataset is named instead, to whoever may see it), and accuracies and
their confidence half-widths are fractions rounded to 6 decimal places (`round_fraction`), so
float32 noise (0.6710000126063824) does not reach clients.
"""

from __future__ import annotations

import json
from typing import Any

from django.db.models import QuerySet
from django.http import HttpResponse

from webapp.datasets.access import can_change as can_change_dataset
from webapp.datasets.models import UserDataset
from webapp.experiments.access import (
    can_change,
    dataset_shown,
    may_change,
    shown_dataset,
    visible_config,
)
from webapp.experiments.models import Run
from webapp.experiments.presentation import round_fraction, round_metric
from webapp.experiments.run_values import RunValues
from webapp.experiments.services import can_cancel, can_evaluate_now


def _upload(user, experiment) -> dict[str, Any]:
    return _upload_shown(dataset_shown(user, experiment))


def _upload_shown(shown: dict[str, Any] | None) -> dict[str, Any]:
    return {
        "user_dataset": shown["pk"] if shown else None,
        "user_dataset_name": shown["name"] if shown else None,
    }


def run_data(run, user) -> dict[str, Any]:
    """A Run as RunOut data; select_related `experiment__owner` and `experiment__user_dataset`
    (webapp.experiments.filtering.filter_runs does) to avoid queries per run."""
    experiment = run.experiment
    return _run_out(
        run,
        user,
        experiment_name=experiment.name,
        owner=experiment.owner.get_username(),
        owner_id=experiment.owner_id,
        upload=dataset_shown(user, experiment),
    )


# What a page of GET /api/runs reads per run: RunOut's columns, as plain values (run_values).
LIST_COLUMNS = (
    "id", "experiment_id", "seed", "status", "status_reason", "cancel_requested", "queue",
    "dataset", "split", "algorithm", "ways", "shots", "transductive", "iteration",
    "total_iterations", "checkpoint_iteration", "seconds_per_iteration", "device", "attempts",
    "created_at", "started_at", "finished_at", "heartbeat_at", "test_accuracy", "test_ci95",
    "test_tasks", "initialization", "checkpoint_file", "name", "notes", "tags", "phase",
    "eval_tasks_done", "eval_tasks_total", "eval_tasks_per_second", "test_loss_before",
    "test_loss_after",
    "experiment__name", "experiment__owner_id", "experiment__owner__username",
    "experiment__user_dataset_id",
)  # fmt: skip


def run_list_data(runs: QuerySet[Run], user) -> list[dict[str, Any]]:
    """RunOut data of every run in `runs` (a page: slice it first), the same as `run_data`
    gives for each, from one query of plain values plus one for the uploaded datasets when any
    run has one."""
    rows = list(runs.values(*LIST_COLUMNS))
    dataset_ids = {row["experiment__user_dataset_id"] for row in rows} - {None}
    datasets = UserDataset.objects.in_bulk(dataset_ids) if dataset_ids else {}
    return [
        _run_out(
            RunValues(row),
            user,
            experiment_name=row["experiment__name"],
            owner=row["experiment__owner__username"],
            owner_id=row["experiment__owner_id"],
            upload=shown_dataset(user, datasets.get(row["experiment__user_dataset_id"])),
        )
        for row in rows
    ]


def _run_out(
    run: Run | RunValues,
    user,
    *,
    experiment_name: str,
    owner: str,
    owner_id: int,
    upload: dict[str, Any] | None,
) -> dict[str, Any]:
    # A stored file is a FieldFile on a model and its name in a values() row: both are falsy
    # when empty, which is all a list needs to know.
    return {
        "id": run.pk,
        "experiment_id": run.experiment_id,
        "experiment_name": experiment_name,
        "owner": owner,
        "seed": run.seed,
        "status": run.status,
        "status_reason": run.status_reason,
        "cancel_requested": run.cancel_requested,
        "queue": run.queue,
        "dataset": run.dataset,
        "split": run.split,
        "algorithm": run.algorithm,
        "ways": run.ways,
        "shots": run.shots,
        "transductive": run.transductive,
        "iteration": run.iteration,
        "total_iterations": run.total_iterations,
        "progress": run.progress,
        "checkpoint_iteration": run.checkpoint_iteration,
        "seconds_per_iteration": run.seconds_per_iteration,
        "device": run.device,
        "attempts": run.attempts,
        "created_at": run.created_at,
        "started_at": run.started_at,
        "finished_at": run.finished_at,
        "heartbeat_at": run.heartbeat_at,
        "test_accuracy": round_fraction(run.test_accuracy),
        "test_ci95": round_fraction(run.test_ci95),
        "test_tasks": run.test_tasks,
        "has_initialization": bool(run.initialization),
        **_upload_shown(upload),
        "can_change": may_change(user, owner_id),
        "can_cancel": can_cancel(run),
        "name": run.name,
        "notes": run.notes,
        "tags": run.tag_list,
        "phase": run.phase,
        "eval_tasks_done": run.eval_tasks_done,
        "eval_tasks_total": run.eval_tasks_total,
        "eval_tasks_per_second": run.eval_tasks_per_second,
        "eval_eta_seconds": run.eval_eta_seconds if run.status == Run.Status.RUNNING else None,
        "duration_seconds": run.duration_seconds,
        "iterations_per_second": run.iterations_per_second,
        "test_loss_before": round_metric(run.test_loss_before),
        "test_loss_after": round_metric(run.test_loss_after),
        "can_evaluate_now": can_evaluate_now(run),
        "has_checkpoint_weights": can_evaluate_now(run) and not run.initialization,
    }


def run_detail_data(run, user) -> dict[str, Any]:
    return {
        **run_data(run, user),
        "config": visible_config(run.config),
        "config_hash": run.config_hash,
    }


def experiment_data(experiment, user) -> dict[str, Any]:
    """An Experiment with its runs; prefetch `runs` to avoid a query per experiment."""
    runs = sorted(experiment.runs.all(), key=lambda r: r.pk)
    for run in runs:
        run.experiment = experiment  # owner and dataset already loaded
    return {
        "id": experiment.pk,
        "name": experiment.name,
        "description": experiment.description,
        "preset": experiment.preset,
        "owner": experiment.owner.get_username(),
        "config": visible_config(experiment.config),
        "seeds": experiment.seeds,
        "queue": experiment.queue,
        "cloned_from": experiment.cloned_from_id,
        **_upload(user, experiment),
        "created_at": experiment.created_at,
        "can_change": can_change(user, experiment),
        "notes": experiment.notes,
        "tags": experiment.tag_list,
        "runs": [run_data(run, user) for run in runs],
    }


def evaluation_data(evaluation) -> dict[str, Any]:
    return {
        "id": evaluation.pk,
        "split": evaluation.split,
        "iteration": evaluation.iteration,
        "accuracy": round_fraction(evaluation.accuracy),
        "ci95": round_fraction(evaluation.ci95),
        "tasks": evaluation.tasks,
        "ways": evaluation.ways,
        "shots": evaluation.shots,
        "queries": evaluation.queries,
        "transductive": evaluation.transductive,
        "ci_method": evaluation.ci_method,
        "extra": evaluation.extra,
        "created_at": evaluation.created_at,
    }


def series_data(series: dict[str, dict]) -> dict[str, dict]:
    """Metric series with their values at float32's precision (METRIC_SIGNIFICANT_DIGITS)."""
    rounded = {}
    for name, item in series.items():
        rounded[name] = {
            **item,
            **{
                key: [round_metric(v) for v in item[key]]
                for key in ("values", "min", "max")
                if key in item
            },
        }
    return rounded


def kept_metrics_response(run_id: int, names: list[str], bodies: dict[str, str]) -> HttpResponse:
    """MetricsOut as JSON from series kept as JSON text (series_summaries), sent as they are:
    no decoding, rounding or validation of thousands of numbers on each chart load."""
    series = ",".join(f"{json.dumps(name)}:{body}" for name, body in bodies.items())
    content = f'{{"run":{int(run_id)},"names":{json.dumps(names)},"series":{{{series}}}}}'
    return HttpResponse(content, content_type="application/json")


def dataset_data(dataset, user) -> dict[str, Any]:
    """A UserDataset as DatasetOut data; `dataset.owner` should be select_related."""
    return {
        "id": dataset.pk,
        "name": dataset.name,
        "owner": dataset.owner.get_username(),
        "is_public": dataset.is_public,
        "status": dataset.status,
        "usable": dataset.is_ready,
        "reason": dataset.reason,
        "layout": dataset.layout,
        "train_classes": dataset.train_classes,
        "val_classes": dataset.val_classes,
        "test_classes": dataset.test_classes,
        "max_ways": min(dataset.train_classes, dataset.val_classes, dataset.test_classes),
        "images": dataset.images,
        "min_class_images": dataset.min_class_images,
        "uncompressed_bytes": dataset.uncompressed_bytes,
        "created_at": dataset.created_at,
        "finished_at": dataset.finished_at,
        "can_change": can_change_dataset(user, dataset),
    }


def board_data(board) -> dict[str, Any]:
    """A board in the grouped form: one row per configuration, its seeds' runs inside."""
    b = board.benchmark
    return {
        "key": board.key,
        "title": board.title,
        "dataset": b.dataset,
        "split": b.split,
        "ways": b.ways,
        "shots": b.shots,
        "transductive": b.transductive,
        "configurations": board.configurations,
        "runs_count": board.runs_count,
        "hidden": board.hidden,
        "rows": [
            {
                "rank": row.rank,
                "label": row.label,
                "is_reference": row.is_reference,
                "accuracy": round_fraction(row.accuracy),
                "ci95": round_fraction(row.ci95),
                "ci_method": row.ci_method,
                "std": round_fraction(row.std),
                "seeds": row.seeds,
                "iterations": row.iterations,
                "partial": row.partial,
                "paper_iterations": row.paper_iterations,
                "tied_with_leader": row.tied_with_leader,
                "group_hash": row.group_hash or None,
                "experiment_id": row.experiment_id,
                "owner": row.owner,
                "algorithm": row.algorithm,
                "runs": [
                    {
                        "run_id": run.pk,
                        "seed": run.seed,
                        "experiment_id": run.experiment_id,
                        "accuracy": round_fraction(run.test_accuracy),
                        "ci95": round_fraction(run.test_ci95),
                        "iteration": run.iteration,
                    }
                    for run in row.runs
                ],
            }
            for row in board.rows
        ],
    }
