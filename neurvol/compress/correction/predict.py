"""The interpolation predictor of a correction block and the classes (rANS tables) of its
points (``spec/correction.md`` §2.4), shared by the encoder and the decoder: both run
:func:`interp_passes`, the encoder quantizing, the decoder reading codes."""
from __future__ import annotations

import itertools
from typing import Callable, Iterator, Optional, Tuple

import numpy as np

from ..interp import MAX_CODE, Pass, _anchor
from .layout import (ANCHOR_CLASS, LEVEL_COARSE, LEVEL_FINE, LEVEL_MID, N_CODE_CONTEXTS,
                     N_ROUGHNESS, ROUGHNESS_EDGES, BoundTooSmallError)

#: ``coder(sel, psel, pred, classes, step) -> codes``: the codes (int64, ``pred``'s shape)
#: of the points ``view[psel]`` of the pass on ``grid[sel]`` (``sel=None``: the anchor),
#: quantized with bins of width ``step``.
Coder = Callable[[object, object, np.ndarray, np.ndarray, float], np.ndarray]


def _along(arr: np.ndarray, ax: int, start: int, stop: Optional[int] = None) -> np.ndarray:
    """``arr[start:stop]`` along array axis ``ax`` (a view)."""
    sel = [slice(None)] * arr.ndim
    sel[ax] = slice(start, stop)
    return arr[tuple(sel)]


def _pass_points(view: np.ndarray, axis: int, h: int) -> Tuple[int, int, np.ndarray]:
    """A pass along ``axis`` at level ``h`` predicts the points at odd multiples ``p`` of
    ``h`` from the even ones ``E`` (multiples of ``2h``; ``E[j]`` is ``p_j - h``,
    ``E[j + 1]`` is ``p_j + h``). Returns the array axis, the number of points ``k`` and
    ``E`` (a view)."""
    ax = view.ndim - 3 + axis
    n = view.shape[ax]
    sel = [slice(None)] * view.ndim
    sel[ax] = slice(0, None, 2 * h)
    return ax, len(range(h, n, 2 * h)), view[tuple(sel)]


def _predict(view: np.ndarray, axis: int, h: int, cubic: bool
             ) -> Tuple[np.ndarray, Tuple[slice, ...]]:
    """Predictions of the points at odd multiples of ``h`` along ``axis`` of ``view``
    (:mod:`..interp`'s rule): cubic ``(9 (E[j] + E[j+1]) - (E[j-1] + E[j+2])) / 16`` where
    all four neighbours exist and ``cubic``, else linear ``(E[j] + E[j+1]) / 2`` where the
    right one exists, else ``E[j]``. The linear-only kernel suits noisy data, where the
    cubic kernel's overshoot costs more than its accuracy on smooth parts gains. Slices
    rather than gathers: the same operations on the same values, so the same bits as
    :func:`..interp._predict`."""
    ax, k, e = _pass_points(view, axis, h)
    m = e.shape[ax]
    kl = min(k, m - 1)                     # points with a right neighbour
    pred = np.array(_along(e, ax, 0, k), dtype=np.float64)   # the fallback E[j]
    _along(pred, ax, 0, kl)[...] = (_along(e, ax, 0, kl) + _along(e, ax, 1, kl + 1)) / 2.0
    kc = min(k, m - 2)                     # cubic for 1 <= j < kc
    if cubic and kc > 1:
        _along(pred, ax, 1, kc)[...] = (
            9.0 * (_along(e, ax, 1, kc) + _along(e, ax, 2, kc + 1))
            - (_along(e, ax, 0, kc - 1) + _along(e, ax, 3, kc + 2))) / 16.0
    sel = [slice(None)] * view.ndim
    sel[ax] = slice(h, None, 2 * h)
    return pred, tuple(sel)


def context(view: np.ndarray, qview: np.ndarray, axis: int, h: int,
            step: float) -> np.ndarray:
    """Table (class, uint8) of each point of a pass, from what the decoder already has: its
    level, how large the codes of its two interpolation neighbours along ``axis`` were, and
    how far apart their values are (in bins). Both say how rough the data is here, so the
    many zero codes of smooth regions cost next to nothing. A point past the last
    neighbour uses the one it has twice. ``qview``: the codes' magnitudes, or those
    magnitudes capped at ``N_CODE_CONTEXTS - 1`` (all the context uses of them)."""
    level = LEVEL_FINE if h == 1 else LEVEL_MID if h == 2 else LEVEL_COARSE
    ax, k, qe = _pass_points(qview, axis, h)
    _, _, ve = _pass_points(view, axis, h)
    kl = min(k, qe.shape[ax] - 1)
    cap = N_CODE_CONTEXTS - 1
    qa = np.minimum(np.abs(_along(qe, ax, 0, k)), cap).astype(np.uint8)
    qb = qa.copy()                         # no right neighbour: the left one twice
    _along(qb, ax, 0, kl)[...] = np.minimum(np.abs(_along(qe, ax, 1, kl + 1)), cap)
    qa += qb
    cls = np.minimum(qa, cap)
    cls += level * N_CODE_CONTEXTS
    cls *= N_ROUGHNESS
    dist = np.zeros(cls.shape, dtype=np.float64)
    _along(dist, ax, 0, kl)[...] = np.abs(_along(ve, ax, 0, kl) - _along(ve, ax, 1, kl + 1))
    dist /= step
    for edge in ROUGHNESS_EDGES.tolist():  # + how many edges are <= dist
        cls += dist >= edge
    return cls


