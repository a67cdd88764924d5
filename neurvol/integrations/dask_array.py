"""The array protocol of :class:`~neurvol.NeuralVolume`: ``np.asarray(nv)`` and lazy dask
arrays whose chunks are region reads; :class:`ResampledSource`, an array-like
``decode(shape=...)`` that decodes only what is indexed (napari's pyramid levels, ParaView's
Resolution), and :func:`resampled`, its dask array.

Chunks of a bricked file are the voxels each brick owns (spec/bricks.md §2), so computing
one chunk decodes its brick (and, with blending, the neighbours within the ghost band of
its faces). A single-model file is cut into blocks of :data:`SINGLE_MODEL_BLOCK` voxels a
side. Uses only the public ``NeuralVolume`` API (``shape``, ``dtype``, ``header``,
``nv[...]``, ``decode``, ``to_bytes``), whichever backend evaluates the models.
"""
from __future__ import annotations

import json
import math
import operator
from typing import TYPE_CHECKING, Any, List, Optional, Tuple

import numpy as np

from ..errors import NeurvolInputError

if TYPE_CHECKING:  # pragma: no cover
    import dask.array

    from ..neural_volume import NeuralVolume

#: Edge in voxels of the dask blocks of a single-model file (the last block of an axis may
#: be shorter): 128^3 voxels are 8 MiB of float32, large enough that the fixed cost of a
#: region read is small against its evaluation, small enough for many blocks in flight.
SINGLE_MODEL_BLOCK = 128

# Points per model query of a resampled read (coordinates: 24 bytes a point).
_QUERY_POINTS = 1 << 20

Chunks = Tuple[Tuple[int, ...], Tuple[int, ...], Tuple[int, ...]]


