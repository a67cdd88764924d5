"""Quality metrics, computed the way BENCHMARKS.md reports them."""
from __future__ import annotations

import math

import numpy as np

from .volume_checks import CHUNK_VOXELS


def psnr(original: np.ndarray, reconstructed: np.ndarray) -> float:
    """PSNR in dB over the original's data range (max - min), on every voxel.

    Computed in float64 chunk by chunk, so memmapped inputs are never copied whole.
    ``inf`` for an exact reconstruction; for a constant original the range is taken as 1.
    """
    a = np.asarray(original).reshape(-1)
    b = np.asarray(reconstructed).reshape(-1)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {np.shape(original)} vs {np.shape(reconstructed)}")
    sq, lo, hi = 0.0, math.inf, -math.inf
    for s in range(0, a.size, CHUNK_VOXELS):
        x = a[s:s + CHUNK_VOXELS].astype(np.float64)
        y = b[s:s + CHUNK_VOXELS].astype(np.float64)
        sq += float(np.sum((x - y) ** 2))
        lo, hi = min(lo, float(x.min())), max(hi, float(x.max()))
    return psnr_from_mse(sq / a.size, (hi - lo) or 1.0)


def psnr_from_mse(mse: float, data_range: float = 1.0) -> float:
    """PSNR in dB of a mean squared error over a data range (``inf`` for ``mse == 0``)."""
    return math.inf if mse == 0 else 10.0 * math.log10(data_range * data_range / mse)


def max_abs_error(original: np.ndarray, reconstructed: np.ndarray) -> float:
    """Largest absolute difference, in the original's units."""
    a = np.asarray(original).reshape(-1)
    b = np.asarray(reconstructed).reshape(-1)
    err = 0.0
    for s in range(0, a.size, CHUNK_VOXELS):
        d = np.abs(a[s:s + CHUNK_VOXELS].astype(np.float64) - b[s:s + CHUNK_VOXELS].astype(np.float64))
        err = max(err, float(d.max()))
    return err
