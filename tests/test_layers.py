"""The layers of DESIGN.md, enforced on the source (an AST test: no dependency needed).

Every import statement of ``neurvol/`` counts, at module level or inside a function: a
function-level import is still a dependency, only a later one.

Rules:

* every part of the package (a top-level module or subpackage of ``neurvol``) has a place in
  :data:`LAYERS`, and imports only parts of a strictly lower rank (parts of equal rank sit
  alongside each other and do not import each other);
* no import cycle between parts;
* no part imports a private name (``_x``, a private module or attribute) of another part;
* :data:`TORCH_FREE` parts never import torch, directly or through anything they import;
* at run time, with torch unimportable, ``neurvol.container``, ``neurvol.compress`` and
  ``neurvol.io`` import and ``neurvol --help`` works.
"""
from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from collections import defaultdict
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Set, Tuple

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "neurvol"
SOURCE = ROOT / PACKAGE

# The layer table (DESIGN.md, "Layers"), bottom first. A part may import only parts of a
# lower rank. A new part gets a row here; moving a part is a design decision, made here.
LAYERS: Dict[str, int] = {
    # shared foundations: error types, atomic writes, input limits, quality metrics
    "errors": 0, "version": 0,
    "_atomic": 1, "_closing": 1, "volume_checks": 1,
    # PSNR and error over whole volumes (chunked with volume_checks' chunk size)
    "metrics": 2,
    # bytes and files, alongside each other: the .nvol layout, volume formats, pictures
    "container": 3, "io": 3, "viz": 3,
    # weights <-> bytes (numpy, zstandard; no torch)
    "compress": 4,
    # SRN architectures (torch for training, numpy for reading)
    "models": 5, "model_limits": 5,
    # a masked volume's header entry and where its mask applies (decoded grids, queries)
    "masking": 5,
    # sampling, training, losses, rate terms
    "fit": 6,
    # a trained model -> payload (pruning, quantization, fine-tuning)
    "pipeline": 7,
    # bricks: cut, fit in parallel, route by spatial hash; alongside, a volume as an array
    # (np.asarray, dask chunks per brick, array-likes decoding only what is indexed)
    "ensemble": 8, "arrays": 8,
    # how the reader evaluates models: torch when installed, else numpy (models.numpy_eval)
    "backend": 8,
    # the reader object: header + index, queries routed to models or bricks
    "neural_volume": 9,
    # encode planning: size solving, rate pilot, psnr search, fit -> compress -> pack
    "encoding": 10,
    # time series and several variables in one file: the reader, composing one
    # NeuralVolume per member (variable x step); its encoder is part of encoding
    "series": 10,
    # the facade's stand-in for encode when torch is not installed (raises what to install)
    "_without_torch": 10,
    # thin facades and tools on top
    "api": 11,
    "bench": 12,
    # readers for other tools: xarray backend, napari and ParaView plugins
    "integrations": 12,
    "cli": 13,
    "__main__": 14,
}
# `import neurvol` / `from neurvol import encode`: the package facade resolves its names to
# `api`, `neural_volume`, `errors`, `metrics` (neurvol/__init__.py), so it counts as `api`.
# Its `__version__` is a constant defined there and may be imported from anywhere.
FACADE = "__init__"
FACADE_RANK = LAYERS["api"]
FACADE_CONSTANTS = {"__version__"}

# Parts that must load without torch (DESIGN.md: reading a file needs numpy, not torch).
TORCH_FREE = ("container", "compress", "io")
# Third-party modules that import torch themselves.
TORCH_MODULES = {"torch", "torchvision", "tinycudann", "vector_quantize_pytorch"}


# ---------------------------------------------------------------------------------------
# the import graph


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def is_package(path: Path) -> bool:
    return path.name == "__init__.py"


MODULES: Dict[str, Path] = {module_name(p): p for p in sorted(SOURCE.rglob("*.py"))}


