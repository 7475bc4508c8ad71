"""The group hash: a configuration without its seed (and without where its data lies)."""

from __future__ import annotations

import importlib

import pytest

from webapp.experiments.grouping import group_hash
from webapp.experiments.models import Run

from ..conftest import SMALL_CONFIG


def test_seeds_and_data_dir_do_not_change_it_but_any_other_field_does():
    base = group_hash({**SMALL_CONFIG, "seed": 0})
    assert group_hash({**SMALL_CONFIG, "seed": 7, "data_dir": "/elsewhere"}) == base
    assert group_hash({**SMALL_CONFIG, "seed": 0, "inner_lr": 0.01}) != base
    assert group_hash({**SMALL_CONFIG, "seed": 0}, "dataset-3") != base


def test_a_field_left_at_its_default_hashes_like_the_default_written_out():
    from metatrain import Config

    default = Config().inner_lr
    assert group_hash({**SMALL_CONFIG, "inner_lr": default}) == group_hash(SMALL_CONFIG)


@pytest.mark.django_db
def test_the_migration_fills_existing_runs(owner, make_run):
    a = make_run(owner, seed=0)
    b = make_run(owner, seed=1, experiment=a.experiment)
    Run.objects.update(group_hash="")
    migration = importlib.import_module("webapp.experiments.migrations.0006_sweeps")
    from django.apps import apps

    migration.fill_group_hashes(apps, None)
    hashes = set(Run.objects.filter(pk__in=[a.pk, b.pk]).values_list("group_hash", flat=True))
    assert len(hashes) == 1 and "" not in hashes
