"""The trilinear interpolation of a voxel grid written out, corner by corner: the value the
error-bounded reader must give between voxel centres (spec/correction.md §3.2), computed
independently of the library so tests can compare against it."""
from __future__ import annotations

import numpy as np


def trilinear(grid: np.ndarray, points: np.ndarray) -> np.ndarray:
    """``grid`` interpolated at index-space ``points`` of shape (N, 3) (float64)."""
    top = np.array(grid.shape) - 2
    i0 = np.minimum(np.floor(points).astype(int), top)
    f = points - i0
    out = np.zeros(len(points))
    for c in np.ndindex(2, 2, 2):
        w = np.prod(np.where(np.array(c) == 1, f, 1 - f), axis=1)
        out += w * grid[tuple((i0 + np.array(c)).T)]
    return out
