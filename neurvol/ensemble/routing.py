"""A query's points grouped by brick in one vectorised pass (``spec/bricks.md`` §2, §4).

:class:`Router` turns a block of normalized points into :class:`BrickBatches`: every
(point, brick) pair with a non-zero blend weight, sorted by brick, with the point's local
coordinates in that brick, so that a reader evaluates each touched brick once on one
contiguous batch and sums the weighted values per point (:meth:`BrickBatches.combine`).

Only the points in a blend band (a few percent of random points for bricks of 128 voxels
and ghost 2) go through the per-corner weight products; every other point has its hash
brick with weight 1. The arithmetic is that of :meth:`BrickLayout.route` and
:meth:`BrickLayout.local`, in the same order, and the weighted sum runs over a point's
bricks in ascending id, so decoded values are the brick-by-brick evaluation's bit for bit
(given the same model outputs).

Pure numpy; no torch.
"""
from __future__ import annotations

import dataclasses
import itertools
from typing import Any, List, Optional, Tuple

import numpy as np

from ..container import axis_bricks
from .geometry import BrickLayout

#: Keys sort as uint16 when they fit: numpy's stable sort of 16-bit keys is a radix sort,
#: linear in the number of points.
_RADIX_KEYS = 1 << 16


def spatial_order(coords: np.ndarray, cells: int) -> np.ndarray:
    """A permutation of the points ``coords`` (``(N, 3)``, each axis in [-1, 1]) that
    lists them cell by cell of a ``cells^3`` grid over the cube (C order; ``cells^3 <=
    2^16``). Evaluated in this order, neighbouring points read neighbouring parameters:
    a model's grid lookups then hit the CPU caches instead of memory (random points over
    a large model are otherwise bound by cache misses)."""
    key = _cell_key(coords, cells).astype(np.uint16)
    return np.argsort(key, kind="stable")


def _cell_key(coords: np.ndarray, cells: int, dtype: Any = np.int64) -> np.ndarray:
    """Cell id (C order) of each point of ``coords`` in a ``cells^3`` grid over [-1, 1]^3,
    as ``dtype``: int64, or uint16 (for keys below 2^16, so ``cells <= 40``: each axis's
    cell is computed in int16, whose truncation of the in-range values is int64's)."""
    half = cells / 2.0
    key = np.zeros(coords.shape[0], dtype=dtype)
    narrow = np.dtype(dtype) == np.uint16
    for axis in range(3):
        c = ((coords[:, axis] + 1.0) * half).astype(np.int16 if narrow else np.int64)
        np.clip(c, 0, cells - 1, out=c)
        key *= cells
        key += c.view(np.uint16) if narrow else c
    return key


@dataclasses.dataclass(frozen=True)
class BrickBatches:
    """The (point, brick) entries of ``n_points`` points, grouped by brick.

    point: ``(M,)`` the query point of each entry; local: ``(M, 3)`` float32 local
    coordinates of the point in the entry's brick (clamped to [-1, 1]); weight: ``(M,)``
    float64 blend weights, or None when every point has one entry of weight 1; bricks:
    ``(G,)`` the touched bricks, ascending; bounds: ``(G + 1,)`` entries
    ``bounds[g]:bounds[g + 1]`` belong to ``bricks[g]``.
    """

    n_points: int
    point: np.ndarray
    local: np.ndarray
    weight: Optional[np.ndarray]
    bricks: np.ndarray
    bounds: np.ndarray

    def combine(self, values: np.ndarray) -> np.ndarray:
        """``(n_points,)`` float32 values of the points from ``values (M,)``, the entries'
        brick values: the weighted sum over each point's bricks, in binary64 and in
        ascending brick id (spec/bricks.md §4), then cast to float32."""
        if self.weight is None:
            out = np.empty(self.n_points, dtype=np.float32)
            out[self.point] = values
            return out
        acc = np.bincount(self.point, weights=self.weight * values, minlength=self.n_points)
        return acc.astype(np.float32)


@dataclasses.dataclass(frozen=True)
class _AxisTables:
    """Per-brick constants of one axis: faces ``a_c`` (float64, ``B + 1``), the band
    limits (``p < lower[c]``: in the band of the lower face; ``p >= upper[c]``: of the
    upper face; +-inf where there is no neighbour), and the extents' ``lo`` and
    ``hi - lo`` (float64)."""

    n: int
    bricks: int
    faces: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    lo: np.ndarray
    span: np.ndarray


