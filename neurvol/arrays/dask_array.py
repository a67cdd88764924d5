"""The array protocol of :class:`~neurvol.NeuralVolume`: ``np.asarray(nv)`` and lazy dask
arrays whose chunks are region reads (:func:`to_dask`), or reads of a resampled grid
(:func:`resampled`, a lazy ``decode(shape=...)``).

Chunks of a bricked file are the voxels each brick owns (spec/bricks.md §2), so computing
one chunk decodes its brick (and, with blending, the neighbours within the ghost band of
its faces). A single-model file is cut into blocks of :data:`SINGLE_MODEL_BLOCK` voxels a
side. Uses only the public ``NeuralVolume`` API (``shape``, ``dtype``, ``header``,
``nv[...]``, ``decode``, ``to_bytes``), whichever backend evaluates the models.
"""
from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Any, Optional, Tuple

import numpy as np

from ..errors import NeurvolInputError
from .sources import RegionSource, ResampledSource, Volume

if TYPE_CHECKING:  # pragma: no cover
    import dask.array


#: Edge in voxels of the dask blocks of a single-model file (the last block of an axis may
#: be shorter): 128^3 voxels are 8 MiB of float32, large enough that the fixed cost of a
#: region read is small against its evaluation, small enough for many blocks in flight.
SINGLE_MODEL_BLOCK = 128

Chunks = Tuple[Tuple[int, ...], Tuple[int, ...], Tuple[int, ...]]


def owned_sizes(n: int, bricks: int) -> Tuple[int, ...]:
    """Voxels owned by each of ``bricks`` bricks along an axis of ``n`` voxels.

    spec/bricks.md §2: brick ``c`` owns the voxels ``ceil(c (n-1)/B) <= p < ceil((c+1)(n-1)/B)``,
    the last brick up to ``n - 1``: a partition of the axis, every part non-empty (``B <= n-1``).
    """
    starts = [-((-c * (n - 1)) // bricks) for c in range(bricks)] + [n]
    return tuple(b - a for a, b in zip(starts, starts[1:]))


def brick_chunks(nv: Volume) -> Optional[Chunks]:
    """Per axis (z, y, x), the sizes of the voxel ranges the bricks own; ``None`` for a
    single-model file (one brick)."""
    grid = nv.header["bricks"]["grid"]     # validated when the file was opened
    if math.prod(grid) == 1:
        return None
    z, y, x = (owned_sizes(n, b) for n, b in zip(nv.shape, grid))
    return z, y, x


def default_chunks(nv: Volume) -> Chunks:
    """One chunk per brick for bricked files, blocks of :data:`SINGLE_MODEL_BLOCK` otherwise."""
    bricked = brick_chunks(nv)
    if bricked is not None:
        return bricked
    z, y, x = (_regular(n, SINGLE_MODEL_BLOCK) for n in nv.shape)
    return z, y, x


def _regular(n: int, block: int) -> Tuple[int, ...]:
    full, rest = divmod(n, block)
    return (block,) * full + ((rest,) if rest else ())


def to_numpy(nv: Volume, dtype: Any = None, copy: Optional[bool] = None) -> np.ndarray:
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


def to_dask(nv: Volume, chunks: Any = None) -> "dask.array.Array":
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


def resampled(nv: Volume, shape: Any, chunks: Any = None) -> "dask.array.Array":
    """A lazy ``nv.decode(shape=shape)`` as a dask array (of a :class:`ResampledSource`): the same grid (``linspace(-1, 1, m)`` per axis in
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


def _dask_array() -> Any:
    try:
        import dask.array as da
    except ImportError as exc:
        raise NeurvolInputError(
            "lazy arrays need dask: pip install 'neurvol[dask]' (or pip install dask)") from exc
    return da
