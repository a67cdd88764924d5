"""Stand-ins for the torch-only top-level API when torch is not installed.

``encode`` raises :class:`~neurvol.errors.NeurvolDependencyError` naming the extra to
install; ``sample_volume`` needs no torch and works as usual.
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np

from .backend import require_torch

_SAMPLE = os.path.join(os.path.dirname(__file__), "sample", "neghip.npy")


def encode(volume: Any, *args: Any, **kwargs: Any) -> Any:
    """Needs PyTorch: raises NeurvolDependencyError saying how to install it."""
    require_torch("neurvol.encode")
    raise AssertionError("unreachable: torch is installed, import neurvol.api instead")


def sample_volume() -> np.ndarray:
    """The embedded sample: VolVis "neghip", 66x66x66 uint8 (see ``neurvol/sample/README.md``)."""
    return np.load(_SAMPLE, allow_pickle=False)
