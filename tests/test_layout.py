"""The package's shape: layers that import one way down, and thin experiment entry points."""

import ast
import pathlib

import pytest

from conftest import ROOT

LAYERS = ("base", "data", "training", "analysis", "runs")  # each imports only those before it


def phasemix_imports(path: pathlib.Path) -> set[str]:
    """The phasemix layers a module imports (`from phasemix.<layer> ...`)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("phasemix."):
            found.add(node.module.split(".")[1])
    return found


def test_phasemix_has_few_top_level_entries():
    entries = [p.name for p in (ROOT / "phasemix").iterdir() if p.name != "__pycache__"]
    assert len(entries) <= 10, entries
    assert set(LAYERS) <= set(entries)


@pytest.mark.parametrize("layer", LAYERS)
def test_layers_import_only_the_layers_below(layer):
    allowed = set(LAYERS[:LAYERS.index(layer) + 1])
    for path in sorted((ROOT / "phasemix" / layer).glob("*.py")):
        assert phasemix_imports(path) <= allowed, (path.name, phasemix_imports(path) - allowed)


@pytest.mark.parametrize("path", sorted((ROOT / "experiments").glob("*.py")), ids=lambda p: p.name)
def test_experiments_are_thin_and_import_no_other_experiment(path):
    text = path.read_text()
    assert len(text.splitlines()) <= 300, path.name
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else [
                a.name for a in node.names]
            assert not any(n == "experiments" or n.startswith("experiments.") for n in names), (
                path.name, names)
