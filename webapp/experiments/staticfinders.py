"""Serve Plotly.js from the installed `plotly` Python package as `vendor/plotly.min.js`.

The dashboard must never load scripts from a CDN, and a 4.8 MB minified bundle does not belong
in the repository. The pinned `plotly` package already ships the matching file, so this finder
exposes exactly that one file to `runserver`, the live test server and `collectstatic`.
"""

from __future__ import annotations

from pathlib import Path

from django.contrib.staticfiles.finders import BaseFinder
from django.core.checks import Error
from django.core.files.storage import FileSystemStorage

PLOTLY_STATIC_PATH = "vendor/plotly.min.js"


def plotly_js_path() -> Path:
    """Where the installed plotly package keeps its bundled plotly.min.js."""
    import plotly

    return Path(plotly.__file__).resolve().parent / "package_data" / "plotly.min.js"


class PlotlyFinder(BaseFinder):
    """A staticfiles finder that knows one file: `vendor/plotly.min.js`."""

    def check(self, **kwargs) -> list[Error]:
        try:
            found = plotly_js_path().is_file()
        except ImportError:
            found = False
        if found:
            return []
        return [
            Error(
                "plotly.min.js not found in the installed plotly package.",
                hint="pip install -r requirements.txt (the plotly package bundles Plotly.js).",
                id="experiments.E001",
            )
        ]

    def find(self, path: str, find_all: bool = False, **kwargs) -> str | list[str]:
        if kwargs.get("all"):  # the pre-5.2 spelling of find_all
            find_all = True
        match = str(plotly_js_path()) if path == PLOTLY_STATIC_PATH else None
        if find_all:
            return [match] if match else []
        return match or []

    def list(self, ignore_patterns):
        source = plotly_js_path()
        storage = FileSystemStorage(location=str(source.parent))
        storage.prefix = "vendor"  # collectstatic writes it as vendor/plotly.min.js
        yield source.name, storage
