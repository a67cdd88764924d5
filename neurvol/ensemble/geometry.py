"""Brick geometry of a bricked ensemble (normative: ``spec/bricks.md``).

A volume of shape ``(D, H, W)`` is cut into a ``(K, J, I)`` grid of bricks. Along an axis
of ``n`` voxels and ``B`` bricks, the faces between bricks lie at index-space positions
``a_b = b * (n - 1) / B`` (the spatial hash of ``spec/nvol.md`` §5 puts a point in brick
``b`` when ``a_b <= p < a_{b+1}``). Brick ``b``'s model covers the voxel *extent*
``[lo_b, hi_b]`` = ``[floor(a_b) - g, ceil(a_{b+1}) + g]`` clamped to ``[0, n - 1]``
(``g`` ghost voxels on each side) and maps it to its local ``[-1, 1]``.

With blending, a point within ``g`` voxels of an interior face is the convex combination
of the two bricks' values with linear weights (a partition of unity per axis; the 3-D
weights are their products, so up to 8 bricks at a corner). The weights reach 0 exactly
where a brick's extent ends, so decoded volumes are continuous across faces.

Pure numpy; no torch.
"""
from __future__ import annotations

import dataclasses
import itertools
import math
from typing import List, Optional, Sequence, Tuple

import numpy as np

from ..container import brick_ids
from ..container.brickhash import check_grid
from ..errors import NeurvolFormatError, NeurvolInputError

#: Largest ghost width a file may declare (voxels); far beyond any useful value.
MAX_GHOST = 4096
#: Brick counts along an axis are chosen as ceil(n / brick) when encoding.
Extent = Tuple[Tuple[int, int], Tuple[int, int], Tuple[int, int]]