def owned_sizes(n: int, bricks: int) -> Tuple[int, ...]:
    """Voxels owned by each of ``bricks`` bricks along an axis of ``n`` voxels.

    spec/bricks.md §2: brick ``c`` owns the voxels ``ceil(c (n-1)/B) <= p < ceil((c+1)(n-1)/B)``,
    the last brick up to ``n - 1``: a partition of the axis, every part non-empty (``B <= n-1``).
    """
    starts = [-((-c * (n - 1)) // bricks) for c in range(bricks)] + [n]
    return tuple(b - a for a, b in zip(starts, starts[1:]))


def brick_chunks(nv: "NeuralVolume") -> Optional[Chunks]:
    """Per axis (z, y, x), the sizes of the voxel ranges the bricks own; ``None`` for a
    single-model file (one brick)."""
    grid = nv.header["bricks"]["grid"]     # validated when the file was opened
    if math.prod(grid) == 1:
        return None
    z, y, x = (owned_sizes(n, b) for n, b in zip(nv.shape, grid))
    return z, y, x


def default_chunks(nv: "NeuralVolume") -> Chunks:
    """One chunk per brick for bricked files, blocks of :data:`SINGLE_MODEL_BLOCK` otherwise."""
    bricked = brick_chunks(nv)
    if bricked is not None:
        return bricked
    z, y, x = (_regular(n, SINGLE_MODEL_BLOCK) for n in nv.shape)
    return z, y, x


def _regular(n: int, block: int) -> Tuple[int, ...]:
    full, rest = divmod(n, block)
    return (block,) * full + ((rest,) if rest else ())


def to_numpy(nv: "NeuralVolume", dtype: Any = None, copy: Optional[bool] = None) -> np.ndarray:
    """``np.asarray(nv)``: the whole decoded grid in the volume's dtype, cast to ``dtype``
    when given (numpy 2's ``__array__`` signature). ``copy=False`` asks for a view without a
    copy, which a compressed volume cannot give (every read decodes), so it raises."""
    if copy is False:
        raise NeurvolInputError(
            "a NeuralVolume holds no decoded array to share, so np.asarray(nv, copy=False) "
            "is impossible; use np.asarray(nv) or nv.decode(), or nv[...] for a region")
    out = nv.decode()
    if dtype is not None and np.dtype(dtype) != out.dtype:
        out = out.astype(dtype)
    return out


def to_dask(nv: "NeuralVolume", chunks: Any = None) -> "dask.array.Array":
    """A lazy ``dask.array.Array`` of the volume (its dtype and shape); each chunk is a
    region read ``nv[z0:z1, y0:y1, x0:x1]`` when computed.

    chunks: ``None`` (default) gives :func:`default_chunks` (one chunk per brick); anything
    ``dask.array.from_array`` accepts (an int, a tuple of ints or of per-axis tuples, a dict)
    overrides it. The graph carries the file's bytes, not a file handle, when it is sent to
    other processes (``distributed``): a ``.nvol`` file is small.
    """
    da = _dask_array()
    from dask.base import tokenize

    if nv.closed:
        raise NeurvolInputError("this NeuralVolume is closed; open the file again")
    spec = default_chunks(nv) if chunks is None else chunks
    try:
        normalized = da.core.normalize_chunks(spec, nv.shape, dtype=nv.dtype)
    except (TypeError, ValueError) as exc:
        raise NeurvolInputError(f"chunks={chunks!r} cannot chunk shape {nv.shape}: {exc}") from None
    # The header names the content: its section table holds the CRC-32 of the brick index,
    # which holds every brick's CRC-32.
    name = "neurvol-" + tokenize(json.dumps(nv.header, sort_keys=True), normalized)
    source = RegionSource(nv)
    return da.from_array(source, chunks=normalized, name=name, asarray=False, fancy=False,
                         lock=False, meta=np.empty((0, 0, 0), dtype=nv.dtype))


class RegionSource:
    """What a dask graph holds: ``source[slices]`` is the region read ``nv[slices]``.

    In this process it is the ``NeuralVolume`` itself (its brick cache and counters are
    shared with the caller). Pickled (for another process), it carries the file's bytes
    and reopens them there once.
    """

    def __init__(self, nv: "NeuralVolume") -> None:
        self.nv = nv
        self.shape = nv.shape
        self.dtype = nv.dtype
        self.ndim = len(nv.shape)

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    def __getitem__(self, key: Any) -> np.ndarray:
        return self.nv[key]

    def __reduce__(self) -> Tuple[Any, Tuple[bytes]]:
        return _reopen, (self.nv.to_bytes(),)


def _reopen(data: bytes) -> RegionSource:
    from ..container import NvolReader
    from ..neural_volume import NeuralVolume

    return RegionSource(NeuralVolume(NvolReader(data)))


def resampled(nv: "NeuralVolume", shape: Any, chunks: Any = None) -> "dask.array.Array":
    """A lazy ``nv.decode(shape=shape)``: the same grid (``linspace(-1, 1, m)`` per axis in
    normalized coordinates, spec/payload.md §1.2) in the volume's dtype, each chunk computed
    by a query of just its points, so it decodes only the bricks the chunk touches.

    chunks: default blocks of :data:`SINGLE_MODEL_BLOCK` voxels a side, or anything
    ``dask.array.from_array`` accepts. Values equal ``decode(shape=shape)`` up to float32
    rounding of the model evaluation (the points are the same).
    """
    from ..volume_checks import check_shape

    da = _dask_array()
    target = check_shape(shape)
    if nv.closed:
        raise NeurvolInputError("this NeuralVolume is closed; open the file again")
    spec = tuple(_regular(n, SINGLE_MODEL_BLOCK) for n in target) if chunks is None else chunks
    try:
        normalized = da.core.normalize_chunks(spec, target, dtype=nv.dtype)
    except (TypeError, ValueError) as exc:
        raise NeurvolInputError(f"chunks={chunks!r} cannot chunk shape {target}: {exc}") from None
    from dask.base import tokenize

    name = "neurvol-resampled-" + tokenize(json.dumps(nv.header, sort_keys=True), target,
                                           normalized)
    return da.from_array(ResampledSource(nv, target), chunks=normalized, name=name,
                         asarray=False, fancy=False, lock=False,
                         meta=np.empty((0, 0, 0), dtype=nv.dtype))


class ResampledSource(RegionSource):
    """``source[key]`` is ``nv.decode(shape=shape)[key]``, evaluated for those voxels only:
    an array-like (``shape``, ``dtype``, ``ndim``, outer indexing with ints, slices and 1-D
    integer or boolean arrays per axis, as ``nv[...]``) that decodes nothing until indexed."""

    def __init__(self, nv: "NeuralVolume", shape: Tuple[int, int, int]) -> None:
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

    def __reduce__(self) -> Tuple[Any, Tuple[bytes, Tuple[int, int, int]]]:  # type: ignore[override]
        return _reopen_resampled, (self.nv.to_bytes(), self.shape)


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


def _reopen_resampled(data: bytes, shape: Tuple[int, int, int]) -> ResampledSource:
    return ResampledSource(_reopen(data).nv, shape)


def _dask_array() -> Any:
    try:
        import dask.array as da
    except ImportError as exc:
        raise NeurvolInputError(
            "lazy arrays need dask: pip install 'neurvol[dask]' (or pip install dask)") from exc
    return da
