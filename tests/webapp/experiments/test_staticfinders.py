"""Plotly.js is served from the installed plotly package, never from a CDN or the repo."""

from __future__ import annotations

from pathlib import Path

from django.contrib.staticfiles import finders

from webapp.experiments.staticfinders import PLOTLY_STATIC_PATH, PlotlyFinder

FINDER = "webapp.experiments.staticfinders.PlotlyFinder"


def test_it_finds_plotly_min_js_in_the_plotly_package():
    found = PlotlyFinder().find(PLOTLY_STATIC_PATH)

    assert Path(found).name == "plotly.min.js"
    assert Path(found).stat().st_size > 1_000_000
    assert "plotly" in Path(found).read_text(encoding="utf-8", errors="ignore")[:2000].lower()


def test_it_knows_no_other_file():
    finder = PlotlyFinder()

    assert finder.find("vendor/other.js") == []
    assert finder.find("vendor/other.js", find_all=True) == []
    assert finder.find(PLOTLY_STATIC_PATH, find_all=True) == [finder.find(PLOTLY_STATIC_PATH)]


def test_collectstatic_sees_it_under_vendor():
    [(path, storage)] = list(PlotlyFinder().list([]))

    assert f"{storage.prefix}/{path}" == PLOTLY_STATIC_PATH
    assert storage.exists(path)


def test_it_passes_its_system_check():
    assert PlotlyFinder().check() == []


def test_django_serves_it_once_the_finder_is_configured(settings):
    if FINDER not in settings.STATICFILES_FINDERS:
        settings.STATICFILES_FINDERS = [*settings.STATICFILES_FINDERS, FINDER]

    assert finders.find(PLOTLY_STATIC_PATH) == PlotlyFinder().find(PLOTLY_STATIC_PATH)
