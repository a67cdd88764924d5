"""amgsrn without torch: its config, tensor list and evaluation (``spec/arch/amgsrn.md``).

M feature grids, each seen through its own affine map into local [-1, 1]^3 with exactly
zero features beyond one cell outside; grid-major features decoded by a ReLU MLP, plus the
coverage-weighted mean of channel 0.

The lookup pads every grid with one zero vertex on each side and clamps the continuous
vertex coordinate ``u`` to ``[-1, n]``: a point more than one cell outside then lands with
weight exactly 1 on a zero vertex, so its features are exactly 0 (spec §3 step 2), and
inside the fade band the blend is the spec's trilinear sum with out-of-grid vertices at 0.
"""
from __future__ import annotations

import dataclasses
import math
from typing import List, Mapping, Optional, Tuple

import numpy as np

from ..config import ModelConfig, TensorSpec, mlp_param_count, mlp_tensor_specs
from .fvsrn import MAX_GRID_SIDE, MAX_WIDTH, check_grids_and_mlp  # noqa: F401  (shared limits)
from ...compress import jit as _kernels
from .ops import F32, DenseMLP, cell, lerp_into, trilinear_rows, vertex_table
from .registry import NumpyArchitecture, NumpyModel, register_numpy

MAX_GRIDS = 256
COVERAGE_FLOOR = 1e-3     # denominator floor of the residual's coverage-weighted mean
# Grid lookups (points x grids) per pass: the (M, N) work arrays then stay a few MB
# whatever M is (a model of 256 grids takes fewer points per pass).
MAX_LOOKUPS = 1 << 17
# Evaluations of at most this many points on a one-channel model whose vertex table (the
# grids zero-padded, a copy as large as the grids) is not built yet gather from the grids
# themselves: a cold bricked query evaluates many freshly decoded bricks on a few points
# each, far too few to pay for copying their grids. A larger batch builds the table, and
# every later evaluation uses it. Both paths give the same values bit for bit (the torch
# module takes the same two paths).
DIRECT_MAX_POINTS = 256
DESCRIPTION = "adaptively placed multi-grid SRN: M affine feature grids + small MLP (AMGSRN)"


@dataclasses.dataclass(frozen=True)
class AMGSRNConfig(ModelConfig):
    """Dimensions of an AMGSRN model.

    grids: number of feature grids M; grid: each grid's resolution (D', H', W') along its
    local (z, y, x); channels: features per grid vertex C; width / hidden_layers: the
    decoder MLP (input ``M * C``).
    """

    arch = "amgsrn"
    grids: int = 16
    grid: Tuple[int, int, int] = (16, 16, 16)
    channels: int = 1
    width: int = 32
    hidden_layers: int = 2

    def validate(self) -> None:
        if not isinstance(self.grids, int) or not 1 <= self.grids <= MAX_GRIDS:
            raise ValueError(f"grids must be an int in [1, {MAX_GRIDS}]")
        check_grids_and_mlp(self.grid, self.channels, self.width, self.hidden_layers, self.grids)
        if self.grids * self.channels > MAX_WIDTH:
            raise ValueError("grids * channels too large")

    def param_count(self) -> int:
        return (self.grids * (math.prod(self.grid) * self.channels + 12)
                + mlp_param_count(self.grids * self.channels, self.width, self.hidden_layers))

    def tensor_specs(self) -> List[TensorSpec]:
        m = self.grids
        specs: List[TensorSpec] = [("grids", (m, self.channels, *self.grid))]
        specs += [(f"transforms.{g}", (3, 4)) for g in range(m)]
        return specs + mlp_tensor_specs("mlp", m * self.channels, self.width, self.hidden_layers)


