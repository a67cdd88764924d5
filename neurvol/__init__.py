"""neurvol: compressed neural volumes.

>>> import neurvol
>>> nv = neurvol.encode(volume, ratio=100); nv.save("f.nvol")      # doctest: +SKIP
>>> neurvol.open("f.nvol").query(points)                            # doctest: +SKIP

The public names resolve on first use (PEP 562): ``import neurvol.container`` or
``neurvol --help`` must not load torch, which only the encoder and the model evaluation need.
"""
from __future__ import annotations

import importlib
from typing import Any, Dict, List

from .version import __version__

# public name -> (module relative to this package, attribute or None for the module itself)
_LAZY: Dict[str, tuple] = {
    "NeurvolBudgetError": (".errors", "NeurvolBudgetError"),
    "NeurvolError": (".errors", "NeurvolError"),
    "NeurvolFormatError": (".errors", "NeurvolFormatError"),
    "NeurvolInputError": (".errors", "NeurvolInputError"),
    "NeurvolIOError": (".errors", "NeurvolIOError"),
    "NeurvolVersionError": (".errors", "NeurvolVersionError"),
    "encode": (".api", "encode"),
    "open": (".api", "open"),
    "sample_volume": (".api", "sample_volume"),
    "NeuralVolume": (".neural_volume", "NeuralVolume"),
    "metrics": (".metrics", None),
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    try:
        module_name, attr = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    module = importlib.import_module(module_name, __name__)
    value = module if attr is None else getattr(module, attr)
    globals()[name] = value  # later look-ups skip __getattr__
    return value


def __dir__() -> List[str]:
    return sorted(set(globals()) | set(__all__))
