"""Every module of `app/` has a place in the layers contract: import-linter checks only what it is told about.

A new top-level module or package that is not listed would be unconstrained — free to import any layer — and
the contract would still say KEPT. This test names the one that was left out.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _listed() -> set[str]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    layers = next(c for c in config["tool"]["importlinter"]["contracts"] if c["id"] == "layers")["layers"]
    return {name.strip() for layer in layers for name in re.split(r"[|:]", layer) if name.strip()}


def _top_level() -> set[str]:
    names = set()
    for path in (ROOT / "app").iterdir():
        if path.name.startswith(("_", ".")):
            continue
        if path.is_dir() and (path / "__init__.py").exists():
            names.add(f"app.{path.name}")
        elif path.suffix == ".py":
            names.add(f"app.{path.stem}")
    return names


def test_every_top_level_module_of_app_is_in_a_layer() -> None:
    missing = _top_level() - _listed()
    assert not missing, f"add these to a layer in pyproject.toml [tool.importlinter] 'layers': {sorted(missing)}"


def test_the_layers_name_only_modules_that_exist() -> None:
    stale = _listed() - _top_level()
    assert not stale, f"these layers name modules that no longer exist: {sorted(stale)}"


def test_no_module_of_app_is_over_500_lines() -> None:
    """A module that grows past 500 lines carries several jobs: split it (issue 11's rule)."""
    long = {
        str(path.relative_to(ROOT)): lines
        for path in (ROOT / "app").rglob("*.py")
        if (lines := len(path.read_text().splitlines())) > 500
    }
    assert long == {}
