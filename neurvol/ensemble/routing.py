"""A query's points grouped by brick in one vectorised pass (``spec/bricks.md`` §2, §4).

:class:`Router` turns a block of normalized points into :class:`BrickBatches`: every
(point, brick) pair with a non-zero blend weight, sorted by brick, with the point's local
coordinates in that brick, so that a reader evaluates each touched brick once on one
contiguous batch and sums the weighted values per point (:meth:`BrickBatches.combine`).
Grid decodes go this way. Random-point queries go through :class:`RoutedQuery`: the same
entries, routed piece by piece on several threads (:meth:`Router.route_piece`) and
evaluated brick by brick in large, cell-ordered tasks on the same threads.

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
from typing import Any, Dict, List, Optional, Tuple

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


def _store_local(p: np.ndarray, lo, span, out: np.ndarray) -> None:
    """``2 (p - lo) / span - 1`` in float64, in that order (BrickLayout.local's, so the same
    bits), in place (one temporary), stored into ``out`` (a column of float32 locals)."""
    d = p - lo
    d *= 2.0
    d /= span
    d -= 1.0
    out[...] = d


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
class BandEntries:
    """The points of a piece in a blend band (:meth:`Router.route_piece`), indices into
    the piece: ``points (P,)`` ascending, their hash ``home`` brick and its weight
    ``home_w`` (float64); and their other entries, ``extra_points (E,)`` (each one of
    ``points``), ``extra_bricks``, ``extra_w`` (float64, > 0), ``extra_key`` (as the
    piece's keys) and ``extra_local (E, 3)`` float32."""

    points: np.ndarray
    home: np.ndarray
    home_w: np.ndarray
    extra_points: np.ndarray
    extra_bricks: np.ndarray
    extra_w: np.ndarray
    extra_key: np.ndarray
    extra_local: np.ndarray


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


@dataclasses.dataclass(frozen=True)
class _CellTables:
    """One axis cut into ``size = bricks * cells`` cells (``cells`` a power of two):
    ``floor((u + 1) * scale)`` (at most ``size - 1``) is a point's cell, whose brick is
    the cell ``>> shift``; ``half`` is ``(n - 1) / 2`` (index-space ``p = (u + 1) half``);
    per cell, ``key`` its share of the sort key and its brick's band limits and extent
    (:class:`_AxisTables`)."""

    size: int
    scale: float
    half: float
    shift: int
    key: np.ndarray
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
        self._cells: Dict[int, List[_CellTables]] = {}

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

    def query_cells(self, cells: int) -> int:
        """Cells a side per brick for :meth:`route_piece`: the largest power of two up to
        ``cells`` for which every (brick, cell) key and one spare fit below
        :data:`_RADIX_KEYS` (one radix sort of 16-bit keys orders a query), else 1."""
        count = self.layout.count
        c = 1
        while 2 * c <= cells and count * (2 * c) ** 3 < _RADIX_KEYS:
            c *= 2
        return c

    def key_dtype(self, cells: int) -> Any:
        """The dtype of :meth:`route_piece`'s keys for ``cells`` (from :meth:`query_cells`):
        uint16 when ``count * cells^3`` and the spare key fit, else int64."""
        return np.uint16 if self.layout.count * cells ** 3 < _RADIX_KEYS else np.int64

    def _cell_tables(self, cells: int) -> List[_CellTables]:
        """Per axis, :class:`_CellTables` of the ``bricks * cells`` cells (cached)."""
        hit = self._cells.get(cells)
        if hit is not None:
            return hit
        grid = self.layout.grid
        brick_stride = (grid[1] * grid[2], grid[2], 1)
        cell_stride = (cells * cells, cells, 1)
        dtype = self.key_dtype(cells)
        tables = []
        for axis, t in enumerate(self._axes):
            brick = np.arange(t.bricks * cells) // cells
            key = (brick * brick_stride[axis] * cells ** 3
                   + (np.arange(t.bricks * cells) % cells) * cell_stride[axis])
            tables.append(_CellTables(
                t.bricks * cells, 0.5 * t.bricks * cells, 0.5 * (t.n - 1), cells.bit_length() - 1,
                key.astype(dtype), t.lower[brick], t.upper[brick], t.lo[brick], t.span[brick]))
        self._cells[cells] = tables
        return tables

    def route_piece(self, norm: np.ndarray, key: np.ndarray, local: np.ndarray,
                    cells: int) -> Optional["BandEntries"]:
        """Routes the points ``norm`` (``(n, 3)`` float64 in [-1, 1], a piece of a query)
        into the caller's arrays: ``key (n,)`` (dtype :meth:`key_dtype`) the sort key of
        each point's hash-brick entry, ``brick * cells^3 + cell`` with the cell of a
        ``cells^3`` grid over the brick's core (``cells`` from :meth:`query_cells`), or
        ``count * cells^3`` (past every brick) for an entry whose blend weight is 0 (not
        evaluated, spec §4); ``local (n, 3)`` float32 its local coordinates, bit for bit
        those of :meth:`batches`. Returns the points in a blend band with their other
        entries, or None when there are none.

        One product per axis gives the hash brick and the cell: ``(u + 1) * (B cells / 2)``
        is the spec's ``B (u + 1) / 2`` times ``cells``, a power of two, so exactly, and
        its floor's top bits are the brick (``axis_bricks``); small tables indexed by that
        floor give each point its key, band limits and extent. Small pieces (thousands of
        points) keep every temporary in the CPU caches, and several pieces route side by
        side on threads (numpy releases the GIL)."""
        tables = self._cell_tables(cells)
        fine: List[np.ndarray] = []      # floor of the scaled coordinate: brick, cell
        index: List[np.ndarray] = []     # index-space coordinate along each axis
        band: Optional[np.ndarray] = None
        for axis, (t, ct) in enumerate(zip(self._axes, tables)):
            s = norm[:, axis] + 1.0
            g = (s * ct.scale).astype(np.intp)
            np.minimum(g, ct.size - 1, out=g)
            p = s
            p *= ct.half
            fine.append(g)
            index.append(p)
            if axis == 0:
                np.take(ct.key, g, out=key)
            else:
                key += np.take(ct.key, g)
            if self.blend and t.bricks > 1:
                near = p < np.take(ct.lower, g)
                near |= p >= np.take(ct.upper, g)
                band = near if band is None else np.logical_or(band, near, out=band)
            _store_local(p, np.take(ct.lo, g), np.take(ct.span, g), local[:, axis])
        np.clip(local, -1.0, 1.0, out=local)
        if band is None or not band.any():
            return None
        inside = np.flatnonzero(band)
        bricks = [np.take(g, inside) >> ct.shift for g, ct in zip(fine, tables)]
        sub_index = [np.take(p, inside) for p in index]
        extra, extra_bricks, extra_w, home_w = self._blend(np.arange(inside.size), bricks,
                                                           sub_index)
        home = self._ids(bricks)
        skip = home_w <= 0.0
        if skip.any():                   # a zero weight is not evaluated (spec §4)
            key[inside[skip]] = self.layout.count * cells ** 3
        extra_ids = self._ids(extra_bricks)
        extra_local = self._local(extra_bricks, [np.take(p, extra) for p in sub_index])
        extra_key = extra_ids * cells ** 3
        if cells > 1:
            extra_key += _cell_key(extra_local, cells)
        return BandEntries(inside, home, home_w, np.take(inside, extra), extra_ids, extra_w,
                           extra_key.astype(key.dtype), extra_local)

    def _ids(self, bricks: List[np.ndarray]) -> np.ndarray:
        _, j_n, i_n = self.layout.grid
        ids = bricks[0] * j_n
        ids += bricks[1]
        ids *= i_n
        ids += bricks[2]
        return ids

    def _local(self, bricks: List[np.ndarray], index: List[np.ndarray],
               out: Optional[np.ndarray] = None) -> np.ndarray:
        """Local coordinates (spec §2) ``2 (p - lo) / (hi - lo) - 1``, computed in float64,
        stored as the float32 the models take, clamped to [-1, 1] (as clamping first:
        rounding to float32 is monotonic and keeps +-1); in ``out`` when given."""
        if out is None:
            out = np.empty((bricks[0].shape[0], 3), dtype=np.float32)
        for axis, (t, c, p) in enumerate(zip(self._axes, bricks, index)):
            if t.bricks == 1:
                _store_local(p, t.lo[0], t.span[0], out[:, axis])
            else:
                _store_local(p, np.take(t.lo, c), np.take(t.span, c), out[:, axis])
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
        # Every corner's weight at once, as route()'s products in the axes' order: ``w[s0,
        # s1, s2]`` takes axis a's neighbour share where ``s_a`` is 1, its own where 0. A
        # corner whose neighbour has no share weighs exactly 0 and is dropped, as route()
        # drops it; the rest are listed corner by corner, each in the points' order.
        f = [np.stack([o[2], o[3]]) for o in options]                 # (2, P) per axis
        w = (f[0][:, None, None, :] * f[1][None, :, None, :]) * f[2][None, None, :, :]
        n = inside.size
        w = w.reshape(8, n)
        home_w = w[0]
        flat = np.flatnonzero(w[1:] > 0.0)
        corner, sub = np.divmod(flat, n) if n else (flat, flat)
        corner += 1
        per_axis = [np.where(corner & bit, np.take(o[1], sub), np.take(o[0], sub))
                    for o, bit in zip(options, (4, 2, 1))]
        return np.take(inside, sub), per_axis, np.take(w[1:], flat), home_w

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


@dataclasses.dataclass
class _Piece:
    """The entries of one routed piece of a query, sorted by key: ``entry`` the piece's
    entry of each (``0..n-1``: the points' hash-brick entries, then the band's others),
    ``key`` and ``local`` theirs; ``starts[b]:starts[b + 1]`` are brick b's; ``values`` by
    entry (filled by the tasks)."""

    n: int
    entry: np.ndarray
    key: np.ndarray
    local: np.ndarray
    starts: np.ndarray
    band: Optional[BandEntries]
    values: np.ndarray


#: A task of :class:`RoutedQuery`: a brick and its entries' segments ``(piece, start,
#: stop)`` of pieces' sorted entries.
Task = Tuple[int, List[Tuple[_Piece, int, int]]]


class RoutedQuery:
    """A query's points routed piece by piece, then evaluated brick by brick.

    :meth:`add` routes a piece (:meth:`Router.route_piece`) and sorts its entries by brick
    and cell (small pieces: every step runs in the CPU caches, and pieces run side by side
    on threads). :meth:`tasks` lists each touched brick's segments of the pieces, cut into
    tasks of bounded size; :meth:`run` evaluates one (its entries gathered and sorted cell
    by cell over the whole brick, so a model reads its grids in order) and stores the
    values. :meth:`combine` gives the points' values: one entry, its value as is; in a
    band, the float64 weighted sum over its bricks in ascending brick id (spec/bricks.md
    §4), exactly as :meth:`BrickBatches.combine`. Methods on distinct pieces or tasks may
    run on several threads at once."""

    def __init__(self, router: Router, cells: int) -> None:
        self.router = router
        self.cells = router.query_cells(cells)
        self._dtype = router.key_dtype(self.cells)
        per_brick = self.cells ** 3
        count = router.layout.count
        # Key of each brick's first entry, and the zero-weight entries' key past them.
        self._firsts = np.arange(count + 2, dtype=np.int64) * per_brick
        self._per_brick = per_brick
        self._pieces: Dict[int, _Piece] = {}

    def add(self, start: int, norm: np.ndarray) -> None:
        """Routes the piece of points ``start .. start + len(norm)`` (normalized float64
        in [-1, 1])."""
        n = norm.shape[0]
        key = np.empty(n, dtype=self._dtype)
        local = np.empty((n, 3), dtype=np.float32)
        band = self.router.route_piece(norm, key, local, self.cells)
        if band is not None:
            key = np.concatenate([key, band.extra_key])
            local = np.concatenate([local, band.extra_local])
        entry = np.argsort(key, kind="stable")
        key = np.take(key, entry)
        starts = np.searchsorted(key, self._firsts[:-1])
        values = np.empty(key.shape[0], dtype=np.float32)
        values[entry[starts[-1]:]] = 0.0            # weight 0: never evaluated
        self._pieces[start] = _Piece(n, entry, key, np.take(local, entry, axis=0), starts,
                                     band, values)

    def tasks(self, task_size: int) -> List[Task]:
        """Each touched brick's segments, in tasks of about ``task_size`` entries or fewer
        (a brick is cut between pieces)."""
        pieces = [self._pieces[s] for s in sorted(self._pieces)]
        if not pieces:
            return []
        starts = np.stack([p.starts for p in pieces])                    # (pieces, B + 1)
        sizes = np.diff(starts, axis=1)
        out: List[Task] = []
        for b in np.flatnonzero(sizes.sum(axis=0)).tolist():
            segs: List[Tuple[_Piece, int, int]] = []
            total = 0
            for i in np.flatnonzero(sizes[:, b]).tolist():
                size = int(sizes[i, b])
                if segs and total + size > task_size:
                    out.append((b, segs))
                    segs, total = [], 0
                a = int(starts[i, b])
                segs.append((pieces[i], a, a + size))
                total += size
            out.append((b, segs))
        return out

    def run(self, task: Task, evaluate: Any) -> None:
        """``evaluate(brick, local (M, 3) float32) -> (M,) float32`` on the task's entries,
        in cell order; the values stored by entry."""
        b, segs = task
        if len(segs) == 1:
            p, a, e = segs[0]
            p.values[p.entry[a:e]] = evaluate(b, p.local[a:e])
            return
        local = np.concatenate([p.local[a:e] for p, a, e in segs])
        order = None
        if self.cells > 1:
            order = np.argsort(np.concatenate([p.key[a:e] for p, a, e in segs]), kind="stable")
            local = np.take(local, order, axis=0)
        values = evaluate(b, local)
        if order is not None:
            unsorted = np.empty_like(values)
            unsorted[order] = values
            values = unsorted
        at = 0
        for p, a, e in segs:
            p.values[p.entry[a:e]] = values[at:at + e - a]
            at += e - a

    def combine(self, start: int, out: np.ndarray) -> None:
        """The values of the points of the piece added at ``start`` into ``out``."""
        p = self._pieces[start]
        out[:] = p.values[:p.n]
        band = p.band
        if band is None:
            return
        # Every term of a band point: its home entry, then its other entries.
        k = band.points.size
        slot = np.concatenate([np.arange(k), np.searchsorted(band.points, band.extra_points)])
        brick = np.concatenate([band.home, band.extra_bricks])
        weight = np.concatenate([band.home_w, band.extra_w])
        value = np.concatenate([np.take(p.values, band.points), p.values[p.n:]])
        terms = np.argsort(brick, kind="stable")     # ascending brick within each point
        acc = np.bincount(np.take(slot, terms), weights=np.take(weight * value, terms),
                          minlength=k)
        out[band.points] = acc.astype(np.float32)
