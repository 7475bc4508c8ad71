"""tools/import_cycles.py, the import-graph check of ``make lint``: it finds cycles however
the imports are written, reports where they are, and finds none in metatrain."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "tools" / "import_cycles.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("import_cycles", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["import_cycles"] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


import_cycles = _load_script()


def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "pkg"
    for name, text in {"__init__.py": "", **files}.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def _cycles(root: Path) -> list[list[str]]:
    """Each cycle as its chain of module names."""
    edges = import_cycles.import_edges(import_cycles.module_names(root))
    return [[c[0].source, *(e.target for e in c)] for c in import_cycles.find_cycles(edges)]


def test_a_package_without_cycles_passes(tmp_path):
    root = _package(
        tmp_path,
        {
            "a.py": "from . import b\nfrom .sub import c\n",
            "b.py": "import json\nfrom pkg.sub import c\n",
            "sub/__init__.py": "from .c import thing\n",
            "sub/c.py": "thing = 1\n",
        },
    )
    assert _cycles(root) == []
    assert import_cycles.main([str(root)]) == 0


@pytest.mark.parametrize(
    "files",
    [
        {"a.py": "from .b import x\n", "b.py": "from .a import y\n"},  # relative
        {"a.py": "import pkg.b\n", "b.py": "from pkg import a\n"},  # absolute, from-package
        {"a.py": "from . import b\n", "b.py": "def f():\n    from .a import y\n"},  # lazy
        {  # only for the type checker: still a cycle in the design
            "a.py": "from .b import x\n",
            "b.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .a import y\n",
        },
    ],
    ids=["relative", "absolute", "lazy", "type-checking"],
)
def test_a_two_module_cycle_is_found_however_it_is_written(tmp_path, files):
    assert _cycles(_package(tmp_path, files)) == [["pkg.a", "pkg.b", "pkg.a"]]


def test_a_longer_cycle_through_a_subpackage_is_reported_with_its_lines(tmp_path, capsys):
    root = _package(
        tmp_path,
        {
            "a.py": "import os\nfrom .engine import pool\n",
            "engine/__init__.py": "",
            "engine/pool.py": "from ..b import run\n",
            "b.py": "\n\nfrom pkg.a import thing\n",
            "c.py": "from . import a\n",  # imports into the cycle, is not in it
        },
    )
    assert _cycles(root) == [["pkg.a", "pkg.engine.pool", "pkg.b", "pkg.a"]]
    assert import_cycles.main([str(root)]) == 1
    out = capsys.readouterr().out
    assert "import cycle: pkg.a -> pkg.engine.pool -> pkg.b -> pkg.a" in out
    assert "pkg/a.py:2: pkg.a imports pkg.engine.pool" in out
    assert "pkg/b.py:3: pkg.b imports pkg.a" in out


def test_a_module_importing_itself_is_a_cycle(tmp_path):
    assert _cycles(_package(tmp_path, {"a.py": "def f():\n    import pkg.a\n"})) == [
        ["pkg.a", "pkg.a"]
    ]


def test_an_import_of_a_name_in_a_module_points_at_the_module(tmp_path):
    root = _package(
        tmp_path, {"a.py": "import pkg.b.thing\n", "b.py": "thing = 1\nfrom .a import x\n"}
    )
    assert _cycles(root) == [["pkg.a", "pkg.b", "pkg.a"]]


def test_metatrain_has_no_import_cycle():
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "metatrain"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "no import cycle" in done.stdout


def test_a_folder_that_is_not_a_package_is_a_usage_error(tmp_path, capsys):
    assert import_cycles.main([str(tmp_path)]) == 2
    assert "not a package" in capsys.readouterr().err
