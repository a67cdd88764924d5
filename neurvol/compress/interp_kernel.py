"""Compiled reconstruction of interp-coded grids (``spec/payload.md`` §2.2.8, the
predictor of :mod:`.interp`), with numba where installed (:mod:`.jit`).

A cold read of a bricked file rebuilds every touched brick's feature grids, tens of
millions of values; numpy's pass-by-pass reconstruction costs a few nanoseconds per value
in array operations and holds the GIL between them. One compiled loop that unzigzags
each symbol, predicts its point and stores it does the same binary64 operations in the
same order (the same bits: tests compare the two) at a fraction of that, and releases the
GIL, so a reader's threads rebuild bricks side by side.

Every array index in the kernels is cast to unsigned (:func:`_at`): numba wraps a negative
signed index around the array's end, a test and a branch on every access of these loops,
and the indices here are never negative (each pass reads only points that exist)."""
from __future__ import annotations

import functools
from typing import Tuple

import numpy as np

from .interp import prediction_passes
from .jit import available, jit

#: The kernels' ``(a + b) * HALF`` and ``(...) * SIXTEENTH``: exactly :mod:`.interp`'s
#: divisions by 2 and 16 (powers of two).
HALF = 0.5
SIXTEENTH = 0.0625
#: Grid shapes whose pass tables are kept (a bricked file's bricks have tens of shapes).
PASS_TABLES = 256


@functools.lru_cache(maxsize=PASS_TABLES)
def _pass_table(shape3: Tuple[int, int, int]) -> np.ndarray:
    """The passes of a grid of ``shape3``: rows ``(axis, h, start_z, stride_z, start_y,
    stride_y, start_x, stride_x)`` (read-only: shared by every grid of that shape)."""
    rows = []
    for axis, h, sel in prediction_passes((1,) + tuple(shape3)):
        row = [axis, h]
        for b in range(3):
            s = sel[1 + b]
            row += [h, 2 * h] if b == axis else [0, s.step or 1]
        rows.append(row)
    table = np.asarray(rows, dtype=np.int64).reshape(-1, 8)
    table.flags.writeable = False
    return table


@jit(nogil=True, cache=True, inline="always", error_model="numpy")
def _at(i):
    """Index ``i`` (never negative) as unsigned: no wraparound test on the access."""
    return np.uint64(i)


@jit(nogil=True, cache=True, inline="always", error_model="numpy")
def _scaled(z, pos, step):
    """``float64(unzigzag(z[pos])) * step``."""
    s = np.int64(z[_at(pos)])
    return np.float64((s >> 1) ^ -(s & 1)) * step


@jit(nogil=True, cache=True, inline="always", error_model="numpy")
def _cubic(rec, p, da):
    """The cubic prediction at ``p`` from its neighbours ``da`` and ``3 da`` apart."""
    return (9.0 * (rec[_at(p - da)] + rec[_at(p + da)])
            - (rec[_at(p - 3 * da)] + rec[_at(p + 3 * da)])) * SIXTEENTH


@jit(nogil=True, cache=True, inline="always", error_model="numpy")
def _predict(rec, p, c, h, da, na):
    """:mod:`.interp`'s rule at ``p`` (index ``c`` of ``na`` along the pass's axis, its
    neighbours ``da`` apart): cubic where four neighbours exist, linear where the right
    one does, else the left one."""
    if c + h <= na - 1:
        if c - 3 * h >= 0 and c + 3 * h <= na - 1:
            return _cubic(rec, p, da)
        return (rec[_at(p - da)] + rec[_at(p + da)]) * HALF
    return rec[_at(p - da)]


