"""The tree stays formatted, lint-clean and layered: `ruff format`, `ruff check` and the import contracts."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _ruff(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ruff", *args], cwd=ROOT, capture_output=True, text=True)


def test_tree_is_ruff_formatted():
    result = _ruff("format", "--check", ".")
    assert result.returncode == 0, "run `ruff format .`:\n" + result.stdout + result.stderr


def test_tree_passes_ruff_check():
    result = _ruff("check", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_layers_import_downward_only():
    """The contracts in pyproject.toml: no import cycles between the server's parts."""
    result = subprocess.run(
        [sys.executable, "-c", "from importlinter.cli import lint_imports_command; lint_imports_command()"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_server_module_has_a_layer():
    """A module left out of the layers contract would be free to import anything."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    (layers,) = [c["layers"] for c in config["tool"]["importlinter"]["contracts"] if c["type"] == "layers"]
    placed = {name.strip() for layer in layers for name in layer.replace("|", ":").split(":")}
    package = ROOT / "rustydb_server"
    modules = {f"rustydb_server.{p.stem}" for p in package.glob("*.py") if p.stem != "__init__"}
    modules |= {f"rustydb_server.{p.parent.name}" for p in package.glob("*/__init__.py")}
    assert modules - placed == set(), "add these to a layer in pyproject.toml"
