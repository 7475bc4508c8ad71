"""Shared fixtures for the dashboard's tests: an owner, a stranger and a staff member (the
stranger must never change the owner's things), and factories for experiments and runs.

Queued runs are made through `services.create_experiment` (the real path; with the broker down,
dispatch logs a warning and the run stays queued). Finished runs, which only a worker could
produce, are written directly through the ORM.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Iterator

import psycopg
import pytest
from django.contrib.auth import get_user_model
from django.db import connection

# A valid, tiny Omniglot config: validation needs no data on disk.
SMALL_CONFIG = {
    "dataset": "omniglot",
    "ways": 5,
    "shots": 1,
    "meta_iters": 10,
    "final_eval_tasks": 10,
    "validation_interval": 0,
}

_counter = itertools.count(1)


@pytest.fixture(autouse=True)
def fast_password_hashing(settings):
    """Users are made in almost every test: a cheap hasher keeps each test well under 2 s."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(autouse=True)
def fresh_leaderboard() -> None:
    """Each test starts with no leaderboard kept from another test's database rows."""
    from webapp.experiments import leaderboard_cache

    leaderboard_cache.forget()


@pytest.fixture(autouse=True)
def fresh_run_rows() -> None:
    """Each test starts with no runs-list rows kept from another test's database rows."""
    from webapp.experiments.run_rows import run_rows

    run_rows.clear()


@pytest.fixture
def make_user(db):
    def make(username: str | None = None, **extra):
        username = username or f"user{next(_counter)}"
        # No password: hashing one costs ~0.2 s; tests log in with force_login or a token.
        return get_user_model().objects.create_user(username=username, password=None, **extra)

    return make


@pytest.fixture
def owner(make_user):
    return make_user("owner")


@pytest.fixture
def stranger(make_user):
    return make_user("stranger")


@pytest.fixture
def staff(make_user):
    return make_user("staff", is_staff=True)


@pytest.fixture
def make_experiment(db):
    """`make_experiment(owner, name=..., config=..., seeds=[...])` through the service."""
    from webapp.experiments import services

    def make(owner, *, name: str = "exp", config: dict | None = None, seeds=(0,), **kw):
        return services.create_experiment(
            owner, name=name, config=dict(config or SMALL_CONFIG), seeds=list(seeds), **kw
        )

    return make


@pytest.fixture
def make_run(db):
    """A run in any state written directly (as a worker would leave it), with its experiment.

    `make_run(owner, status="succeeded", dataset="omniglot", ways=5, shots=1, transductive=True,
    test_accuracy=0.95, test_ci95=0.01, ...)`; any other keyword is a Run field.
    """
    from webapp.experiments.grouping import group_hash
    from webapp.experiments.models import Experiment, Run

    def make(owner, *, name: str = "finished", experiment=None, seed: int = 0, **fields):
        dataset = fields.pop("dataset", "omniglot")
        split = fields.pop("split", "paper" if dataset == "omniglot" else "")
        config = {**SMALL_CONFIG, "dataset": dataset, "seed": seed, **fields.pop("config", {})}
        if experiment is None:
            experiment = Experiment.objects.create(
                owner=owner,
                name=name,
                config={k: v for k, v in config.items() if k != "seed"},
                seeds=[seed],
            )
        defaults = {
            "status": Run.Status.SUCCEEDED,
            "algorithm": "reptile",
            "ways": config.get("ways", 5),
            "shots": config.get("shots", 1),
            "transductive": True,
            "config_hash": "0" * 64,
            "group_hash": group_hash(config),
        }
        defaults.update(fields)
        return Run.objects.create(
            experiment=experiment,
            seed=seed,
            config=config,
            dataset=dataset,
            split=split,
            **defaults,
        )

    return make


@pytest.fixture
def make_ready_dataset(db, settings, tmp_path):
    """An uploaded dataset as the worker leaves it once validated: ready, private, 8/5/6
    classes of at least 10 images (no folder needed: services trust the recorded counts)."""
    from webapp.datasets.models import UserDataset

    settings.DATASETS_ROOT = tmp_path / "datasets"

    def make(owner, **fields) -> UserDataset:
        values = {
            "name": "birds",
            "status": UserDataset.Status.READY,
            "layout": "splits",
            "train_classes": 8,
            "val_classes": 5,
            "test_classes": 6,
            "images": 200,
            "min_class_images": 10,
            **fields,
        }
        return UserDataset.objects.create(owner=owner, **values)

    return make


@pytest.fixture
def frozen_holder() -> Callable[..., contextlib.AbstractContextManager[psycopg.Connection]]:
    """`with frozen_holder(run, **session_settings):` a second PostgreSQL session that locked
    the run's row, as a worker's fenced write does, and then stopped (SIGSTOP, a paused VM):
    its transaction stays open until the server or the block ends it. Needs
    `django_db(transaction=True)`, so that the other session sees the run."""

    @contextlib.contextmanager
    def hold(run, **session: str) -> Iterator[psycopg.Connection]:
        params = connection.get_connection_params()
        if session:
            params["options"] = " ".join(f"-c {name}={value}" for name, value in session.items())
        holder = psycopg.connect(**params)
        try:
            holder.execute("SELECT id FROM experiments_run WHERE id = %s FOR UPDATE", [run.pk])
            yield holder
        finally:
            holder.close()

    return hold