@jit(nogil=True, cache=True, error_model="numpy")
def _reconstruct(z, step, lead, d, hh, w, passes, out):
    """Grids ``(lead, d, hh, w)`` from the zigzagged symbols ``z`` (stream order) into
    ``out`` (float32, flat): the anchors, then pass by pass, each pass over all grids in
    C order, ``rec = prediction + float64(code) * step``. A row of a pass along z or y
    has one kernel throughout (its index along the axis is fixed), so it runs as one
    tight loop; a row along x runs as three: the points before the cubic range, the cubic
    ones, the points after it."""
    npts = d * hh * w
    rec = np.empty(lead * npts, dtype=np.float64)
    dims = np.array([d, hh, w], dtype=np.int64)
    mul = np.array([hh * w, w, 1], dtype=np.int64)
    pos = 0
    for g in range(lead):                     # the anchors: prediction 0
        rec[_at(g * npts)] = 0.0 + _scaled(z, pos, step)
        pos += 1
    for ip in range(passes.shape[0]):
        axis = passes[ip, 0]
        h = passes[ip, 1]
        na = dims[axis]
        da = mul[axis] * h
        x0 = passes[ip, 6]
        sx = passes[ip, 7]
        for g in range(lead):
            base = g * npts
            for zz in range(passes[ip, 2], d, passes[ip, 3]):
                for yy in range(passes[ip, 4], hh, passes[ip, 5]):
                    row = base + zz * mul[0] + yy * mul[1]
                    if axis == 2:
                        # x in [x0, w) by sx (= 2h): cubic for 3h <= x <= w - 1 - 3h.
                        xx = x0
                        while xx < w and xx < 3 * h:
                            p = row + xx
                            rec[_at(p)] = _predict(rec, p, xx, h, da, na) + _scaled(z, pos, step)
                            pos += 1
                            xx += sx
                        while xx <= w - 1 - 3 * h:
                            p = row + xx
                            rec[_at(p)] = _cubic(rec, p, da) + _scaled(z, pos, step)
                            pos += 1
                            xx += sx
                        while xx < w:
                            p = row + xx
                            rec[_at(p)] = _predict(rec, p, xx, h, da, na) + _scaled(z, pos, step)
                            pos += 1
                            xx += sx
                    else:
                        c = zz if axis == 0 else yy
                        if c + h <= na - 1 and c - 3 * h >= 0 and c + 3 * h <= na - 1:
                            for xx in range(x0, w, sx):
                                p = row + xx
                                rec[_at(p)] = _cubic(rec, p, da) + _scaled(z, pos, step)
                                pos += 1
                        elif c + h <= na - 1:
                            for xx in range(x0, w, sx):
                                p = row + xx
                                rec[_at(p)] = ((rec[_at(p - da)] + rec[_at(p + da)]) * HALF
                                               + _scaled(z, pos, step))
                                pos += 1
                        else:
                            for xx in range(x0, w, sx):
                                p = row + xx
                                rec[_at(p)] = rec[_at(p - da)] + _scaled(z, pos, step)
                                pos += 1
    for i in range(rec.size):
        out[_at(i)] = rec[_at(i)]


def reconstruct_symbols(z: np.ndarray, shape: Tuple[int, ...], step: float) -> np.ndarray:
    """The record's float32 values (flat) of an interp grid of ``shape`` (``>= 3`` axes,
    leading axes independent grids) from its zigzagged symbols ``z`` (unsigned, stream
    order): what ``interp_reconstruct(unzigzag_scaled(z, step), shape)`` cast to float32
    gives."""
    shape = tuple(int(n) for n in shape)
    d, hh, w = shape[-3:]
    lead = int(np.prod(shape[:-3], dtype=np.int64))
    z = np.ascontiguousarray(z).reshape(-1)
    if len(shape) < 3 or z.size != lead * d * hh * w or z.size == 0:
        raise ValueError(f"{z.size} codes do not fill a grid of shape {shape}")
    out = np.empty(z.size, dtype=np.float32)
    _reconstruct(z, float(step), lead, d, hh, w, _pass_table((d, hh, w)), out)
    return out


__all__ = ["available", "reconstruct_symbols"]
