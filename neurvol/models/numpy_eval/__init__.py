"""Torch-free half of every architecture: config, tensor list, numpy evaluation.

The maths is the normative one of ``spec/arch/*`` (fvsrn: ``spec/payload.md`` §3.1),
vectorised (grid lookups are gathers with trilinear weights, MLPs are BLAS matrix
products) in float32. The torch modules in :mod:`neurvol.models` import their configs
from here, so both paths read a header the same way. Nothing here imports torch.
"""
from .registry import (NumpyArchitecture, NumpyModel, get_numpy_architecture,
                       numpy_architectures, register_numpy)
from . import fvsrn  # noqa: F401  (registers "fvsrn")
from . import neurcomp  # noqa: F401  (registers "neurcomp")
from . import hashgrid  # noqa: F401  (registers "hashgrid")
from . import amgsrn  # noqa: F401  (registers "amgsrn")

__all__ = ["NumpyArchitecture", "NumpyModel", "get_numpy_architecture", "numpy_architectures",
           "register_numpy"]
