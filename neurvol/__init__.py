"""neurvol: compressed neural volumes.

>>> import neurvol
>>> nv = neurvol.encode(volume, ratio=100); nv.save("f.nvol")      # doctest: +SKIP
>>> neurvol.open("f.nvol").query(points)                            # doctest: +SKIP
"""
from .version import __version__

from .errors import (  # noqa: E402
    NeurvolBudgetError,
    NeurvolError,
    NeurvolFormatError,
    NeurvolInputError,
    NeurvolIOError,
    NeurvolVersionError,
)
from .api import encode, open, sample_volume  # noqa: E402
from .neural_volume import NeuralVolume  # noqa: E402
from . import metrics  # noqa: E402

__all__ = [
    "NeuralVolume", "NeurvolBudgetError", "NeurvolError", "NeurvolFormatError", "NeurvolIOError",
    "NeurvolInputError", "NeurvolVersionError", "encode", "open", "sample_volume", "metrics",
]
