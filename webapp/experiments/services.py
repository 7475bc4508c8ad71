"""Operations shared by the browser views and the JSON API: create, cancel, delete.

Each one validates fully before writing, writes in one transaction, and enqueues after commit,
so a bad input or a broker outage never leaves anything half-saved.
"""

from __future__ import annotations

from django.db import transaction
from django.utils import timezone

from metatrain import Config, ConfigError
from webapp.datasets.access import can_view, usable_datasets
from webapp.datasets.models import UserDataset
from webapp.datasets.services import DatasetError, dataset_data_dir

from .dispatch import enqueue_on_commit
from .models import Experiment, Queue, Run

MAX_SEEDS = 20
# Run.seed, ways, shots and the counters a worker derives from the config (iterations, tasks)
# are 32-bit integer columns: PostgreSQL refuses a larger value with an error, SQLite above
# 64 bits. Every integer of a config is held to this range before anything is written.
DB_INT_MAX = 2**31 - 1
MAX_NAME = 200
MAX_DESCRIPTION = 5000
MAX_PRESET = 64
# Largest primary key a database accepts (SQLite and PostgreSQL bigint).
DB_PK_MAX = 2**63 - 1


class ServiceError(ValueError):
    """A request that cannot be carried out; `field` names the input at fault, if any."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


def build_run_configs(config: dict, seeds: list[int]) -> list[Config]:
    """One validated metatrain Config per seed. Raises ConfigError naming the bad field."""
    if not seeds:
        raise ServiceError("Give at least one seed.", field="seeds")
    if len(seeds) > MAX_SEEDS:
        raise ServiceError(f"At most {MAX_SEEDS} seeds per experiment.", field="seeds")
    if len(set(seeds)) != len(seeds):
        raise ServiceError("Seeds must be distinct.", field="seeds")
    if any(not _is_int(seed) or not 0 <= seed <= DB_INT_MAX for seed in seeds):
        raise ServiceError(f"Seeds must be whole numbers from 0 to {DB_INT_MAX:,}.", field="seeds")
    if "seed" in config:
        raise ServiceError("Give seeds in the seeds list, not in the config.", field="seed")
    if config.get("data_dir"):
        # A path typed by a user would let them read any folder on the workers' machines;
        # data comes from METATRAIN_DATA or from an uploaded dataset instead.
        raise ServiceError(
            "data_dir cannot be set from the dashboard; use the installed data or upload a dataset.",
            field="data_dir",
        )
    for key, value in config.items():
        if _is_int(value) and abs(value) > DB_INT_MAX:
            raise ServiceError(f"Too large: {key} must lie within ±{DB_INT_MAX:,}.", field=key)
        if isinstance(value, str) and "\x00" in value:
            raise ServiceError("NUL characters are not allowed.", field=key)
    return [Config.from_dict({**config, "seed": seed}) for seed in seeds]


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_text(value: str, field: str, max_length: int, *, required: bool = False) -> None:
    """Text the database would refuse (PostgreSQL: NUL, or over a column's length)."""
    if not isinstance(value, str):
        raise ServiceError("Must be text.", field=field)
    if required and not value.strip():
        raise ServiceError("This field is required.", field=field)
    if len(value) > max_length:
        raise ServiceError(f"At most {max_length} characters.", field=field)
    if "\x00" in value:
        raise ServiceError("NUL characters are not allowed.", field=field)


# ------------------------------------------------------------------------------------------
# Uploaded datasets
# ------------------------------------------------------------------------------------------
def get_user_dataset(owner, user_dataset: int | UserDataset, *, lock: bool = False) -> UserDataset:
    """The dataset `owner` may train on (ready, and theirs or public; staff: any ready one),
    read afresh from the database; ServiceError on field "user_dataset" otherwise.

    A dataset the owner may not see is reported exactly as one that does not exist, so its
    id tells a stranger nothing. `lock` holds the row until the transaction ends, so it cannot
    be deleted between this check and the experiment that points at it.
    """
    pk = user_dataset.pk if isinstance(user_dataset, UserDataset) else user_dataset
    if not _is_int(pk) or not 1 <= pk <= DB_PK_MAX:
        raise ServiceError("Give the id of a dataset (a whole number).", field="user_dataset")
    candidates = usable_datasets(owner).filter(pk=pk)
    if lock:
        candidates = candidates.select_for_update(of=("self",))
    dataset = candidates.first()
    if dataset is not None:
        return dataset
    seen = UserDataset.objects.filter(pk=pk).first()
    if seen is not None and can_view(owner, seen):
        try:
            dataset_data_dir(seen)  # says which state it is in
        except DatasetError as err:
            raise ServiceError(
                f"{err} Only a ready dataset can be trained on.", field="user_dataset"
            ) from None
    raise ServiceError(
        f"No dataset #{pk} that you can train on: it must be ready, and yours or public.",
        field="user_dataset",
    )


def check_dataset_fits(dataset: UserDataset, config: Config) -> None:
    """Refuse a config the uploaded dataset cannot serve, before any run is queued.

    The counts are the ones the worker recorded when it validated the dataset: every split has
    at least `smallest split` classes, every class at least `min_class_images` images. A task
    draws `ways` distinct classes, and `shots + queries` (training: `train_shots`, plus the
    FOMAML tail) distinct images of each; more than the data holds fails only once a worker
    samples the first task.
    """
    if config.dataset != "imagefolder":
        raise ServiceError(
            f"An uploaded dataset needs dataset imagefolder, not {config.dataset}.",
            field="dataset",
        )
    splits = {
        "train": dataset.train_classes,
        "val": dataset.val_classes,
        "test": dataset.test_classes,
    }
    smallest = min(splits, key=lambda name: splits[name])
    if config.ways > splits[smallest]:
        raise ServiceError(
            f"Dataset '{dataset.name}' has {splits[smallest]} classes in its {smallest} split; "
            f"a {config.ways}-way task needs {config.ways}. Use ways <= {splits[smallest]}.",
            field="ways",
        )
    per_class = dataset.min_class_images
    if config.shots + config.queries > per_class:
        raise ServiceError(
            f"Dataset '{dataset.name}' has classes of only {per_class} images; shots + queries "
            f"= {config.shots} + {config.queries} = {config.shots + config.queries} is more.",
            field="shots",
        )
    if config.training_shots > per_class:
        what = (
            f"train_shots + fomaml_tail_shots = {config.train_shots} + "
            f"{config.fomaml_tail_shots} = {config.training_shots}"
            if config.algorithm == "fomaml"
            else f"train_shots = {config.train_shots}"
        )
        raise ServiceError(
            f"Dataset '{dataset.name}' has classes of only {per_class} images; training "
            f"tasks draw {what} images per class.",
            field="train_shots",
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
) -> Experiment:
    """Validate, save the experiment and one queued run per seed, enqueue after commit.

    `user_dataset` (an id or a UserDataset) trains on an uploaded dataset the owner may use:
    its folder, never a path from the request, becomes every run's `data_dir`. The
    experiment's own config stays the user's (no data_dir); the dataset is its foreign key.
    """
    if queue not in Queue.values:
        raise ServiceError(f"Unknown queue {queue!r}; choose one of {Queue.values}.", "queue")
    _check_text(name, "name", MAX_NAME, required=True)
    _check_text(description, "description", MAX_DESCRIPTION)
    _check_text(preset, "preset", MAX_PRESET)
    run_configs = build_run_configs(config, seeds)
    stored_config = {k: v for k, v in run_configs[0].to_dict().items() if k != "seed"}
    dataset = None
    if user_dataset is not None:
        dataset = get_user_dataset(owner, user_dataset, lock=True)
        check_dataset_fits(dataset, run_configs[0])
        data_dir = dataset_data_dir(dataset)
        run_configs = [cfg.replace(data_dir=data_dir) for cfg in run_configs]
    experiment = Experiment.objects.create(
        owner=owner,
        name=name,
        description=description,
        preset=preset,
        config=stored_config,
        seeds=list(seeds),
        queue=queue,
        cloned_from=cloned_from,
        user_dataset=dataset,
    )
    runs = [
        Run.objects.create(
            experiment=experiment,
            seed=cfg.seed,
            config=cfg.to_dict(),
            config_hash=cfg.config_hash(),
            queue=queue,
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


def request_cancel(run: Run) -> Run:
    """Cancel a queued run at once; ask a running one to stop (the loop polls the flag and
    checkpoints). Finished runs are left as they are."""
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


@transaction.atomic
def delete_experiment(experiment: Experiment) -> None:
    """Delete an experiment with its runs, points and files; refused while a run is running."""
    if experiment.runs.filter(status=Run.Status.RUNNING).exists():
        raise ServiceError("Cancel the running runs first; a running run cannot be deleted.")
    files = []
    for run in experiment.runs.all():
        files += [f for f in (run.initialization, run.config_file) if f]
    experiment.delete()

    def _remove_files() -> None:
        for f in files:
            f.storage.delete(f.name)

    transaction.on_commit(_remove_files)


__all__ = [
    "ConfigError",
    "ServiceError",
    "build_run_configs",
    "check_dataset_fits",
    "create_experiment",
    "delete_experiment",
    "get_user_dataset",
    "request_cancel",
]
