"""Multilevel interpolation prediction of feature grids (the predictor of SZ3, Zhao et al.
2021, "Optimizing error-bounded lossy compression for scientific data by dynamic spline
interpolation").

A grid is coded coarse to fine. The anchor (index 0 on every axis) is predicted as 0. For
each level ``h = S/2, S/4, ..., 1`` (``S``: the smallest power of two >= the longest of
the last three axes) and each axis ``a`` in (z, y, x), the points whose index on ``a`` is
an odd multiple of ``h`` — with the earlier axes' indices multiples of ``h`` and the later
axes' multiples of ``2h`` — are predicted from already reconstructed neighbours along
``a`` at ``p ± h`` and ``p ± 3h``:

* cubic ``(9 (x[p-h] + x[p+h]) - (x[p-3h] + x[p+3h])) / 16`` where all four exist,
* else linear ``(x[p-h] + x[p+h]) / 2`` where ``p + h`` exists,
* else ``x[p-h]``.

The residual is quantized to ``code = round((value - prediction) / step)`` and the
reconstruction is ``prediction + code * step``, so every value is within ``step / 2``.
Prediction uses reconstructed values (the decoder's view), in float64 with the operation
order above, so encoder and decoder compute the same numbers bit for bit. Leading axes
(channels, grids) are independent grids coded side by side. Codes are emitted pass by
pass, each pass's points in C order. Unlike Lorenzo on a pre-quantized lattice, the
prediction here is not an integer, so smooth regions give residuals nearer zero.
"""
from __future__ import annotations

from typing import Callable, Iterator, Optional, Tuple

import numpy as np

#: Codes must fit a zigzagged u32 symbol.
MAX_CODE = (1 << 31) - 1

Pass = Tuple[int, int, Tuple[slice, ...]]      # (axis, h, slices of the other axes)
#: Scalings of the predictor by powers of two, as products: ``v * 0.5`` and ``v * 0.0625``
#: are exactly ``v / 2`` and ``v / 16`` (same rounding, subnormals included), and faster.
_HALF = 0.5
_SIXTEENTH = 0.0625


def prediction_passes(shape: Tuple[int, ...]) -> Iterator[Pass]:
    """(axis, h, selection) of every prediction pass of a grid of ``shape`` (>= 3 axes);
    the selection has ``slice(None)`` on ``axis``."""
    dims = shape[-3:]
    top = 1
    while top < max(dims):
        top *= 2
    h = top // 2
    while h >= 1:
        for a in range(3):
            sel = [slice(None)] * len(shape)
            for b in range(3):
                if b != a:
                    sel[len(shape) - 3 + b] = slice(0, None, h if b < a else 2 * h)
            if h < dims[a]:
                yield a, h, tuple(sel)
        h //= 2


def _along(arr: np.ndarray, ax: int, start: int, stop: int) -> np.ndarray:
    """``arr[start:stop]`` along array axis ``ax`` (a view)."""
    sel = [slice(None)] * arr.ndim
    sel[ax] = slice(start, stop)
    return arr[tuple(sel)]


def _predict(view: np.ndarray, axis: int, h: int) -> Tuple[np.ndarray, Tuple[slice, ...]]:
    """Predictions of the points at odd multiples of ``h`` along ``axis`` of ``view`` (all
    points at multiples of ``2h`` along it are reconstructed), and their selection.

    With ``E`` the points at multiples of ``2h`` (``E[j]`` is ``p_j - h``, ``E[j + 1]`` is
    ``p_j + h``), the points with a right neighbour are a prefix ``j < kl`` and the cubic
    ones a range ``1 <= j < kc``, so the rule is three slice expressions over ``E`` rather
    than gathers and selects: the same operations on the same values, the same bits."""
    ax = view.ndim - 3 + axis
    n = view.shape[ax]
    k = len(range(h, n, 2 * h))            # points predicted
    sel = [slice(None)] * view.ndim
    sel[ax] = slice(0, None, 2 * h)
    e = view[tuple(sel)]
    m = e.shape[ax]
    shape = list(e.shape)
    shape[ax] = k
    pred = np.empty(shape, dtype=np.float64)
    kl = min(k, m - 1)                     # j < kl: a right neighbour
    kc = max(1, min(k, m - 2))             # 1 <= j < kc: cubic
    _along(pred, ax, kl, k)[...] = _along(e, ax, kl, k)        # no right neighbour: E[j]
    for a, b in ((0, min(1, kl)), (kc, kl)):                   # linear
        if a < b:
            _along(pred, ax, a, b)[...] = (_along(e, ax, a, b) + _along(e, ax, a + 1, b + 1)) * _HALF
    if kc > 1:
        _along(pred, ax, 1, kc)[...] = (
            9.0 * (_along(e, ax, 1, kc) + _along(e, ax, 2, kc + 1))
            - (_along(e, ax, 0, kc - 1) + _along(e, ax, 3, kc + 2))) * _SIXTEENTH
    sel[ax] = slice(h, None, 2 * h)
    return pred, tuple(sel)