class Router:
    """Routes normalized points to the bricks of a layout (see the module docstring)."""

    def __init__(self, layout: BrickLayout) -> None:
        self.layout = layout
        self.blend = layout.blend and layout.ghost > 0 and layout.count > 1
        g = float(layout.ghost)
        self._axes: List[_AxisTables] = []
        for axis, (n, nb) in enumerate(zip(layout.shape, layout.grid)):
            faces = np.arange(nb + 1, dtype=np.int64) * (n - 1) / nb
            lower = faces[:-1] + g
            lower[0] = -np.inf
            upper = faces[1:] - g
            upper[-1] = np.inf
            ext = np.asarray(layout.axis_extents(axis), dtype=np.float64)
            self._axes.append(_AxisTables(n, nb, faces, lower, upper, ext[:, 0],
                                          ext[:, 1] - ext[:, 0]))
        self._key = np.uint16 if layout.count <= _RADIX_KEYS else np.int64

    def batches(self, norm: np.ndarray, cells: int = 1) -> BrickBatches:
        """The entries of ``norm`` (``(N, 3)`` float64 normalized z, y, x in [-1, 1]).
        ``cells > 1``: within a brick, entries follow :func:`spatial_order` of their local
        coordinates (``cells^3 <= 2^16``), for random queries; 1: they keep the points'
        order (grid decodes, already in order)."""
        n_pts = norm.shape[0]
        bricks: List[np.ndarray] = []    # brick index along each axis
        index: List[np.ndarray] = []     # index-space coordinate along each axis
        band: Optional[np.ndarray] = None
        for axis, t in enumerate(self._axes):
            c = axis_bricks(norm[:, axis], t.bricks)
            p = (norm[:, axis] + 1.0) * (t.n - 1) / 2.0
            bricks.append(c)
            index.append(p)
            if self.blend and t.bricks > 1:
                near = p < t.lower[c]
                near |= p >= t.upper[c]
                band = near if band is None else np.logical_or(band, near, out=band)
        ids = self._ids(bricks)
        local = self._local(bricks, index)
        if band is None or not band.any():
            return self._grouped(n_pts, None, ids, local, None, cells)
        inside = np.flatnonzero(band)
        extra_pts, extra_bricks, extra_w, home_w = self._blend(inside, bricks, index)
        weight = np.ones(n_pts)
        weight[inside] = home_w
        point = np.concatenate([np.arange(n_pts), extra_pts])
        ids = np.concatenate([ids, self._ids(extra_bricks)])
        local = np.concatenate([local, self._local(extra_bricks,
                                                   [np.take(p, extra_pts) for p in index])])
        weight = np.concatenate([weight, extra_w])
        if not (home_w > 0.0).all():     # a zero weight is not evaluated (spec §4)
            keep = np.flatnonzero(weight > 0.0)
            point, ids, weight = point[keep], ids[keep], weight[keep]
            local = np.take(local, keep, axis=0)
        return self._grouped(n_pts, point, ids, local, weight, cells)

    def _ids(self, bricks: List[np.ndarray]) -> np.ndarray:
        _, j_n, i_n = self.layout.grid
        ids = bricks[0] * j_n
        ids += bricks[1]
        ids *= i_n
        ids += bricks[2]
        return ids

    def _local(self, bricks: List[np.ndarray], index: List[np.ndarray]) -> np.ndarray:
        """Local coordinates (spec §2) ``2 (p - lo) / (hi - lo) - 1``, computed in float64,
        stored as the float32 the models take, clamped to [-1, 1] (as clamping first:
        rounding to float32 is monotonic and keeps +-1)."""
        out = np.empty((bricks[0].shape[0], 3), dtype=np.float32)
        for axis, (t, c, p) in enumerate(zip(self._axes, bricks, index)):
            # ``2 (p - lo) / span - 1`` in that order, in place (one temporary per axis).
            if t.bricks == 1:
                d = p - t.lo[0]
                d *= 2.0
                d /= t.span[0]
            else:
                d = p - np.take(t.lo, c)
                d *= 2.0
                d /= np.take(t.span, c)
            d -= 1.0
            out[:, axis] = d
        np.clip(out, -1.0, 1.0, out=out)
        return out

    def _blend(self, inside: np.ndarray, cells: List[np.ndarray], index: List[np.ndarray]
               ) -> Tuple[np.ndarray, List[np.ndarray], np.ndarray, np.ndarray]:
        """For the points ``inside`` a band: the entries of their other bricks (points,
        cells per axis, weights) and the weight of their hash brick, with the per-axis
        choices and products of :meth:`BrickLayout.route`."""
        g = float(self.layout.ghost)
        options = []
        for t, c_all, p_all in zip(self._axes, cells, index):
            cb = c_all[inside]
            if t.bricks == 1:
                zero = np.zeros(inside.size)
                options.append((cb, cb, 1.0 - zero, zero))
                continue
            p = p_all[inside]
            f_lo, f_hi = t.faces[cb], t.faces[cb + 1]
            lower = p < t.lower[cb]
            upper = p >= t.upper[cb]
            t_lo = np.clip((p - (f_lo - g)) / (2.0 * g), 0.0, 1.0)
            t_hi = np.clip((p - (f_hi - g)) / (2.0 * g), 0.0, 1.0)
            w_nb = np.where(lower, 1.0 - t_lo, np.where(upper, t_hi, 0.0))
            nbr = np.where(lower, cb - 1, np.where(upper, cb + 1, cb))
            options.append((cb, nbr, 1.0 - w_nb, w_nb))
        pts: List[np.ndarray] = []
        per_axis: List[List[np.ndarray]] = [[], [], []]
        ws: List[np.ndarray] = []
        # The neighbour of an axis can take a share only where its weight is > 0: each
        # corner is weighed over the points whose chosen axes all have one (the others'
        # products are 0 and were dropped anyway), in the axes' order, as route() does.
        has = [o[3] > 0.0 for o in options]
        home_w = options[0][2] * options[1][2] * options[2][2]
        for sel in itertools.product((0, 1), repeat=3):
            if sel == (0, 0, 0):
                continue
            mask: Optional[np.ndarray] = None
            for axis, s in enumerate(sel):
                if s:
                    mask = has[axis] if mask is None else mask & has[axis]
            assert mask is not None
            sub = np.flatnonzero(mask)
            if not sub.size:
                continue
            w = None
            for axis, s in enumerate(sel):
                f = np.take(options[axis][3] if s else options[axis][2], sub)
                w = f if w is None else w * f
            keep = sub[w > 0.0]
            if keep.size:
                pts.append(inside[keep])
                ws.append(w[w > 0.0])
                for axis, s in enumerate(sel):
                    per_axis[axis].append(np.take(options[axis][1 if s else 0], keep))
        if not pts:
            empty = np.zeros(0, dtype=np.int64)
            return empty, [empty] * 3, np.zeros(0), home_w
        return (np.concatenate(pts), [np.concatenate(a) for a in per_axis],
                np.concatenate(ws), home_w)

    def _grouped(self, n_pts: int, point: Optional[np.ndarray], ids: np.ndarray,
                 local: np.ndarray, weight: Optional[np.ndarray], cells: int) -> BrickBatches:
        """The entries (``point`` None: one per point, in order) sorted by brick, and within
        a brick by cell of ``cells^3`` (1: in their order). A point's entries are in
        distinct bricks, so its weighted sum runs in ascending brick id whatever the order
        within bricks."""
        count = self.layout.count
        per_brick = cells ** 3 if cells > 1 else 1
        several = ids.size > 0 and ids.min() != ids.max()
        order: Optional[np.ndarray] = None
        if count * per_brick <= _RADIX_KEYS and (several or cells > 1):
            # One 16-bit key, brick then cell: one radix sort orders both.
            key = ids.astype(np.uint16)
            key *= per_brick
            if cells > 1:
                key += _cell_key(local, cells, np.uint16)
            order = np.argsort(key, kind="stable")
        elif several or cells > 1:
            # Least significant key first: stable sorts keep the cell order within a brick.
            order = spatial_order(local, cells) if cells > 1 else None
            if several:
                key = ids if order is None else np.take(ids, order)
                second = np.argsort(key.astype(self._key), kind="stable")
                order = second if order is None else np.take(order, second)
        if order is not None:
            # np.take: for rows of a 2-D array many times faster than ``local[order]``.
            point = order if point is None else np.take(point, order)
            local = np.take(local, order, axis=0)
            weight = None if weight is None else np.take(weight, order)
        elif point is None:
            point = np.arange(n_pts)
        if not several:
            bricks = ids[:1]
            bounds = np.array([0, ids.size], dtype=np.int64)[:bricks.size + 1]
        elif count <= _RADIX_KEYS:
            sizes = np.bincount(ids, minlength=count)
            bricks = np.flatnonzero(sizes)
            bounds = np.concatenate([[0], np.cumsum(sizes[bricks])]).astype(np.int64)
        else:
            ids = np.take(ids, order)
            cut = np.flatnonzero(ids[1:] != ids[:-1]) + 1
            bounds = np.concatenate([[0], cut, [ids.size]]).astype(np.int64)
            bricks = ids[bounds[:-1]]
        return BrickBatches(n_pts, point, local, weight, bricks, bounds)