def part_of(module: str) -> str:
    """``neurvol.compress.vq`` -> ``compress``; the package itself -> ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else FACADE


def rank_of(part: str) -> int:
    return FACADE_RANK if part == FACADE else LAYERS[part]


class Import:
    """One imported thing: the module it loads and, for ``from m import n``, the name."""

    def __init__(self, module: str, name: Optional[str], line: int, top_level: bool) -> None:
        self.module, self.name, self.line, self.top_level = module, name, line, top_level

    def target(self) -> str:
        """The neurvol module this loads (a submodule named in ``from pkg import sub``)."""
        if self.name is not None and f"{self.module}.{self.name}" in MODULES:
            return f"{self.module}.{self.name}"
        return self.module


def imports_of(module: str) -> Iterator[Import]:
    """Every import statement of ``module``, relative ones resolved to absolute names."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = module if is_package(path) else module.rpartition(".")[0]
    top = set(id(n) for n in tree.body)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(alias.name, None, node.lineno, id(node) in top)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            for alias in node.names:
                yield Import(name, alias.name, node.lineno, id(node) in top)


def internal(name: str) -> bool:
    return name == PACKAGE or name.startswith(PACKAGE + ".")


def parents(module: str) -> List[str]:
    """The packages Python imports before ``module`` (``a.b.c`` -> ``a``, ``a.b``)."""
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


IMPORTS: Dict[str, List[Import]] = {m: list(imports_of(m)) for m in MODULES}


def part_edges() -> Dict[Tuple[str, str], List[str]]:
    """(importing part, imported part) -> ["module:line", ...], between different parts."""
    edges: Dict[Tuple[str, str], List[str]] = defaultdict(list)
    for module, found in IMPORTS.items():
        src = part_of(module)
        for imp in found:
            if not internal(imp.module):
                continue
            dst = part_of(imp.target())
            if dst == FACADE and imp.name in FACADE_CONSTANTS:
                continue
            where = f"{MODULES[module].relative_to(ROOT)}:{imp.line}"
            if src != dst and where not in edges[(src, dst)]:
                edges[(src, dst)].append(where)
    return edges


# ---------------------------------------------------------------------------------------
# checks (pure functions, so that the tests below can also show they catch a violation)


def unplaced_parts() -> List[str]:
    found = {part_of(m) for m in MODULES} - {FACADE}
    return sorted(found - set(LAYERS))


def upward_imports(edges: Dict[Tuple[str, str], List[str]]) -> List[str]:
    bad = []
    for (src, dst), where in sorted(edges.items()):
        if src == FACADE or src not in LAYERS or (dst != FACADE and dst not in LAYERS):
            continue
        if rank_of(dst) >= rank_of(src):
            bad.append(f"{src} (rank {rank_of(src)}) imports {dst} (rank {rank_of(dst)}) "
                       f"at {', '.join(where)}")
    return bad


