"""Registry of the torch-free evaluations, by architecture name.

Each architecture's torch-free module registers one :class:`NumpyArchitecture`: its config
class (shared with the torch module), a description, and a :class:`NumpyModel` class that
evaluates the spec's maths (``spec/arch/*``) from the named weight arrays the payload
decoder returns. A reader looks the name up here; adding an architecture adds one entry.
"""
from __future__ import annotations

import dataclasses
from typing import Mapping, Type

import numpy as np

from ..config import ModelConfig, NameRegistry


class NumpyModel:
    """A decoded model evaluated with numpy: normalized coords -> normalized values.

    Built from the validated config and ``{name: float32 array}`` with the shapes of
    ``config.tensor_specs()``; ``model(coords)`` takes ``(N, 3)`` float32 normalized
    (z, y, x) points and returns ``(N,)`` float32. Callers pass bounded chunks of points
    (memory is a small multiple of the chunk); calls from several threads at once are safe
    (a model holds no per-call state).
    """

    config: ModelConfig

    def __init__(self, config: ModelConfig, arrays: Mapping[str, np.ndarray]) -> None:
        self.config = config

    def __call__(self, coords: np.ndarray) -> np.ndarray:
        raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class NumpyArchitecture:
    """A registry entry: the config class, a description and the numpy evaluation."""

    name: str
    config_cls: Type[ModelConfig]
    model_cls: Type[NumpyModel]
    description: str = ""

    def build(self, config: ModelConfig, arrays: Mapping[str, np.ndarray]) -> NumpyModel:
        return self.model_cls(config, arrays)


_REGISTRY: NameRegistry[NumpyArchitecture] = NameRegistry("numpy evaluation of")
#: Add an architecture's numpy evaluation (names are unique).
register_numpy = _REGISTRY.add
#: Look up an architecture's torch-free entry by name (an unknown name is an input error).
get_numpy_architecture = _REGISTRY.get
#: Names of all architectures with a numpy evaluation, sorted.
numpy_architectures = _REGISTRY.names
