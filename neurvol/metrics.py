"""Quality metrics, computed the way BENCHMARKS.md reports them."""
from __future__ import annotations

import math
from typing import Iterator, Optional, Tuple

import numpy as np

from .volume_checks import CHUNK_VOXELS


def _valid_chunks(original: np.ndarray, reconstructed: np.ndarray,
                  valid: Optional[np.ndarray]) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
    """Pairs of float64 chunks of the original and reconstruction over the valid voxels:
    where ``valid`` (bool, the volume's shape) is True, and never where the original is
    NaN (a masked voxel, spec/mask.md)."""
    a = np.asarray(original).reshape(-1)
    b = np.asarray(reconstructed).reshape(-1)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {np.shape(original)} vs {np.shape(reconstructed)}")
    v = None if valid is None else np.asarray(valid, dtype=bool).reshape(-1)
    if v is not None and v.shape != a.shape:
        raise ValueError(f"valid has shape {np.shape(valid)}, the volume {np.shape(original)}")
    for s in range(0, a.size, CHUNK_VOXELS):
        x = a[s:s + CHUNK_VOXELS].astype(np.float64)
        y = b[s:s + CHUNK_VOXELS].astype(np.float64)
        keep = None if v is None else v[s:s + CHUNK_VOXELS]
        if x.dtype.kind == "f" and np.isnan(x).any():
            keep = ~np.isnan(x) if keep is None else keep & ~np.isnan(x)
        if keep is not None:
            x, y = x[keep], y[keep]
        yield x, y


def psnr(original: np.ndarray, reconstructed: np.ndarray,
         valid: Optional[np.ndarray] = None) -> float:
    """PSNR in dB over the original's data range (max - min), on every valid voxel.

    Valid voxels: all, or where ``valid`` is True; voxels where the original is NaN
    (masked regions) never count, for the error or the range. Computed in float64 chunk by
    chunk, so memmapped inputs are never copied whole. ``inf`` for an exact
    reconstruction; for a constant original the range is taken as 1; NaN when no voxel
    is valid.
    """
    sq, lo, hi, count = 0.0, math.inf, -math.inf, 0
    for x, y in _valid_chunks(original, reconstructed, valid):
        if x.size == 0:
            continue
        sq += float(np.sum((x - y) ** 2))
        lo, hi = min(lo, float(x.min())), max(hi, float(x.max()))
        count += x.size
    if count == 0:
        return math.nan
    return psnr_from_mse(sq / count, (hi - lo) or 1.0)


def psnr_from_mse(mse: float, data_range: float = 1.0) -> float:
    """PSNR in dB of a mean squared error over a data range (``inf`` for ``mse == 0``)."""
    return math.inf if mse == 0 else 10.0 * math.log10(data_range * data_range / mse)


def max_abs_error(original: np.ndarray, reconstructed: np.ndarray,
                  valid: Optional[np.ndarray] = None) -> float:
    """Largest absolute difference over the valid voxels (as :func:`psnr`), in the
    original's units (NaN where the reconstruction is NaN at a valid voxel)."""
    err = 0.0
    for x, y in _valid_chunks(original, reconstructed, valid):
        if x.size:
            d = np.abs(x - y)
            if np.isnan(d).any():
                return math.nan
            err = max(err, float(d.max()))
    return err
