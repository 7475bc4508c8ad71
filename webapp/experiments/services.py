"""Operations shared by the browser views, the JSON API and the management commands: create an
experiment, cancel a run, evaluate a stopped run's checkpoint, label (rename, notes, tags),
delete an experiment.

Each one validates fully before writing (validation.py: every error at once), checks the user's
quotas with their row locked (quotas.py), writes in one transaction, and enqueues after
commit, so a bad input or a broker outage never leaves anything half-saved.
"""

from __future__ import annotations

import hashlib

from django.db import transaction
from django.utils import timezone

from metatrain import Config, ConfigError
from webapp.datasets.models import UserDataset

from . import grouping, quotas, run_files
from .dataset_checks import DB_PK_MAX, check_dataset_fits, get_user_dataset
from .dispatch import enqueue_on_commit
from .errors import ErrorList, QuotaExceeded, ServiceError, ValidationFailed
from .models import Experiment, Queue, Run, Sweep, normalize_tags
from .validation import (
    DB_INT_MAX,
    MAX_DESCRIPTION,
    MAX_NAME,
    MAX_PRESET,
    MAX_SEEDS,
    validate_experiment,
)


@transaction.atomic
def create_experiment(
    owner,
    *,
    name: str,
    config: dict,
    seeds: list[int],
    queue: str = Queue.ANY,
    description: str = "",
    preset: str = "",
    cloned_from: Experiment | None = None,
    user_dataset: int | UserDataset | None = None,
    sweep: Sweep | None = None,
    sweep_params: dict | None = None,
) -> Experiment:
    """Validate, check quotas, save the experiment and one queued run per seed, enqueue after
    commit. Raises ValidationFailed (every field error) or QuotaExceeded; both are
    ServiceErrors.

    `config` holds the user's values: `preset`'s values (complete) fill every field it leaves
    out, then the library's defaults. `user_dataset` (an id or a UserDataset) trains on an
    uploaded dataset the owner may use. No run's config names a folder: the dataset is the
    experiment's foreign key, and each worker host trains on its own cached copy (see
    `tasks.local_config`); the dataset's content hash is part of the runs' config hash.
    """
    valid = validate_experiment(
        owner,
        name=name,
        config=config,
        seeds=seeds,
        preset=preset,
        queue=queue,
        description=description,
        user_dataset=user_dataset,
        lock_dataset=True,
    )
    quotas.check_run_quotas(owner, valid.run_configs)
    run_configs = valid.run_configs
    experiment = Experiment.objects.create(
        owner=owner,
        name=valid.name,
        description=valid.description,
        preset=valid.preset,
        config=valid.config,
        seeds=valid.seeds,
        queue=valid.queue,
        cloned_from=cloned_from,
        user_dataset=valid.dataset,
        sweep=sweep,
        sweep_params=sweep_params,
    )
    group = grouping.group_hash(valid.config, grouping.dataset_identity(valid.dataset))
    runs = [
        Run.objects.create(
            experiment=experiment,
            seed=cfg.seed,
            config=cfg.to_dict(),
            config_hash=run_config_hash(cfg, valid.dataset),
            group_hash=group,
            queue=valid.queue,
            dataset=cfg.dataset,
            split=cfg.split if cfg.dataset == "omniglot" else "",
            algorithm=cfg.algorithm,
            ways=None if cfg.dataset == "sine" else cfg.ways,
            shots=cfg.shots if cfg.dataset != "sine" else cfg.sine_points,
            transductive=cfg.transductive,
        )
        for cfg in run_configs
    ]
    enqueue_on_commit(runs)
    return experiment


# ------------------------------------------------------------------------------------------
# Cancel: one rule for the run page and the API
# ------------------------------------------------------------------------------------------
# Runs a cancel still changes: a queued or lost run ends at once, a running one is asked to
# stop. A cancelled run is already where a cancel leads (cancelling it again changes nothing
# and is not an error); a succeeded or failed run has nothing left to cancel.
CANCELLABLE = (Run.Status.QUEUED, Run.Status.RUNNING, Run.Status.LOST)


def can_cancel(run: Run) -> bool:
    """Whether cancelling `run` would change anything (the page shows its button then)."""
    return run.status in CANCELLABLE


def cancel_run(run: Run) -> Run:
    """The front doors' cancel: `request_cancel`, and a ServiceError (the API's 409) for a
    run that has already succeeded or failed, decided after the conditional update, so a run
    that finishes meanwhile is reported as it is."""
    run = request_cancel(run)
    if run.status in (Run.Status.SUCCEEDED, Run.Status.FAILED):
        raise ServiceError(f"Run #{run.pk} already {run.status}; there is nothing to cancel.")
    return run


def request_cancel(run: Run) -> Run:
    """Cancel a queued or lost run at once; ask a running one to stop (the loop polls the flag
    and checkpoints). Finished runs are left as they are. Returns the run as it now is."""
    now = timezone.now()
    changed = Run.objects.filter(pk=run.pk, status__in=[Run.Status.QUEUED, Run.Status.LOST]).update(
        status=Run.Status.CANCELLED,
        cancel_requested=True,
        finished_at=now,
        status_reason="cancelled before it started",
    )
    if not changed:
        Run.objects.filter(pk=run.pk, status=Run.Status.RUNNING).update(cancel_requested=True)
    run.refresh_from_db()
    return run


