"""Scene-representation architectures (torch only; no I/O).

Each architecture registers itself by name; :func:`get_architecture` finds it.
"""
from .base import Architecture, ModelConfig, VolumeModel, architectures, get_architecture, register
from . import fvsrn  # noqa: F401  (registers "fvsrn")
from . import neurcomp  # noqa: F401  (registers "neurcomp")
from . import hashgrid  # noqa: F401  (registers "hashgrid")
from . import amgsrn  # noqa: F401  (registers "amgsrn")

__all__ = ["Architecture", "ModelConfig", "VolumeModel", "architectures", "get_architecture", "register"]
