"""Can this user train on this uploaded dataset, and can it serve these tasks? Part of the one
validation path (validation.py), kept apart for size."""

from __future__ import annotations

from metatrain import Config
from metatrain.algorithms import algorithm_of
from webapp.datasets.access import can_view, usable_datasets
from webapp.datasets.models import UserDataset
from webapp.datasets.services import DatasetError, dataset_data_dir

from .errors import FieldError, ServiceError, ValidationFailed

# Largest primary key a database accepts (SQLite and PostgreSQL bigint).
DB_PK_MAX = 2**63 - 1


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def get_user_dataset(owner, user_dataset: object, *, lock: bool = False) -> UserDataset:
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


def dataset_fit_errors(dataset: UserDataset, config: Config) -> list[FieldError]:
    """Every way the config asks for more than the uploaded dataset holds.

    The counts are the ones the worker recorded when it validated the dataset: every split has
    at least `smallest split` classes, every class at least `min_class_images` images. A task
    draws `ways` distinct classes, and `shots + queries` (training: `train_shots`, plus the
    FOMAML tail) distinct images of each; more than the data holds fails only once a worker
    samples the first task.
    """
    if config.dataset != "imagefolder":
        return [
            (
                "dataset",
                f"An uploaded dataset needs dataset imagefolder, not {config.dataset}.",
            )
        ]
    errors: list[FieldError] = []
    splits = {
        "train": dataset.train_classes,
        "val": dataset.val_classes,
        "test": dataset.test_classes,
    }
    smallest = min(splits, key=lambda name: splits[name])
    if config.ways > splits[smallest]:
        errors.append(
            (
                "ways",
                f"Dataset '{dataset.name}' has {splits[smallest]} classes in its {smallest} "
                f"split; a {config.ways}-way task needs {config.ways}. "
                f"Use ways <= {splits[smallest]}.",
            )
        )
    per_class = dataset.min_class_images
    if config.shots + config.queries > per_class:
        errors.append(
            (
                "shots",
                f"Dataset '{dataset.name}' has classes of only {per_class} images; shots + "
                f"queries = {config.shots} + {config.queries} = "
                f"{config.shots + config.queries} is more.",
            )
        )
    if config.training_shots > per_class:
        what = algorithm_of(config).explain_training_shots(config)
        errors.append(
            (
                "train_shots",
                f"Dataset '{dataset.name}' has classes of only {per_class} images; training "
                f"tasks draw {what} images per class.",
            )
        )
    return errors


def check_dataset_fits(dataset: UserDataset, config: Config) -> None:
    """`dataset_fit_errors`, raised (ValidationFailed, a ServiceError) if there are any."""
    errors = dataset_fit_errors(dataset, config)
    if errors:
        raise ValidationFailed(errors)