# A stopped run whose checkpoint holds trained weights that nothing else will ever evaluate.
EVALUABLE = (Run.Status.CANCELLED, Run.Status.FAILED)


def can_evaluate_now(run: Run) -> bool:
    """Whether "evaluate now" applies: a cancelled or failed run with a stored checkpoint."""
    return run.status in EVALUABLE and bool(run.checkpoint_file)


@transaction.atomic
def evaluate_now(run: Run) -> Run:
    """Queue a cancelled or failed run again, flagged to skip the training it has left: the
    next worker to claim it (the same claim, the same fencing as any run) evaluates its last
    checkpoint on the test split and stores its initialization, and the run ends succeeded.
    Quotas apply as to a new run. ServiceError when the run is not in such a state."""
    quotas.lock_user(run.experiment.owner)
    if not can_evaluate_now(run):
        raise ServiceError(
            f"Run #{run.pk} is {run.status}: only a cancelled or failed run with a checkpoint "
            "can be evaluated now."
        )
    quotas.check_run_quotas(run.experiment.owner, [Config.from_dict(run.config)])
    changed = Run.objects.filter(
        pk=run.pk, status__in=EVALUABLE, checkpoint_file=run.checkpoint_file.name
    ).update(
        status=Run.Status.QUEUED,
        evaluate_only=True,
        cancel_requested=False,
        status_reason="queued to evaluate its last checkpoint (training is not resumed)",
        finished_at=None,
        dispatched_at=None,
        dispatch_count=0,
        phase=Run.Phase.TRAINING,
        eval_tasks_done=0,
        eval_tasks_total=0,
        eval_tasks_per_second=None,
    )
    if not changed:
        raise ServiceError(f"Run #{run.pk} changed meanwhile; reload it and try again.")
    run.refresh_from_db()
    enqueue_on_commit([run])
    return run


MAX_TAGS_CHARS = 500
MAX_NOTES = 10000


def set_labels(
    obj: Experiment | Run,
    *,
    name: str | None = None,
    notes: str | None = None,
    tags: str | list[str] | None = None,
) -> Experiment | Run:
    """Rename, annotate or tag an experiment or a run (None leaves a field as it is; a run's
    empty name falls back to its experiment's). ValidationFailed lists every bad field."""
    errors = ErrorList()
    values: dict[str, str] = {}
    for field, value in (("name", name), ("notes", notes), ("tags", tags)):
        texts = [value] if isinstance(value, str) else (value or [])
        if any("\x00" in text for text in texts):
            errors.add(field, "NUL characters are not allowed.")
    if errors:
        errors.raise_if_any()
    if name is not None:
        name = name.strip()
        if isinstance(obj, Experiment) and not name:
            errors.add("name", "An experiment needs a name.")
        elif len(name) > MAX_NAME:
            errors.add("name", f"At most {MAX_NAME} characters.")
        values["name"] = name
    if notes is not None:
        if len(notes) > MAX_NOTES:
            errors.add("notes", f"At most {MAX_NOTES:,} characters.")
        values["notes"] = notes
    if tags is not None:
        stored = normalize_tags(tags)
        if len(stored) > MAX_TAGS_CHARS:
            errors.add("tags", f"At most {MAX_TAGS_CHARS} characters of tags in all.")
        values["tags"] = stored
    errors.raise_if_any()
    for field, value in values.items():
        setattr(obj, field, value)
    if values:
        obj.save(update_fields=list(values))
    return obj


@transaction.atomic
def delete_experiment(experiment: Experiment) -> None:
    """Delete an experiment with its runs, points and files; refused while a run is running."""
    if experiment.runs.filter(status=Run.Status.RUNNING).exists():
        raise ServiceError("Cancel the running runs first; a running run cannot be deleted.")
    run_ids = list(experiment.runs.values_list("pk", flat=True))
    experiment.delete()

    def _remove_files() -> None:
        # Everything stored under each run (checkpoints, initializations, configs, the strays
        # of lost attempts) and this host's scratch folders; other hosts sweep their own.
        for run_id in run_ids:
            run_files.delete_run_files(run_id)

    transaction.on_commit(_remove_files)


__all__ = [
    "CANCELLABLE",
    "DB_INT_MAX",
    "DB_PK_MAX",
    "MAX_DESCRIPTION",
    "MAX_NAME",
    "MAX_PRESET",
    "MAX_SEEDS",
    "ConfigError",
    "QuotaExceeded",
    "ServiceError",
    "ValidationFailed",
    "can_cancel",
    "cancel_run",
    "check_dataset_fits",
    "create_experiment",
    "delete_experiment",
    "get_user_dataset",
    "request_cancel",
]


def run_config_hash(config: Config, dataset: UserDataset | None) -> str:
    """What a run trained, as one hash: metatrain's config hash (which leaves out where the data
    lies), and for an uploaded dataset the dataset's content, so runs on different uploads never
    count as the same configuration."""
    if dataset is None:
        return config.config_hash()
    identity = dataset.content_hash or f"dataset-{dataset.pk}"
    return hashlib.sha256(f"{config.config_hash()}:{identity}".encode()).hexdigest()
