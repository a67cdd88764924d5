"""The marker lists of tests/conftest.py name tests that exist (a renamed test would
otherwise silently lose its marker), and the markers are registered."""
import ast
from pathlib import Path

import pytest

from conftest import FUZZ_MODULES, SLOW_TESTS

TESTS = Path(__file__).resolve().parent


def _test_functions(module: str) -> set:
    tree = ast.parse((TESTS / module).read_text(encoding="utf-8"))
    return {n.name for n in tree.body if isinstance(n, ast.FunctionDef) and n.name.startswith("test_")}


@pytest.mark.parametrize("entry", sorted(SLOW_TESTS))
def test_slow_entry_names_a_test(entry):
    module, function = entry.split("::")
    assert (TESTS / module).is_file(), f"{module} no longer exists"
    assert function in _test_functions(module), f"{entry}: no such test; update SLOW_TESTS"


@pytest.mark.parametrize("module", sorted(FUZZ_MODULES))
def test_fuzz_module_exists(module):
    assert _test_functions(module)


def test_markers_are_registered(pytestconfig):
    registered = {line.split(":")[0].strip() for line in pytestconfig.getini("markers")}
    assert {"slow", "fuzz"} <= registered
