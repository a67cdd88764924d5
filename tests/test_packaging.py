"""pyproject.toml declares what the code uses: every required dependency is imported by the
package, every optional one by the package, the tests or the benchmarks; the licence and
citation files agree with the metadata."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, List

import pytest

tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python 3.11+")

ROOT = Path(__file__).resolve().parents[1]
#: Distribution name -> the module it provides, where the two differ.
MODULE_OF = {"vector-quantize-pytorch": "vector_quantize_pytorch", "netcdf4": "netCDF4"}
#: How a module is imported: a statement, or by name through the optional-import helpers.
_IMPORT = r"(?m)^\s*(?:import|from)\s+{0}\b|(?:optional_module|importorskip|import_module)\(\s*[\"']{0}\b"


def _project() -> Dict:
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["project"]


def _modules(requirement: str) -> List[str]:
    """The importable modules of one requirement string (``dask[distributed]>=2023`` ->
    ``dask`` and ``distributed``)."""
    m = re.match(r"\s*([A-Za-z0-9_.\-]+)\s*(?:\[([^\]]*)\])?", requirement)
    assert m, requirement
    name = m.group(1).lower()
    mods = [MODULE_OF.get(name, name.replace("-", "_"))]
    if name == "dask" and m.group(2) and "distributed" in m.group(2):
        mods.append("distributed")
    return mods


def _imported(module: str, *dirs: str) -> bool:
    pattern = re.compile(_IMPORT.format(re.escape(module)))
    return any(pattern.search(p.read_text(encoding="utf-8"))
               for d in dirs for p in (ROOT / d).rglob("*.py"))


@pytest.mark.parametrize("requirement", _project()["dependencies"])
def test_required_dependency_is_imported_by_the_package(requirement):
    for module in _modules(requirement):
        assert _imported(module, "neurvol"), \
            f"{requirement} is required but neurvol/ never imports {module}: remove it or use it"


@pytest.mark.parametrize("extra,requirement", [
    (extra, req) for extra, reqs in _project()["optional-dependencies"].items() for req in reqs])
def test_optional_dependency_is_imported_somewhere(extra, requirement):
    for module in _modules(requirement):
        assert _imported(module, "neurvol", "tests", "benchmarks"), \
            f"[{extra}] declares {requirement}, but nothing imports {module}"


def test_licence_and_citation_match_the_metadata():
    project = _project()
    assert "Apache License" in (ROOT / "LICENSE").read_text(encoding="utf-8")[:200]
    assert project["license"]["text"] == "Apache-2.0"
    citation = (ROOT / "CITATION.cff").read_text(encoding="utf-8")
    assert re.search(r"(?m)^license: Apache-2.0$", citation)
    assert re.search(rf"(?m)^version: {re.escape(project['version'])}$", citation)