@dataclasses.dataclass(frozen=True)
class BrickLayout:
    """Where the bricks of a ``(K, J, I)`` grid lie in a volume of ``shape`` (z, y, x).

    ghost: ghost voxels added on each side of a brick's core (its model is fitted on the
    extent, ghosts included). blend: evaluate neighbouring bricks in the ``ghost``-wide
    band around each interior face and mix them linearly (seam-free decodes).
    """

    shape: Tuple[int, int, int]
    grid: Tuple[int, int, int]
    ghost: int = 0
    blend: bool = False

    # ------------------------------------------------------------------ construction
    @classmethod
    def checked(cls, shape: Sequence[int], grid: Sequence[int], ghost: int, blend: bool,
                *, error: type = NeurvolInputError) -> "BrickLayout":
        """Validate (raising *error*) and build. Conditions (spec/bricks.md §2): per axis
        ``B <= n - 1`` (each brick spans at least one voxel spacing) and
        ``2 * ghost * B <= n - 1`` (blend bands of the two faces of a brick never overlap)."""
        shape_t = tuple(int(s) for s in shape)
        grid_t = tuple(int(g) for g in grid)
        if isinstance(ghost, bool) or not isinstance(ghost, (int, np.integer)) \
                or not 0 <= ghost <= MAX_GHOST:
            raise error(f"ghost must be an int in [0, {MAX_GHOST}], got {ghost!r}")
        ghost = int(ghost)
        for axis, (n, b) in enumerate(zip(shape_t, grid_t)):
            if b > 1 and b > n - 1:
                raise error(
                    f"{b} bricks along axis {'zyx'[axis]} of {n} voxels: at most {n - 1} "
                    "fit (each brick must span at least one voxel spacing); use fewer bricks")
            if b > 1 and 2 * ghost * b > n - 1:
                raise error(
                    f"ghost {ghost} is too wide for {b} bricks along axis {'zyx'[axis]} "
                    f"({n} voxels): 2 * ghost * bricks must be <= {n - 1}; use a smaller "
                    "ghost or fewer, larger bricks")
        return cls(shape_t, grid_t, ghost, bool(blend))  # type: ignore[arg-type]

    @property
    def count(self) -> int:
        return self.grid[0] * self.grid[1] * self.grid[2]

    def coords(self, b: int) -> Tuple[int, int, int]:
        """(k, j, i) of brick id ``b = i + I*j + I*J*k``."""
        k, j, i = np.unravel_index(b, self.grid)
        return int(k), int(j), int(i)

    # ------------------------------------------------------------------ extents
    @staticmethod
    def _axis_extent(n: int, nb: int, b: int, g: int) -> Tuple[int, int]:
        lo = (b * (n - 1)) // nb                    # floor(a_b)
        hi = -((-(b + 1) * (n - 1)) // nb)          # ceil(a_{b+1})
        return max(0, lo - g), min(n - 1, hi + g)

    @staticmethod
    def _axis_core(n: int, nb: int, b: int) -> Tuple[int, int]:
        """Voxels [start, stop) owned by brick b along an axis (those the hash maps to b)."""
        start = -((-b * (n - 1)) // nb)             # ceil(a_b)
        stop = n if b == nb - 1 else -((-(b + 1) * (n - 1)) // nb)
        return start, stop

    def extent(self, b: int) -> Extent:
        """Inclusive voxel ranges ``((z0, z1), (y0, y1), (x0, x1))`` of brick b's model."""
        return tuple(self._axis_extent(n, nb, c, self.ghost)  # type: ignore[return-value]
                     for n, nb, c in zip(self.shape, self.grid, self.coords(b)))

    def axis_extents(self, axis: int) -> List[Tuple[int, int]]:
        """Inclusive voxel ranges ``(lo, hi)`` of the extents of the bricks along ``axis``
        (0: z, 1: y, 2: x), by brick index along it."""
        n, nb = self.shape[axis], self.grid[axis]
        return [self._axis_extent(n, nb, c, self.ghost) for c in range(nb)]

    def extent_slices(self, b: int) -> Tuple[slice, slice, slice]:
        return tuple(slice(lo, hi + 1) for lo, hi in self.extent(b))  # type: ignore[return-value]

    def extent_shape(self, b: int) -> Tuple[int, int, int]:
        return tuple(hi - lo + 1 for lo, hi in self.extent(b))  # type: ignore[return-value]

    def core_slices(self, b: int) -> Tuple[slice, slice, slice]:
        """Voxels owned by brick b, as slices of the whole volume (a partition)."""
        return tuple(slice(*self._axis_core(n, nb, c))  # type: ignore[return-value]
                     for n, nb, c in zip(self.shape, self.grid, self.coords(b)))

    def max_extent_shape(self) -> Tuple[int, int, int]:
        """The largest extent along each axis (the nominal brick shape used for sizing)."""
        out = []
        for n, nb in zip(self.shape, self.grid):
            out.append(max(hi - lo + 1 for lo, hi in
                           (self._axis_extent(n, nb, c, self.ghost) for c in range(nb))))
        return out[0], out[1], out[2]

    # ------------------------------------------------------------------ routing
    def route(self, norm: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Bricks and weights of points.

        norm: ``(N, 3)`` float64 normalized (z, y, x) in [-1, 1].
        Returns ``(point, brick, weight)``: three ``(M,)`` arrays (``M >= N``), one entry per
        (point, brick) pair with a non-zero weight; the weights of a point sum to 1. Without
        blending M == N and each point has its hash brick (spec/nvol.md §5) with weight 1.
        """
        n_pts = norm.shape[0]
        home = brick_ids(norm, self.grid)
        if not (self.blend and self.ghost > 0) or self.count == 1:
            return np.arange(n_pts), home, np.ones(n_pts)
        per_axis = np.unravel_index(home, self.grid)
        options: List[Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
        for axis in range(3):
            n, nb, g = self.shape[axis], self.grid[axis], float(self.ghost)
            cb = per_axis[axis].astype(np.int64)
            if nb == 1:
                zero = np.zeros(n_pts)
                options.append((cb, cb, 1.0 - zero, zero))
                continue
            p = (norm[:, axis] + 1.0) * (n - 1) / 2.0
            f_lo = cb * (n - 1) / nb
            f_hi = (cb + 1) * (n - 1) / nb
            lower = (cb > 0) & (p < f_lo + g)
            upper = (cb < nb - 1) & (p >= f_hi - g)
            t_lo = np.clip((p - (f_lo - g)) / (2.0 * g), 0.0, 1.0)
            t_hi = np.clip((p - (f_hi - g)) / (2.0 * g), 0.0, 1.0)
            w_nb = np.where(lower, 1.0 - t_lo, np.where(upper, t_hi, 0.0))
            nbr = np.where(lower, cb - 1, np.where(upper, cb + 1, cb))
            options.append((cb, nbr, 1.0 - w_nb, w_nb))
        pts, ids, ws = [], [], []
        idx = np.arange(n_pts)
        for sel in itertools.product((0, 1), repeat=3):
            w = np.ones(n_pts)
            bid = np.zeros(n_pts, dtype=np.int64)
            for axis, s in enumerate(sel):
                cb, nbr, w_self, w_nb = options[axis]
                bid = bid * self.grid[axis] + (nbr if s else cb)
                w = w * (w_nb if s else w_self)
            keep = w > 0.0
            if sel == (0, 0, 0) or keep.any():
                pts.append(idx[keep])
                ids.append(bid[keep])
                ws.append(w[keep])
        return np.concatenate(pts), np.concatenate(ids), np.concatenate(ws)

    def local(self, b: int, norm: np.ndarray) -> np.ndarray:
        """Brick b's local coordinates (``(N, 3)`` float64 in [-1, 1]) of normalized points:
        per axis ``l = 2 * (p - lo) / (hi - lo) - 1`` with ``p = (u + 1) * (n - 1) / 2``."""
        out = np.empty_like(norm, dtype=np.float64)
        for axis, (lo, hi) in enumerate(self.extent(b)):
            n = self.shape[axis]
            p = (norm[:, axis] + 1.0) * (n - 1) / 2.0
            out[:, axis] = 2.0 * (p - lo) / (hi - lo) - 1.0
        np.clip(out, -1.0, 1.0, out=out)
        return out


def grid_for(shape: Sequence[int], brick: int) -> Tuple[int, int, int]:
    """Brick counts ``ceil(n / brick)`` per axis (at most ``n - 1``)."""
    if isinstance(brick, bool) or not isinstance(brick, (int, np.integer)) or brick < 2:
        raise NeurvolInputError(f"brick must be an int >= 2 (voxels per brick edge), got {brick!r}")
    return tuple(max(1, min(n - 1, math.ceil(n / int(brick)))) for n in shape)  # type: ignore[return-value]


def parse_layout(shape: Tuple[int, int, int], grid: Tuple[int, int, int],
                 bricks: dict) -> BrickLayout:
    """The layout a file's header declares (``bricks.ghost``/``bricks.blend``), validated;
    a file without them (format 1.0) has ghost 0 and no blending."""
    ghost = bricks.get("ghost", 0)
    blend = bricks.get("blend", "none")
    if type(ghost) is not int:
        raise NeurvolFormatError(f"header 'bricks.ghost' must be an integer, got {ghost!r}"[:200])
    if blend not in ("none", "linear"):
        raise NeurvolFormatError(
            f"header 'bricks.blend' must be \"none\" or \"linear\", got {blend!r}"[:200])
    return BrickLayout.checked(shape, grid, ghost, blend == "linear", error=NeurvolFormatError)


def optional_grid(bricks: Optional[Sequence[int]]) -> Optional[Tuple[int, int, int]]:
    """The user's brick counts ``bricks`` as (K, J, I), validated; None stays None."""
    return None if bricks is None else check_grid(bricks, what="bricks")
