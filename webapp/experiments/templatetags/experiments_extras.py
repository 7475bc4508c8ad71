"""Small display filters: accuracies are fractions in code, percentages on screen."""

from __future__ import annotations

import json

from django import template

from webapp.experiments import chart_titles

register = template.Library()


@register.filter
def percent(value: float | None, digits: int = 2) -> str:
    """0.9539 -> '95.39 %'; empty for None."""
    if value is None or value == "":
        return ""
    return f"{float(value) * 100:.{int(digits)}f} %"


@register.filter
def config_value(value) -> str:
    """A config value as config.json spells it (true/false/null, not True/None); strings bare."""
    return value if isinstance(value, str) else json.dumps(value)


@register.filter
def validation_chart_title(config: dict) -> str:
    """The periodic evaluation chart's title for a run's config (test or validation classes)."""
    return chart_titles.validation_chart_title(config or {})
