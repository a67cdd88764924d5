"""Bricked ensembles: cut a volume into bricks (with ghost cells), share the byte budget
among them, run their jobs in parallel, route queries by the spatial hash and blend
across brick faces.

Normative description: ``spec/bricks.md``. Layers: below the encode planning
(``neurvol.encoding.bricked`` plans a bricked encode and gives the jobs their function)
and ``NeuralVolume`` (which uses :class:`BrickLayout` to route and blend queries); uses
``fit`` and ``container``.

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
    "BrickJob": "job", "BrickResult": "job", "brick_seed": "job",
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