def level_ratio(h: int, alpha: float, beta: float) -> float:
    """How many times narrower than the finest bins the bins of level ``h`` are
    (``spec/correction.md`` §2.4): ``r_0 = 1``, ``r_k = min(r_{k-1} * alpha, beta)`` for
    ``h = 2^k``, in binary64 (one rounded product per level, so every reader computes the
    same value). Coarse points predict every finer one, so a tighter bin there buys more
    accuracy downstream than it costs (SZ3's and QoZ's level-wise error bounds)."""
    r = 1.0
    while h > 1:
        r = min(r * alpha, beta)
        h //= 2
    return r


def level_step(step: float, h: int, alpha: float, beta: float) -> float:
    """The bin width of level ``h``: ``step / level_ratio(h)`` (at most ``step``, so every
    value stays within ``step / 2`` of its reconstruction)."""
    return step / level_ratio(h, alpha, beta)


def _top(shape: Tuple[int, ...]) -> int:
    """The anchor's level: the smallest power of two >= the longest of the last three axes."""
    top = 1
    while top < max(shape[-3:]):
        top *= 2
    return top


#: The axis orders a stream may interpolate in (§2.4), by their index in the stream: at
#: each level the passes run along these axes in turn. The last axis of a level predicts
#: half its points, so the order matters on anisotropic data (SZ3 chooses it too).
AXIS_ORDERS: Tuple[Tuple[int, int, int], ...] = tuple(itertools.permutations(range(3)))
DEFAULT_ORDER = 0         # z, y, x: :mod:`..interp`'s order


def prediction_passes(shape: Tuple[int, ...], order: Tuple[int, int, int] = (0, 1, 2)
                      ) -> Iterator[Pass]:
    """(axis, h, selection) of every pass of a grid of ``shape`` (>= 3 axes), the axes of
    each level in ``order``: :func:`..interp.prediction_passes` with z, y, x replaced by
    ``order`` (a pass along an axis takes the axes before it in ``order`` at multiples of
    ``h``, those after it at multiples of ``2h``)."""
    dims = shape[-3:]
    top = _top(shape)
    h = top // 2
    while h >= 1:
        for i, a in enumerate(order):
            sel = [slice(None)] * len(shape)
            for j, b in enumerate(order):
                if b != a:
                    sel[len(shape) - 3 + b] = slice(0, None, h if j < i else 2 * h)
            if h < dims[a]:
                yield a, h, tuple(sel)
        h //= 2


def interp_passes(shape: Tuple[int, ...], step: float, cubic: bool, coder: Coder,
                  alpha: float = 1.0, beta: float = 1.0,
                  order: Tuple[int, int, int] = (0, 1, 2)) -> np.ndarray:
    """Run the interpolation predictor over grids of ``shape`` (``(n, d, h, w)``: ``n``
    blocks side by side, each its own grid): the anchor, then pass by pass, ``coder``
    giving each pass's codes. Returns the reconstruction (float64), exactly as decoders
    compute it: ``prediction + code * s`` with ``s`` the pass's bin width
    (:func:`level_step`; ``alpha = beta = 1``: ``step`` at every level); the axes of each
    level in ``order``."""
    rec = np.zeros(shape, dtype=np.float64)
    # The codes' magnitudes, capped where the classes stop telling them apart.
    qgrid = np.zeros(shape, dtype=np.uint8)
    cap = N_CODE_CONTEXTS - 1
    anchor = _anchor(shape)
    anchor_cls = np.full(rec[anchor].shape, ANCHOR_CLASS, np.int64)
    s0 = level_step(step, _top(shape), alpha, beta)
    q = coder(None, anchor, np.zeros(anchor_cls.shape), anchor_cls, s0)
    rec[anchor] = q * s0
    qgrid[anchor] = np.minimum(np.abs(q), cap)
    for axis, h, sel in prediction_passes(shape, order):
        view, qview = rec[sel], qgrid[sel]     # basic slicing: views into the grids
        s = level_step(step, h, alpha, beta)
        pred, psel = _predict(view, axis, h, cubic)
        cls = np.broadcast_to(context(view, qview, axis, h, s), pred.shape)
        q = coder(sel, psel, pred, cls, s)
        view[psel] = pred + q * s
        qview[psel] = np.minimum(np.abs(q), cap)
    return rec


def quantize(target: np.ndarray, pred: np.ndarray, step: float) -> np.ndarray:
    """``round((target - pred) / step)`` as int64; a code beyond the symbols' range means
    the step is too small for these values."""
    q = np.round((target - pred) / step)
    if q.size and float(np.abs(q).max()) > MAX_CODE:
        raise BoundTooSmallError(f"step {step:g} is too small for values of this range")
    return q.astype(np.int64)
