"""Bricked ensembles: cut a volume into bricks (with ghost cells), fit one model per brick
in parallel, route queries by the spatial hash and blend across brick faces.

Normative description: ``spec/bricks.md``. Layers: uses ``fit``, ``models``, ``compress``
and ``container``; ``neurvol.api.encode`` dispatches here for bricked encodes and
``NeuralVolume`` uses :class:`BrickLayout` to route and blend queries.
"""
from .executors import NeurvolEncodeError, run_jobs
from .geometry import BrickLayout, grid_for, parse_layout
from .job import BrickJob, BrickResult, brick_seed, run_brick_job
from .source import source_spec

__all__ = ["BrickLayout", "BrickJob", "BrickResult", "NeurvolEncodeError", "brick_seed",
           "grid_for", "parse_layout", "run_brick_job", "run_jobs", "source_spec"]
