"""Benchmark harness: classical baselines and a runner that measures neurvol against them.

>>> from neurvol.bench import run_benchmark, format_markdown          # doctest: +SKIP
>>> rows = run_benchmark(vol, "walnut", ratios=(100,), baselines=("downsample", "sz3"))  # doctest: +SKIP
>>> print(format_markdown(rows))                                     # doctest: +SKIP

``neurvol.bench.baselines`` needs only numpy (plus zstandard / zfpy / pysz for those
baselines); ``neurvol.bench.runner`` imports neurvol (torch) when it encodes.
"""
from .baselines import (
    BASELINES,
    BaselineResult,
    BaselineUnavailable,
    available_baselines,
    budget_for,
    downsample_baseline,
    get_baseline,
    register,
    zstd_lossless,
)
from .runner import COLUMNS, format_markdown, run_benchmark
from .report import format_table

__all__ = [
    "BASELINES", "BaselineResult", "BaselineUnavailable", "COLUMNS", "available_baselines",
    "budget_for", "downsample_baseline", "format_markdown", "format_table", "get_baseline", "register",
    "run_benchmark", "zstd_lossless",
]
