"""Vectorised building blocks of the numpy evaluations: ReLU MLPs and trilinear lookups.

Points are rows (``(N, ...)`` arrays); everything is float32 except indices (``intp``).
A lookup gathers the 8 corner rows of each point's cell from a vertex-major table
(``(vertices, C)``: a vertex's C features are contiguous, so one gather fetches them) and
blends them with three lerps.
"""
from __future__ import annotations

from typing import List, Mapping, Sequence, Tuple

import numpy as np

F32 = np.float32


class DenseMLP:
    """``n_in -> width (ReLU) x hidden -> n_out`` from the tensors ``{prefix}.{2i}.weight``
    / ``.bias`` (the layout of :func:`neurvol.models.mlp.make_mlp`).

    Points along rows: ``x (N, n_in) -> (N, n_out)``; with ``columns=True`` points along
    columns, ``x (n_in, N) -> (n_out, N)`` (for feature-major lookups)."""

    def __init__(self, arrays: Mapping[str, np.ndarray], prefix: str, hidden_layers: int,
                 columns: bool = False) -> None:
        self.columns = columns
        layers = []
        for i in range(hidden_layers + 1):
            w = np.asarray(arrays[f"{prefix}.{2 * i}.weight"], dtype=F32)
            b = np.asarray(arrays[f"{prefix}.{2 * i}.bias"], dtype=F32)
            # C-contiguous operands: every layer is one sgemm with no copy of x.
            layers.append((np.ascontiguousarray(w), np.ascontiguousarray(b[:, None])) if columns
                          else (np.ascontiguousarray(w.T), np.ascontiguousarray(b)))
        self.layers: List[Tuple[np.ndarray, np.ndarray]] = layers

    def __call__(self, x: np.ndarray) -> np.ndarray:
        last = len(self.layers) - 1
        for i, (w, b) in enumerate(self.layers):
            x = w @ x if self.columns else x @ w
            x += b
            if i < last:
                np.maximum(x, 0, out=x)
        return x


def vertex_table(grids: np.ndarray) -> np.ndarray:
    """``(..., C, D, H, W)`` -> ``(prod(...) * D * H * W, C)`` float32, vertex-major."""
    c, d, h, w = grids.shape[-4:]
    lead = int(np.prod(grids.shape[:-4], dtype=np.int64))
    t = np.moveaxis(grids.reshape(lead, c, d, h, w), 1, -1)
    return np.ascontiguousarray(t.reshape(lead * d * h * w, c), dtype=F32)


def cell(u: np.ndarray, lo: int, hi: int) -> Tuple[np.ndarray, np.ndarray]:
    """Lower vertex and fraction of continuous vertex coordinates ``u`` (float32): the
    vertex ``floor(u)`` clamped to ``[lo, hi]`` and ``u - vertex``, computed in ``u``'s
    buffer (callers clamp ``u`` so that the fraction lies in [0, 1])."""
    i0 = np.floor(u)
    np.clip(i0, lo, hi, out=i0)
    u -= i0
    return i0.astype(np.intp), u


def lerp_into(a: np.ndarray, b: np.ndarray, f: np.ndarray) -> np.ndarray:
    """``a + f * (b - a)`` computed in ``b``'s buffer (``f`` broadcasts over rows)."""
    b -= a
    b *= f
    b += a
    return b


def trilinear_rows(table: np.ndarray, base: np.ndarray, strides: Sequence[int],
                   frac: Sequence[np.ndarray]) -> np.ndarray:
    """Trilinear blend of the 8 rows ``base + dz*sz + dy*sy + dx*sx`` of ``table``.

    table: ``(V, C)``, or ``(V,)`` for one channel; base: ``(N,)`` row of each point's
    lower corner; strides: ``(sz, sy, sx)`` rows per vertex step along z, y, x; frac: the
    three ``(N,)`` fractions. Returns ``(N, C)`` (``(N,)`` for a 1-D table).
    """
    sz, sy, sx = strides
    fz, fy, fx = (f if table.ndim == 1 else f[:, None] for f in frac)

    def along_x(off: int) -> np.ndarray:
        # Row ``base + off (+ sx)`` is row ``base`` of the table viewed from ``off``: no
        # shifted copy of the indices.
        return lerp_into(table[off:].take(base, axis=0), table[off + sx:].take(base, axis=0), fx)

    y0 = lerp_into(along_x(0), along_x(sy), fy)
    y1 = lerp_into(along_x(sz), along_x(sz + sy), fy)
    return lerp_into(y0, y1, fz)
