"""The periodic evaluation chart says which classes it measures (test or validation)."""

from __future__ import annotations

from metatrain.config import PRESETS
from webapp.experiments.chart_titles import (
    COMPARE_MIXED_TITLE,
    TEST_CLASSES_TITLE,
    VALIDATION_CLASSES_TITLE,
    compare_chart_title,
    periodic_evaluation_split,
    validation_chart_title,
)


def test_it_names_test_classes_when_no_validation_classes_are_held_out():
    config = {"dataset": "omniglot", "ways": 5, "validation_classes": 0}
    assert periodic_evaluation_split(config) == "test"
    assert validation_chart_title(config) == TEST_CLASSES_TITLE


def test_every_omniglot_preset_validates_on_test_classes():
    omniglot = [p for p in PRESETS.values() if p.get("dataset", "omniglot") == "omniglot"]
    assert omniglot
    assert {validation_chart_title(p) for p in omniglot} == {TEST_CLASSES_TITLE}


def test_it_names_validation_classes_when_some_are_held_out():
    config = {"dataset": "omniglot", "ways": 5, "validation_classes": 100}
    assert validation_chart_title(config) == VALIDATION_CLASSES_TITLE


def test_an_image_folder_validates_on_its_val_folder():
    assert periodic_evaluation_split({"dataset": "imagefolder", "ways": 5}) == "validation"


def test_sine_has_no_classes():
    assert periodic_evaluation_split({"dataset": "sine"}) is None


def test_compare_uses_one_title_when_runs_agree_and_says_so_when_they_differ():
    test = {"dataset": "omniglot", "ways": 5, "validation_classes": 0}
    val = {"dataset": "omniglot", "ways": 5, "validation_classes": 50}
    assert compare_chart_title([test, test]) == TEST_CLASSES_TITLE
    assert compare_chart_title([test, val]) == COMPARE_MIXED_TITLE