def cycles(edges: Dict[Tuple[str, str], List[str]]) -> List[List[str]]:
    """Strongly connected components of more than one part (Tarjan)."""
    graph: Dict[str, Set[str]] = defaultdict(set)
    for src, dst in edges:
        graph[src].add(dst)
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    found: List[List[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(set(graph) | {d for s in graph.values() for d in s}):
        if v not in index:
            visit(v)
    return found


def private_imports(imports: Dict[str, List[Import]]) -> List[str]:
    """``from ..other import _name`` / ``import neurvol.other._mod`` across parts."""
    bad = []
    for module, found in sorted(imports.items()):
        src = part_of(module)
        for imp in found:
            if not internal(imp.module):
                continue
            dst = part_of(imp.target())
            if dst == src:
                continue
            # the path below the part's own name, plus the imported name
            inside = imp.module.split(".")[2:] + ([imp.name] if imp.name else [])
            private = [p for p in inside if p.startswith("_") and not p.startswith("__")]
            if private:
                bad.append(f"{MODULES[module].relative_to(ROOT)}:{imp.line} imports "
                           f"{'.'.join(private)} from {imp.module} (private to {dst})")
    return bad


def torch_imports(imports: Dict[str, List[Import]], parts=TORCH_FREE) -> List[str]:
    """Modules of ``parts`` that reach torch, with the chain of imports that gets there."""
    bad = []
    for start in sorted(m for m in imports if part_of(m) in parts):
        seen = {start: [start]}
        todo = [start]
        while todo:
            m = todo.pop()
            for imp in imports.get(m, []):
                if imp.module.split(".")[0] in TORCH_MODULES:
                    chain = " -> ".join(seen[m] + [f"{imp.module} (line {imp.line})"])
                    bad.append(f"{start} reaches torch: {chain}")
                    continue
                if not internal(imp.module):
                    continue
                target = imp.target()
                for nxt in parents(target)[1:] + [target]:
                    if nxt in MODULES and nxt not in seen:
                        seen[nxt] = seen[m] + [nxt]
                        todo.append(nxt)
    return sorted(set(bad))


# ---------------------------------------------------------------------------------------
# the tests


def test_every_part_has_a_layer() -> None:
    assert unplaced_parts() == [], "place these parts in LAYERS (tests/test_layers.py)"


def test_no_upward_imports() -> None:
    bad = upward_imports(part_edges())
    assert bad == [], "imports against the layer order:\n" + "\n".join(bad)


def test_no_import_cycle_between_parts() -> None:
    found = cycles(part_edges())
    assert found == [], f"import cycles between parts: {found}"


def test_no_private_imports_across_parts() -> None:
    bad = private_imports(IMPORTS)
    assert bad == [], "private names imported from another part:\n" + "\n".join(bad)


def test_torch_free_parts_never_import_torch() -> None:
    bad = torch_imports(IMPORTS)
    assert bad == [], "\n".join(bad)


def test_the_checks_catch_violations() -> None:
    """Each check fails on a deliberately wrong import (so a green run means something)."""
    container = "neurvol.container.format"
    fake = dict(IMPORTS)
    fake[container] = IMPORTS[container] + [
        Import("torch", None, 1, True),                          # torch in the reader
        Import("neurvol.api", "encode", 2, False),               # upward, inside a function
        Import("neurvol.compress.records", "_CODERS", 3, True),  # a private name
    ]
    assert any("torch" in b for b in torch_imports(fake))
    # torch reached through an import, not directly
    fake_mod = "neurvol.compress.streams"
    fake2 = dict(IMPORTS)
    # (neurvol.models itself loads its torch modules lazily; its base module imports torch)
    fake2[fake_mod] = IMPORTS[fake_mod] + [Import("neurvol.models.base", "VolumeModel", 4, False)]
    assert any(b.startswith(fake_mod) and "neurvol.models.base" in b for b in torch_imports(fake2))

    edges = {("container", "api"): ["neurvol/container/format.py:2"]}
    assert upward_imports(edges) == [
        f"container (rank {LAYERS['container']}) imports api (rank {LAYERS['api']}) at neurvol/container/format.py:2"]
    assert cycles(edges) == []
    edges[("api", "fit")] = edges[("fit", "container")] = ["x.py:1"]
    assert cycles(edges) == [["api", "container", "fit"]]
    assert any("_CODERS" in b for b in private_imports(fake))


def test_parser_commands_are_classified() -> None:
    """Every subcommand is either one that needs the architectures or one that does not."""
    from neurvol import cli

    parser = cli.build_parser(models=False)
    sub = next(a for a in parser._actions if a.dest == "command")
    assert set(sub.choices) == cli.MODEL_COMMANDS | cli._TORCH_FREE_COMMANDS
    assert not cli.MODEL_COMMANDS & cli._TORCH_FREE_COMMANDS


BLOCKED = textwrap.dedent("""
    import sys
    sys.modules["torch"] = None          # `import torch` now raises ImportError
    import neurvol.container, neurvol.compress, neurvol.io
    from neurvol.cli import main
    for argv in (["--help"], ["info", "--help"], ["query", "--help"], ["--version"]):
        try:
            code = main(argv)
        except SystemExit as e:
            code = e.code
        assert code == 0, (argv, code)
    assert sys.modules["torch"] is None
    print("OK")
""")


def test_reading_parts_and_help_work_without_torch() -> None:
    env_path = str(ROOT)
    proc = subprocess.run([sys.executable, "-c", BLOCKED], capture_output=True, text=True,
                          cwd=ROOT, env={"PYTHONPATH": env_path, "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.rstrip().endswith("OK")
    assert "usage: neurvol" in proc.stdout
