"""Array-likes of a :class:`~neurvol.NeuralVolume` that decode only what is indexed.

:class:`RegionSource` is the volume's own grid (``source[key]`` is ``nv[key]``, a region
read) and :class:`ResampledSource` the grid of ``nv.decode(shape=...)``, evaluated for the
indexed voxels alone. Both have ``shape``, ``dtype``, ``ndim``, ``size`` and outer indexing,
the protocol dask, xarray and napari ask of array-likes, and both pickle as the file's bytes
(a ``.nvol`` file is small), so they can travel to other processes. Uses only the public
``NeuralVolume`` API, whichever backend evaluates the models.
"""
from __future__ import annotations

import math
import operator
from typing import Any, List, Tuple

import numpy as np

from ..errors import NeurvolInputError

#: A ``NeuralVolume``, used through its public methods only (this part sits below the
#: reader in the layers, tests/test_layers.py).
Volume = Any

# Points per model query of a resampled read (coordinates: 24 bytes a point).
_QUERY_POINTS = 1 << 20


class RegionSource:
    """``source[key]`` is the region read ``nv[key]`` (what dask graphs and xarray hold).

    In this process it is the ``NeuralVolume`` itself (its brick cache and counters are
    shared with the caller). Pickled (for another process), it carries the file's bytes
    and reopens them there once.
    """

    def __init__(self, nv: Volume) -> None:
        self.nv = nv
        self.shape = nv.shape
        self.dtype = nv.dtype
        self.ndim = len(nv.shape)

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    def __getitem__(self, key: Any) -> np.ndarray:
        return self.nv[key]

    def __reduce__(self) -> Tuple[Any, Tuple[Any, bytes]]:
        return _reopen, (type(self.nv), self.nv.to_bytes())


def _reopen(cls: Any, data: bytes) -> RegionSource:
    """A source over the file's bytes, read by ``cls`` (``NeuralVolume``, which pickle
    names by reference)."""
    from ..container import NvolReader

    return RegionSource(cls(NvolReader(data)))


class ResampledSource(RegionSource):
    """``source[key]`` is ``nv.decode(shape=shape)[key]``, evaluated for those voxels only:
    an array-like (``shape``, ``dtype``, ``ndim``, outer indexing with ints, slices and 1-D
    integer or boolean arrays per axis, as ``nv[...]``) that decodes nothing until indexed."""

    def __init__(self, nv: Volume, shape: Tuple[int, int, int]) -> None:
        super().__init__(nv)
        self.shape = shape

    def __getitem__(self, key: Any) -> np.ndarray:
        axes: List[np.ndarray] = []
        kept: List[int] = []
        for k, m in zip(_three(key), self.shape):
            coords, keep = _axis_coords(k, m)
            axes.append(coords)
            if keep:
                kept.append(len(coords))
        z, y, x = axes
        out = np.empty((len(z), len(y), len(x)), dtype=self.dtype)
        # Whole z-planes per query, as many as fit in _QUERY_POINTS points (at least one;
        # then row blocks of one plane), so the coordinates stay bounded for any request.
        plane = len(y) * len(x)
        step_z = max(1, _QUERY_POINTS // max(1, plane))
        step_y = len(y) if plane <= _QUERY_POINTS else max(1, _QUERY_POINTS // max(1, len(x)))
        for z0 in range(0, len(z), step_z):
            for y0 in range(0, len(y), step_y):
                zs, ys = z[z0:z0 + step_z], y[y0:y0 + step_y]
                grid = np.empty((len(zs), len(ys), len(x), 3))
                grid[..., 0] = zs[:, None, None]
                grid[..., 1] = ys[None, :, None]
                grid[..., 2] = x[None, None, :]
                values = self.nv.query(grid.reshape(-1, 3), space="normalized")
                out[z0:z0 + step_z, y0:y0 + step_y] = _cast(values, self.dtype).reshape(grid.shape[:3])
        return out.reshape(kept)

    def __reduce__(self) -> Tuple[Any, Tuple[Any, bytes, Tuple[int, int, int]]]:  # type: ignore[override]
        return _reopen_resampled, (type(self.nv), self.nv.to_bytes(), self.shape)


def _linspace_part(m: int, a: int, b: int) -> np.ndarray:
    """``np.linspace(-1, 1, m)[a:b]`` (0 for m = 1) computed as a full decode computes its
    grid (``arange * step + start``, the last value pinned to 1), so the points are the same."""
    if m == 1:
        return np.zeros(max(0, b - a))
    c = np.arange(a, b, dtype=np.float64) * (2.0 / (m - 1)) + -1.0
    if b == m and b > a:
        c[-1] = 1.0
    return c


def _linspace(m: int) -> np.ndarray:
    return _linspace_part(m, 0, m)


def _three(key: Any) -> Tuple[Any, Any, Any]:
    """A key of up to 3 axes (one Ellipsis allowed) as 3 per-axis keys."""
    key = key if isinstance(key, tuple) else (key,)
    ellipses = [j for j, k in enumerate(key) if k is Ellipsis]
    if len(ellipses) > 1 or any(k is None for k in key):
        raise NeurvolInputError(f"unsupported index {key!r}: at most one Ellipsis, no newaxis")
    if ellipses:
        i = ellipses[0]
        key = key[:i] + (slice(None),) * (4 - len(key)) + key[i + 1:]
    if len(key) > 3:
        raise NeurvolInputError(f"too many indices for a 3-D volume: {len(key)}")
    a, b, c = tuple(key) + (slice(None),) * (3 - len(key))
    return a, b, c


def _axis_coords(k: Any, m: int) -> Tuple[np.ndarray, bool]:
    """Normalized coordinates of one axis key on a grid of m voxels, and whether the axis
    stays (ints drop it)."""
    if isinstance(k, slice):
        start, stop, step = k.indices(m)
        if step == 1:
            return _linspace_part(m, start, max(start, stop)), True
        return _linspace(m)[k], True
    if not isinstance(k, (np.ndarray, list, tuple)) and not isinstance(k, (bool, np.bool_)):
        try:
            i = operator.index(k)
        except TypeError:
            raise NeurvolInputError(
                f"unsupported index {k!r}: use ints, slices or 1-D int arrays") from None
        if not -m <= i < m:
            raise NeurvolInputError(f"index {i} out of range for axis of length {m}")
        i %= m
        return _linspace_part(m, i, i + 1), False
    arr = np.asarray(k)
    if arr.ndim != 1 or arr.dtype.kind not in "iub" or (arr.dtype.kind == "b" and len(arr) != m):
        raise NeurvolInputError(
            f"unsupported index {k!r}: use ints, slices or 1-D int arrays (booleans: one per voxel)"[:300])
    if arr.dtype.kind != "b" and arr.size and (arr.min() < -m or arr.max() >= m):
        raise NeurvolInputError(f"index out of range for axis of length {m}")
    return _linspace(m)[arr], True


def _cast(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Float values in the volume's units into its dtype, as a decode does (spec/payload.md
    §1.2: integers are ``clip(rint(value))``)."""
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return np.clip(np.rint(values), info.min, info.max).astype(dtype)
    return values.astype(dtype, copy=False)


def _reopen_resampled(cls: Any, data: bytes, shape: Tuple[int, int, int]) -> ResampledSource:
    return ResampledSource(_reopen(cls, data).nv, shape)
