"""neurvol: compressed neural volumes.

>>> import neurvol
>>> nv = neurvol.encode(volume, ratio=100); nv.save("f.nvol")      # doctest: +SKIP
>>> neurvol.open("f.nvol").query(points)                            # doctest: +SKIP

The public names resolve on first use (PEP 562): ``import neurvol.container`` or
``neurvol --help`` must not load torch, which only the encoder and the torch reader need.
Reading (``open``, ``NeuralVolume``) works with numpy alone; without torch, ``encode``
raises :class:`NeurvolDependencyError` saying to ``pip install "neurvol[encode]"``.
"""
from __future__ import annotations

import importlib
from typing import Any, Dict, List

from .version import __version__

# public name -> (module relative to this package, attribute or None for the module itself)
_LAZY: Dict[str, tuple] = {
    **{name: (".errors", name) for name in (
        "NeurvolBudgetError", "NeurvolDependencyError", "NeurvolError", "NeurvolFormatError",
        "NeurvolInputError", "NeurvolIOError", "NeurvolVersionError")},
    "encode": (".api", "encode"),
    "open": (".series", "open_any"),
    "sample_volume": (".api", "sample_volume"),
    "NeuralVolume": (".neural_volume", "NeuralVolume"),
    "NeuralSeries": (".series", "NeuralSeries"),
    "metrics": (".metrics", None),
}

#: Names whose module needs torch, and the torch-free stand-ins used without it.
_WITHOUT_TORCH = {"encode": "._without_torch", "sample_volume": "._without_torch"}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    try:
        module_name, attr = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    try:
        module = importlib.import_module(module_name, __name__)
    except ModuleNotFoundError as exc:   # the core install: no torch, reading still works
        if exc.name != "torch" or name not in _WITHOUT_TORCH:
            raise
        module = importlib.import_module(_WITHOUT_TORCH[name], __name__)
    value = module if attr is None else getattr(module, attr)
    globals()[name] = value  # later look-ups skip __getattr__
    return value


def __dir__() -> List[str]:
    return sorted(set(globals()) | set(__all__))
