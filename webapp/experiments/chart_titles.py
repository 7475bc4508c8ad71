"""What the periodic evaluation chart is called: it is not always a validation.

metatrain validates every `validation_interval` meta-iterations on the validation classes when
there are any (Omniglot with `validation_classes` >= `ways`, an image folder's `val/` classes),
and otherwise on the test classes (metatrain.train._validation_split): every Omniglot preset
keeps `validation_classes` at 0, as the paper does, so its "validation" curve is accuracy on the
held-out test classes, and the chart says so.

An image folder's `val/` may hold fewer classes than `ways`, which only the data reveals; the
config's promise (a validation split) is what the title follows.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

TEST_CLASSES_TITLE = "Held-out accuracy (test classes)"
VALIDATION_CLASSES_TITLE = "Validation accuracy (validation classes)"
COMPARE_MIXED_TITLE = "Periodic evaluation accuracy (test or validation classes, per run)"


def periodic_evaluation_split(config: Mapping[str, Any]) -> str | None:
    """'validation' or 'test': the classes a run's periodic evaluations use (None for sine,
    whose tasks are fresh random functions, not classes)."""
    dataset = config.get("dataset", "omniglot")
    if dataset == "sine":
        return None
    if dataset == "imagefolder":
        return "validation"
    validation_classes = int(config.get("validation_classes") or 0)
    ways = int(config.get("ways") or 1)
    return "validation" if validation_classes >= ways else "test"


def validation_chart_title(config: Mapping[str, Any]) -> str:
    """The run page's title for the `validation_accuracy` chart."""
    if periodic_evaluation_split(config) == "test":
        return TEST_CLASSES_TITLE
    return VALIDATION_CLASSES_TITLE


def compare_chart_title(configs: list[Mapping[str, Any]]) -> str:
    """The compare page's title for `validation_accuracy`: one title when all runs agree."""
    titles = {validation_chart_title(config) for config in configs}
    return titles.pop() if len(titles) == 1 else COMPARE_MIXED_TITLE
