"""Bricked ensembles: cut a volume into bricks (with ghost cells), share the byte budget
among them, run their jobs in parallel, route queries by the spatial hash and blend
across brick faces.

Normative description: ``spec/bricks.md``. Layers: below the encode planning
(``neurvol.encoding.bricked`` plans a bricked encode and gives the jobs their function)
and ``NeuralVolume`` (which uses :class:`BrickLayout` to route and blend queries); uses
``fit`` and ``container``.
"""
from .executors import NeurvolEncodeError, run_jobs
from .geometry import BrickLayout, grid_for, parse_layout
from .job import BrickJob, BrickResult, brick_seed
from .source import source_spec

__all__ = ["BrickLayout", "BrickJob", "BrickResult", "NeurvolEncodeError", "brick_seed",
           "grid_for", "parse_layout", "run_jobs", "source_spec"]
