"""Bricked ensembles: cut a volume into bricks (with ghost cells), fit one model per brick
in parallel, route queries by the spatial hash and blend across brick faces.

Normative description: ``spec/bricks.md``. Layers: uses ``fit``, ``models``, ``compress``
and ``container``; ``neurvol.api.encode`` dispatches here for bricked encodes and
``NeuralVolume`` uses :class:`BrickLayout` to route and blend queries.

The names below load on first use (PEP 562): the reader imports ``.geometry``, which needs
numpy only, while the fitting modules need torch.
"""
from __future__ import annotations

import importlib
from typing import Any

#: Public name -> the submodule that defines it.
_EXPORTS = {
    "NeurvolEncodeError": "executors", "run_jobs": "executors",
    "BrickLayout": "geometry", "grid_for": "geometry", "parse_layout": "geometry",
    "BrickJob": "job", "BrickResult": "job", "brick_seed": "job", "run_brick_job": "job",
    "source_spec": "source",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value