class AMGSRNNumpy(NumpyModel):
    """All M grids zero-padded into one vertex-major table; one affine product gives every
    grid's continuous vertex coordinates. Work arrays are ``(M, N)`` (one contiguous row
    per grid and axis) and the MLP runs feature-major, so no step transposes points.
    The table is built on the first evaluation of more than :data:`DIRECT_MAX_POINTS`
    points (or of a many-channel model); fewer gather from the grids
    (:meth:`_evaluate_direct`)."""

    def __init__(self, config: AMGSRNConfig, arrays: Mapping[str, np.ndarray]) -> None:
        super().__init__(config, arrays)
        m, c = config.grids, config.channels
        d, h, w = config.grid
        # The grids until the table is built, then only the table (it holds them padded).
        self._grids: Optional[np.ndarray] = np.asarray(arrays["grids"], dtype=F32).reshape(
            m, c, d, h, w)
        self._table: Optional[np.ndarray] = None
        padded = (d + 2) * (h + 2) * (w + 2)
        self.strides = ((h + 2) * (w + 2), w + 2, 1)
        self.sides = (d, h, w)
        # Row of each grid's padded vertex (0, 0, 0), i.e. of local vertex (-1, -1, -1).
        self.offsets = (np.arange(m, dtype=np.intp) * padded + sum(self.strides))[:, None]
        # u = (l + 1) / 2 * (n - 1) with l = A p + b, folded into one affine map per row;
        # rows axis-major (all grids' z, then y, then x).
        t = np.stack([np.asarray(arrays[f"transforms.{g}"], dtype=np.float64).reshape(3, 4)
                      for g in range(m)])                                   # (M, 3, 4)
        half = 0.5 * (np.asarray(config.grid, dtype=np.float64) - 1.0)
        u_map = (t * half[None, :, None]).transpose(1, 0, 2)               # (3, M, 4)
        u_map[:, :, 3] += half[:, None]
        self.u_weight = np.ascontiguousarray(u_map[:, :, :3].reshape(3 * m, 3), dtype=F32)
        self.u_bias = np.ascontiguousarray(u_map[:, :, 3].reshape(3 * m, 1), dtype=F32)
        self.m, self.c = m, c
        self.mlp = DenseMLP(arrays, "mlp", config.hidden_layers, columns=True)

    def __call__(self, coords: np.ndarray) -> np.ndarray:
        # Passes of about MAX_LOOKUPS lookups: a batch a little over is one pass, not one
        # and a small one (a pass has a fixed cost).
        n = coords.shape[0]
        step = -(-n // max(1, round(n * self.m / MAX_LOOKUPS)))
        if n <= step:
            return self._evaluate(coords)
        return np.concatenate([self._evaluate(coords[a:a + step])
                               for a in range(0, coords.shape[0], step)])

    @property
    def table(self) -> np.ndarray:
        """The grids zero-padded by one vertex, vertex-major ``(M * (D'+2)(H'+2)(W'+2), C)``
        (``(V,)`` for one channel: gathers of scalars), built on first use; the unpadded
        grids are then dropped. Threads may build it side by side: each builds the same
        table, and the last one is kept. (The grids are read before the table and dropped
        after it is set, so a thread that finds no grids finds the table.)"""
        grids = self._grids
        table = self._table
        if table is None:
            assert grids is not None
            table = vertex_table(np.pad(grids, ((0, 0), (0, 0), (1, 1), (1, 1), (1, 1))))
            if self.c == 1:
                table = table.reshape(-1)
            self._table = table
            self._grids = None
        return table

    def _evaluate(self, coords: np.ndarray) -> np.ndarray:
        n_pts, m, c = coords.shape[0], self.m, self.c
        u_all = self.u_weight @ coords.astype(F32).T                        # (3M, N)
        u_all += self.u_bias
        u_all = u_all.reshape(3, m, n_pts)
        grids = self._grids                  # before the table: see :attr:`table`
        if c == 1 and n_pts <= DIRECT_MAX_POINTS and self._table is None:
            assert grids is not None
            return self._evaluate_direct(u_all, grids)
        rows = np.broadcast_to(self.offsets, (m, n_pts)).copy()
        cover = None
        fracs = []
        for a, (n, stride) in enumerate(zip(self.sides, self.strides)):
            u = u_all[a]                                                    # (M, N)
            # Spec step 5 per axis: max(0, 1 - max(0, -u, u - (n - 1))), i.e.
            # clip(1 + h - |u - h|, 0, 1) with h = (n - 1) / 2.
            half = F32(0.5 * (n - 1))
            w = np.abs(u - half)
            np.subtract(half + F32(1), w, out=w)
            np.clip(w, 0, 1, out=w)
            if cover is None:
                cover = w
            else:
                cover *= w
            # Beyond one cell outside, u clamped to -1 or n puts weight 1 on a zero vertex.
            np.clip(u, -1, n, out=u)
            i0, frac = cell(u, -1, n - 1)
            i0 *= stride
            rows += i0
            fracs.append(frac.reshape(-1))
        feats = trilinear_rows(self.table, rows.reshape(-1), self.strides, fracs)   # (M*N[, C])
        if c == 1:
            feats = feats.reshape(m, n_pts)
        else:
            feats = np.ascontiguousarray(feats.reshape(m, n_pts, c).transpose(0, 2, 1)).reshape(m * c, n_pts)
        denom = np.maximum(cover.sum(0), F32(COVERAGE_FLOOR))
        out = self.mlp(feats)[0]
        out += feats[::c].sum(0) / denom
        return out


    def _evaluate_direct(self, u_all: np.ndarray, grids: np.ndarray) -> np.ndarray:
        """:meth:`_evaluate` of a one-channel model from the vertex coordinates ``u_all``
        ``(3, M, N)`` without the table (:func:`direct_corners`), then the table path's
        lerps, each on all the corner pairs it blends: the same operations on the same
        values, the same bits."""
        m, n_pts = u_all.shape[1], u_all.shape[2]
        frac, cover, vals = direct_corners(u_all, self.sides, grids.reshape(-1))
        frac = frac.reshape(3, m * n_pts)
        vals = vals.reshape(2, 2, 2, m * n_pts)
        along_x = lerp_into(vals[0], vals[1], frac[2])                      # (dy, dz, M*N)
        along_y = lerp_into(along_x[0], along_x[1], frac[1])                # (dz, M*N)
        feats = lerp_into(along_y[0], along_y[1], frac[0]).reshape(m, n_pts)
        denom = np.maximum(cover.sum(0), F32(COVERAGE_FLOOR))
        out = self.mlp(feats)[0]
        out += feats.sum(0) / denom
        return out


def direct_corners(u: np.ndarray, sides: Tuple[int, int, int], grids: np.ndarray
                   ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What a one-channel amgsrn lookup needs besides its lerps, without the padded
    table, from the continuous vertex coordinates ``u (3, M, N)`` (float32, z, y, x; its
    buffer is reused) and the grids ``(M * D' * H' * W',)`` (float32) of side ``sides``:

    - ``frac (3, M, N)``: each point's fraction in its cell per axis;
    - ``cover (M, N)``: spec step 5's coverage of each grid;
    - ``vals (2, 2, 2, M, N)``: the cell's corner values, ``vals[dx, dy, dz]`` the corner
      ``(z0 + dz, y0 + dy, x0 + dx)``, an exact 0 where it lies outside the grid (the
      padded table's value there).

    Every step only moves, compares or rounds float32 values once (the same IEEE
    operations as the table path), so the compiled kernel (numba installed) and numpy give
    the same bits; the kernel is one call instead of a few dozen array operations on a
    few points, and it releases the GIL."""
    if _kernels.available() and np.isfinite(u).all():
        m, n_pts = u.shape[1], u.shape[2]
        frac = np.empty((3, m, n_pts), dtype=F32)
        cover = np.empty((m, n_pts), dtype=F32)
        vals = np.empty((2, 2, 2, m, n_pts), dtype=F32)
        _corners_kernel(u, sides[0], sides[1], sides[2], grids, frac, cover, vals)
        return frac, cover, vals
    return _corners_numpy(u, sides, grids)


def _corners_numpy(u: np.ndarray, sides: Tuple[int, int, int], grids: np.ndarray
                   ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`direct_corners` in array operations (no numba, or non-finite ``u``)."""
    m, n_pts = u.shape[1], u.shape[2]
    d, h, w = sides
    side = np.asarray(sides, dtype=F32).reshape(3, 1, 1)
    half = (side - F32(1)) * F32(0.5)
    # Spec step 5 per axis: clip(1 + h - |u - h|, 0, 1), h = (n - 1) / 2.
    wts = np.abs(u - half)
    np.subtract(half + F32(1), wts, out=wts)
    np.clip(wts, 0, 1, out=wts)
    cover = wts[0] * wts[1]
    cover *= wts[2]
    # Beyond one cell outside, u clamped to -1 or n puts weight 1 on a zero vertex.
    np.clip(u, -1, side, out=u)
    i0 = np.floor(u)
    np.clip(i0, -1, side - 1, out=i0)
    u -= i0
    lo = i0.astype(np.intp)
    # Corners (lo, lo + 1) per axis: whether each is in the grid, and its index there.
    top = np.asarray(sides, dtype=np.intp).reshape(1, 3, 1, 1) - 1
    corner = np.stack((lo, lo + 1))                                         # (2, 3, M, N)
    inside = (corner >= 0) & (corner <= top)
    np.clip(corner, 0, top, out=corner)
    corner *= np.asarray([h * w, w, 1], dtype=np.intp).reshape(1, 3, 1, 1)
    corner[:, 0] += (np.arange(m, dtype=np.intp) * (d * h * w))[:, None]
    # (dx, dy, dz, M, N), dx outermost: each lerp blends two contiguous halves.
    rows = corner[:, None, None, 2] + corner[None, :, None, 1] + corner[None, None, :, 0]
    ok = inside[:, None, None, 2] & inside[None, :, None, 1] & inside[None, None, :, 0]
    vals = np.take(grids, rows)
    np.copyto(vals, F32(0), where=~ok)
    return u, cover, vals


@_kernels.jit(nogil=True, cache=True, inline="always", error_model="numpy")
def _clip(x, lo, hi):
    """numpy's ``clip`` of a finite float: ``min(max(x, lo), hi)``, each taking its second
    argument on a tie (so ``clip(-0.0, -1, 0)`` is ``+0.0``, as numpy gives it)."""
    x = x if x > lo else lo
    return x if x < hi else hi


@_kernels.jit(nogil=True, cache=True, inline="always", error_model="numpy")
def _axis(u, side):
    """One axis of :func:`direct_corners` at one point: (coverage weight, fraction, lower
    corner, whether the lower and the upper corner lie in the grid). float32 throughout,
    each operation numpy's."""
    one = np.float32(1.0)
    half = (np.float32(side) - one) * np.float32(0.5)
    w = _clip((half + one) - abs(u - half), np.float32(0.0), one)
    u = _clip(u, np.float32(-1.0), np.float32(side))
    i0 = _clip(np.floor(u), np.float32(-1.0), np.float32(side - 1))  # floor(-0.0) is -0.0
    lo = int(i0)
    return w, u - i0, lo, lo >= 0, lo + 1 <= side - 1


@_kernels.jit(nogil=True, cache=True, error_model="numpy")
def _corners_kernel(u, d, h, w, grids, frac, cover, vals):
    """:func:`direct_corners` point by point (``u`` finite)."""
    m = u.shape[1]
    n_pts = u.shape[2]
    zero = np.float32(0.0)
    for g in range(m):
        base = g * d * h * w
        for j in range(n_pts):
            wz, fz, z0, z_lo, z_hi = _axis(u[0, g, j], d)
            wy, fy, y0, y_lo, y_hi = _axis(u[1, g, j], h)
            wx, fx, x0, x_lo, x_hi = _axis(u[2, g, j], w)
            cover[g, j] = wz * wy * wx
            frac[0, g, j] = fz
            frac[1, g, j] = fy
            frac[2, g, j] = fx
            for dz in range(2):
                z_in = z_hi if dz else z_lo
                for dy in range(2):
                    zy_in = z_in and (y_hi if dy else y_lo)
                    row = base + (z0 + dz) * h * w + (y0 + dy) * w + x0
                    for dx in range(2):
                        if zy_in and (x_hi if dx else x_lo):
                            vals[dx, dy, dz, g, j] = grids[row + dx]
                        else:
                            vals[dx, dy, dz, g, j] = zero


register_numpy(NumpyArchitecture("amgsrn", AMGSRNConfig, AMGSRNNumpy, DESCRIPTION))
