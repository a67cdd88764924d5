"""Scene-representation architectures (no I/O).

Each architecture registers itself by name; :func:`get_architecture` finds it. The torch
modules (training, the torch reader) load on first use of a torch name below, so
``neurvol.models.config`` and ``neurvol.models.numpy_eval`` (configs, tensor lists and the
numpy evaluation a reader needs) import without torch.
"""
from __future__ import annotations

import importlib
from typing import Any

from .config import ModelConfig

#: Names served by the torch half (:mod:`.base`), loaded with every architecture module.
_TORCH_NAMES = ("Architecture", "VolumeModel", "architectures", "get_architecture", "register")
_ARCH_MODULES = ("fvsrn", "neurcomp", "hashgrid", "amgsrn")

__all__ = ["ModelConfig", *_TORCH_NAMES]


def __getattr__(name: str) -> Any:
    if name not in _TORCH_NAMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    base = importlib.import_module(".base", __name__)
    for arch in _ARCH_MODULES:            # each registers itself on import
        importlib.import_module(f".{arch}", __name__)
    value = getattr(base, name)
    globals()[name] = value
    return value