def _anchor(shape: Tuple[int, ...]) -> Tuple[slice, ...]:
    return (slice(None),) * (len(shape) - 3) + (slice(0, 1),) * 3


#: Leading grids are coded this many values at a time (about 2 MiB of float64 per
#: reconstruction): the stream interleaves the grids pass by pass, but each grid's
#: prediction reads only itself, so a batch of grids at a time gives the same codes, at a
#: fraction of a whole tensor's float64 temporaries.
BATCH_VALUES = 1 << 18


def _batches(shape: Tuple[int, ...]) -> Tuple[int, int, Iterator[Tuple[int, int]]]:
    """(leading grids, values per grid, ``[start, stop)`` ranges of leading grids of about
    :data:`BATCH_VALUES` values) of a tensor of ``shape``."""
    lead = int(np.prod(shape[:-3], dtype=np.int64))
    per = int(np.prod(shape[-3:], dtype=np.int64))
    n = max(1, BATCH_VALUES // max(per, 1))
    return lead, per, ((a, min(a + n, lead)) for a in range(0, lead, n))


def _stream_offsets(grid: Tuple[int, int, int], lead: int) -> Iterator[Tuple[Pass, int, int]]:
    """Each pass of a grid of shape ``grid`` with its first position in the stream of
    ``lead`` such grids side by side (after their ``lead`` anchor codes) and the points it
    codes per grid."""
    pos = lead
    shape = (1,) + tuple(grid)
    for axis, h, sel in prediction_passes(shape):
        count = len(range(h, grid[axis], 2 * h))
        for b in range(3):
            if b != axis:
                count *= len(range(0, grid[b], sel[1 + b].step))
        yield (axis, h, sel), pos, count
        pos += lead * count


def interp_encode(values: np.ndarray, step: float,
                  dtype: "np.typing.DTypeLike" = np.float64) -> Tuple[np.ndarray, np.ndarray]:
    """Codes (int64, in stream order) of ``values`` (``(..., D, H, W)``) at ``step``, and
    the reconstruction a decoder will produce (computed in float64, returned as ``dtype``,
    same shape). float32 values are read as they are (float64 arithmetic widens them
    exactly)."""
    x = np.asarray(values)
    if x.dtype != np.float32:
        x = np.asarray(x, dtype=np.float64)
    if x.ndim < 3 or x.size == 0:
        raise ValueError("interpolation coding needs a non-empty tensor with >= 3 axes")
    if not (np.isfinite(step) and step > 0):
        raise ValueError("interpolation coding needs a finite step > 0")
    lead, per, batches = _batches(x.shape)
    grid = x.shape[-3:]
    flat = x.reshape((lead,) + grid)
    codes = np.empty(x.size, dtype=np.int64)
    out = np.empty((lead,) + grid, dtype=dtype)
    passes = list(_stream_offsets(grid, lead))

    def code(target: np.ndarray, pred: np.ndarray, dest: np.ndarray) -> np.ndarray:
        """``pred`` + the quantized residual (in place), the codes into ``dest``."""
        d = np.subtract(target, pred, dtype=np.float64)
        d /= step
        np.round(d, out=d)
        if d.size and float(np.abs(d).max()) > MAX_CODE:
            raise ValueError(f"step {step:g} is too small for values of this range")
        dest.reshape(d.shape)[...] = d
        # The codes as floats (exact: |code| < 2^31), -0 made +0 as an integer code
        # converts, so the reconstruction is the decoder's ``pred + code * step``.
        d += 0.0
        d *= step
        pred += d
        return pred

    for a, b in batches:
        xb = flat[a:b]
        rec = np.zeros(xb.shape, dtype=np.float64)
        anchor = _anchor(rec.shape)
        rec[anchor] = code(xb[anchor], np.zeros_like(rec[anchor]), codes[a:b])
        for (axis, h, sel), pos, count in passes:
            view = rec[sel]              # basic slicing: a view, writes go to ``rec``
            pred, psel = _predict(view, axis, h)
            view[psel] = code(xb[sel][psel], pred, codes[pos + a * count:pos + b * count])
        out[a:b] = rec
    return codes, out.reshape(x.shape)


def interp_decode(codes: np.ndarray, shape: Tuple[int, ...], step: float) -> np.ndarray:
    """Inverse of :func:`interp_encode`: the reconstruction (float64) of ``shape`` from
    ``codes`` (exactly ``prod(shape)`` integers, stream order)."""
    codes = np.asarray(codes, dtype=np.int64).reshape(-1)
    if len(shape) < 3 or codes.size != int(np.prod(shape)) or codes.size == 0:
        raise ValueError(f"{codes.size} codes do not fill a grid of shape {tuple(shape)}")
    # float64(code) * step: the product the definition adds to each prediction.
    return interp_reconstruct(codes * step, shape)


def interp_reconstruct(scaled: np.ndarray, shape: Tuple[int, ...]) -> np.ndarray:
    """:func:`interp_decode` from the codes already multiplied by the step (``scaled``:
    ``float64(code) * step``, float64, stream order): the reconstruction (float64, a view
    of ``shape``; C-contiguous unless the last axis is odd)."""
    scaled = np.asarray(scaled, dtype=np.float64).reshape(-1)
    shape = tuple(shape)
    if len(shape) < 3 or scaled.size != int(np.prod(shape)) or scaled.size == 0:
        raise ValueError(f"{scaled.size} codes do not fill a grid of shape {shape}")
    # Every point is set exactly once (the anchor or one pass), so no zero fill. The last
    # axis is padded to even length so that the finest pass along it is one flat
    # stride-2 sequence (:func:`_finest_x_pass`); the padding column is never read.
    width = shape[-1]
    buf = np.empty(shape[:-1] + (width + (width & 1),), dtype=np.float64)
    rec = buf[..., :width]
    pos = 0

    def take(pred: np.ndarray) -> np.ndarray:
        nonlocal pos
        pred += scaled[pos:pos + pred.size].reshape(pred.shape)
        pos += pred.size
        return pred

    anchor = _anchor(shape)
    rec[anchor] = take(np.zeros(rec[anchor].shape))
    for axis, h, sel in prediction_passes(shape):
        if axis == len(_AXES) - 1 and h == 1:
            # The last pass (finest level, last axis): half of all points.
            _finest_x_pass(buf, width, scaled[pos:])
            pos = scaled.size
            continue
        view = rec[sel]
        pred, psel = _predict(view, axis, h)
        view[psel] = take(pred)
    return rec


#: The three predicted axes (z, y, x): the last three of a grid tensor.
_AXES = (-3, -2, -1)


def _finest_x_pass(buf: np.ndarray, width: int, scaled: np.ndarray) -> None:
    """The pass ``h = 1`` along the last axis, in place in ``buf`` (the grid with its last
    axis padded to even length ``2 * half``): every odd position of every row, from the
    even positions already set, plus ``scaled`` (this pass's codes times the step, rows
    in C order).

    Flattened, the even positions of all rows are one stride-2 sequence ``E`` and the
    odd ones another, position ``j`` of the odd ones lying between ``E[j]`` and
    ``E[j + 1]``. The cubic kernel is computed over the whole flat sequence in long numpy
    loops (row by row, each loop would be only as long as a row, and numpy's per-loop
    cost would dominate), which is right for every point of a row except its first and
    its last few: those
    columns are then set with their own kernels (linear, or the copy of ``v(p-1)``), as
    :func:`_predict` does. Same operations on the same values: the same bits."""
    flat = buf.reshape(-1)
    half = buf.shape[-1] // 2
    rows = flat.size // (2 * half)
    e = flat[0::2]
    size = e.size
    k = width // 2                          # points per row (odd positions < width)
    m = (width + 1) // 2                    # even positions per row
    kl = min(k, m - 1)                      # j < kl: a right neighbour
    kc = max(1, min(k, m - 2))              # 1 <= j < kc: cubic
    pred = np.empty(size, dtype=np.float64)
    if kc > 1:
        inner = pred[1:size - 2]
        np.add(e[1:size - 2], e[2:size - 1], out=inner)
        inner *= 9.0
        inner -= e[0:size - 3] + e[3:size]
        inner *= _SIXTEENTH
    p2, e2 = pred.reshape(rows, half), e.reshape(rows, half)
    for j in [0] + list(range(kc, half)):
        if j >= k:                          # the padding column
            p2[:, j] = 0.0
        elif j >= kl:                       # no right neighbour
            p2[:, j] = e2[:, j]
        else:                               # linear
            np.add(e2[:, j], e2[:, j + 1], out=p2[:, j])
            p2[:, j] *= _HALF
    if k == half:
        pred += scaled
    else:
        p2[:, :k] += scaled.reshape(rows, k)
    flat[1::2] = pred
