"""Rules for the test suite itself: shared helpers come from conftest.py or helpers.py, and every fixture file names its source."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from helpers import FIXTURES, upstream_keys

TESTS = Path(__file__).resolve().parent


def suite_modules() -> set[str]:
    """The names of every tests/test_*.py module."""
    return {p.stem for p in TESTS.glob("test_*.py")}


def imports_of_test_modules(source: str, modules: set[str]) -> list[str]:
    """Every import (at any depth) in `source` that reaches one of the test modules `modules`."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = (node.module or "").split(".")
            # `from . import test_x` and `from tests import test_x` name the module in the imported names.
            names = [node.module or ""] + [".".join(base + [a.name]).lstrip(".") for a in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "tests":
                parts = parts[1:]
            if parts and parts[0] in modules:
                found.append(f"line {node.lineno}: imports {parts[0]}")
                break
    return found


def test_no_test_file_imports_another():
    modules = suite_modules()
    assert len(modules) >= 30
    offenders = {}
    for name in sorted(modules):
        hits = imports_of_test_modules((TESTS / f"{name}.py").read_text(), modules - {name})
        if hits:
            offenders[name] = hits
    assert offenders == {}, "move shared helpers to tests/helpers.py (plain) or tests/conftest.py (fixtures)"


@pytest.mark.parametrize("source", [
    "from test_app import app_home, demo_clip",
    "import test_wm",
    "import test_wm as w",
    "from tests.test_weights_manager import Server",
    "from . import test_app",
    "from tests import test_wm",
    "def f():\n    from test_wm import upstream_files\n",
])
def test_the_rule_catches_a_planted_import(source):
    assert imports_of_test_modules(source, {"test_app", "test_wm", "test_weights_manager"})


@pytest.mark.parametrize("source", [
    "from helpers import Server", "import conftest", "from tiny_detector import TinyDetector",
    "from detectors import wm", "import testing_utils",
])
def test_the_rule_allows_shared_modules(source):
    assert imports_of_test_modules(source, {"test_app", "test_wm", "test_weights_manager"}) == []


def test_every_fixture_file_names_its_source():
    readme = (FIXTURES / "README.md").read_text()
    files = sorted(p for p in FIXTURES.iterdir() if p.name != "README.md")
    assert files, "tests/fixtures is empty"
    for path in files:
        assert f"`{path.name}`" in readme, f"{path.name} is not described in tests/fixtures/README.md"
        assert path.suffix == ".tsv", f"{path.name}: fixtures here are text tables"
        header = path.read_text().splitlines()[:3]
        assert any(line.startswith("# built by: ") and len(line) > 40 for line in header), path.name
        if path.name.endswith(".keys.tsv"):
            assert upstream_keys(path.name.removesuffix(".keys.tsv"))  # parses, one key per line
