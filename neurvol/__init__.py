"""neurvol: compressed neural volumes.

>>> import neurvol
>>> nv = neurvol.encode(volume, ratio=100); nv.save("f.nvol")      # doctest: +SKIP
>>> neurvol.open("f.nvol").query(points)                            # doctest: +SKIP

Reading (``open``, ``NeuralVolume``) needs numpy only; encoding needs PyTorch
(``pip install "neurvol[encode]"``). Without torch, ``encode`` raises
:class:`NeurvolDependencyError` saying what to install.
"""
__version__ = "0.1.0"

from .errors import (  # noqa: E402
    NeurvolBudgetError,
    NeurvolDependencyError,
    NeurvolError,
    NeurvolFormatError,
    NeurvolInputError,
    NeurvolIOError,
    NeurvolVersionError,
)
from .neural_volume import NeuralVolume  # noqa: E402
from .neural_volume import open_volume as open  # noqa: E402,A001
from . import metrics  # noqa: E402

try:
    from .api import encode, sample_volume  # noqa: E402
except ModuleNotFoundError as _exc:  # the core install: torch absent, reading still works
    if _exc.name != "torch":
        raise
    from ._without_torch import encode, sample_volume  # noqa: E402

__all__ = [
    "NeuralVolume", "NeurvolBudgetError", "NeurvolDependencyError", "NeurvolError",
    "NeurvolFormatError", "NeurvolIOError", "NeurvolInputError", "NeurvolVersionError", "encode",
    "open", "sample_volume", "metrics",
]
