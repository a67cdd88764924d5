"""Choosing the level-wise bin widths of a correction stream (``spec/correction.md`` §4,
informative): a trial of each candidate ``(alpha, beta)`` on a sample of the volume's
blocks, as QoZ tunes its level-wise error bounds.

Coarse points predict every finer one, so narrower bins on the coarse levels make the
fine levels' predictions better: at a fixed bound the codes of the fine levels shrink
(fewer bytes) and the error of the many interpolated points falls (higher PSNR). How much
depends on the field; the trial measures it.
"""
from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

import numpy as np

from .entropy import entropy_bits
from .layout import NO_LEVELS, block_grid, block_shape, block_slices
from .predict import AXIS_ORDERS, DEFAULT_ORDER

#: Candidate ``(alpha, beta)`` pairs, the first one bin width at every level.
CANDIDATES: Tuple[Tuple[float, float], ...] = (NO_LEVELS, (1.25, 2.0), (1.5, 4.0), (2.0, 4.0),
                                               (2.0, 8.0), (3.0, 8.0), (4.0, 64.0))

#: What a choice optimises: the stream's size at the bound (fixed-bound encodes), or the
#: quality per byte (a ``ratio=`` encode, whose bound is searched to fill a budget).
OBJECTIVE_SIZE = "size"
OBJECTIVE_QUALITY = "quality"
OBJECTIVES = (OBJECTIVE_SIZE, OBJECTIVE_QUALITY)

#: Blocks the trial codes at most (spread over the volume): the trial costs about this many
#: blocks' encodes per candidate (the quality objective codes each at two bin widths, so
#: it samples fewer).
SAMPLE_BLOCKS = {OBJECTIVE_SIZE: 2, OBJECTIVE_QUALITY: 1}

#: The level-wise bins the axis orders are compared with (a middle candidate).
ORDER_TRIAL_LEVELS = (1.5, 4.0)

#: The quality objective codes each candidate at two bin widths, this factor apart, and
#: compares their PSNRs interpolated to one rate.
QUALITY_STEP_FACTOR = 1.5


def _sample(shape: Sequence[int], block: int, count: int) -> Sequence[int]:
    """Block ids of the trial: whole blocks (edge blocks may be thin slabs, unlike most of
    the volume), evenly spread."""
    n = int(np.prod(block_grid(shape, block)))
    sizes = np.array([np.prod([s.stop - s.start for s in block_slices(shape, block, i)])
                      for i in range(n)])
    full = np.flatnonzero(sizes == sizes.max())
    if full.size <= count:
        return full.tolist()
    picks = np.linspace(0, full.size - 1, count + 2)[1:-1]
    return sorted({int(full[int(round(k))]) for k in picks})


def _trial(values: np.ndarray, ids: Sequence[int], block: int, step: float,
           levels: Tuple[float, float], kernels: Sequence[bool],
           order: int = DEFAULT_ORDER) -> Tuple[float, float]:
    """(order-0 bits, mean squared error) of the sample blocks coded with ``levels`` at
    ``step``, each block with the cheaper of ``kernels`` (cubic or not)."""
    from .encode import _interp_code      # the encoder's own coding of a block

    bits, sq, n = 0.0, 0.0, 0
    for i in ids:
        # float64 a block at a time: ``values`` may be the stored dtype or a lazy difference.
        x = np.asarray(values[block_slices(values.shape, block, i)], dtype=np.float64)[None]
        best: Optional[Tuple[float, float]] = None
        for cubic in kernels:
            kept: list = []
            passes = _interp_code(x, step, cubic, levels, kept, order)
            codes = np.concatenate([p[0] for p in passes], axis=1)
            classes = np.concatenate([p[1] for p in passes], axis=1)
            b = float(entropy_bits(codes, classes)[0])
            err = float(np.sum((kept[0] - x) ** 2))
            if best is None or b < best[0]:
                best = (b, err)
        bits += best[0]
        sq += best[1]
        n += x.size
    return max(bits, 1.0), max(sq / max(n, 1), 1e-300)


def sample_bits_per_value(values: np.ndarray, step: float, block: int,
                          levels: Tuple[float, float] = NO_LEVELS,
                          order: int = DEFAULT_ORDER) -> float:
    """Order-0 bits per value of the sample blocks of a quality trial (:func:`rank_levels`)
    coded at ``step`` with ``levels``, each block with the cheaper kernel: a rate estimate
    for a fraction of a whole stream's cost (a bound search starts from it)."""
    ids = _sample(values.shape, block, SAMPLE_BLOCKS[OBJECTIVE_QUALITY])
    n = sum(int(np.prod([s.stop - s.start for s in block_slices(values.shape, block, i)]))
            for i in ids)
    bits, _ = _trial(values, ids, block, step, levels, (True, False), order)
    return bits / max(n, 1)


def rank_levels(values: np.ndarray, step: float, objective: str, block: int,
                cubic_too: bool = True,
                candidates: Sequence[Tuple[float, float]] = CANDIDATES,
                integer: bool = False, order: int = DEFAULT_ORDER
                ) -> List[Tuple[float, float]]:
    """``candidates`` ``(alpha, beta)`` best first for ``objective`` on a sample of the
    blocks of ``values`` (3-D, read a block at a time as float64: the data, or the data
    less the base) coded at
    ``step``. ``integer``: the values are integers, so bins narrower than 1 gain nothing
    (below that, one bin width everywhere comes first).

    ``"size"``: the fewest bits at ``step``. ``"quality"``: the best PSNR at the rate of
    one bin width everywhere, each candidate's PSNR interpolated (in log rate) between
    ``step`` and ``QUALITY_STEP_FACTOR`` times it. ``order``: the axis order coded with."""
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    if integer and step < 1.0:
        # Lossless already: narrower bins only cost bits.
        return [NO_LEVELS] + [c for c in candidates if c != NO_LEVELS]
    ids = _sample(values.shape, block, SAMPLE_BLOCKS[objective])
    kernels = (True, False) if cubic_too else (False,)
    if objective == OBJECTIVE_SIZE:
        return sorted(candidates,
                      key=lambda c: _trial(values, ids, block, step, c, kernels, order)[0])
    ref_bits = math.log2(_trial(values, ids, block, step, NO_LEVELS, kernels, order)[0])

    def quality(levels: Tuple[float, float]) -> float:
        (b1, m1), (b2, m2) = (_trial(values, ids, block, s, levels, kernels, order)
                              for s in (step, step * QUALITY_STEP_FACTOR))
        x1, x2 = math.log2(b1), math.log2(b2)
        p1, p2 = -10.0 * math.log10(m1), -10.0 * math.log10(m2)
        if abs(x1 - x2) < 1e-9:
            return p1
        return p1 + (ref_bits - x1) * (p1 - p2) / (x1 - x2)

    return sorted(candidates, key=quality, reverse=True)


def choose_levels(values: np.ndarray, step: float, objective: str, block: int,
                  cubic_too: bool = True,
                  candidates: Sequence[Tuple[float, float]] = CANDIDATES,
                  integer: bool = False, order: int = DEFAULT_ORDER) -> Tuple[float, float]:
    """The best of :func:`rank_levels`."""
    return rank_levels(values, step, objective, block, cubic_too, candidates, integer,
                       order)[0]


def choose_order(values: np.ndarray, step: float, block: int,
                 levels: Tuple[float, float] = ORDER_TRIAL_LEVELS) -> int:
    """The index of the axis order (:data:`.predict.AXIS_ORDERS`) whose codes cost the
    fewest bits on sample blocks of ``values`` coded at ``step`` with ``levels``: the axis
    a level interpolates last predicts half its points, so the smoothest direction
    should come last (SZ3 chooses its dimension sequence too)."""
    ids = _sample(values.shape, block, SAMPLE_BLOCKS[OBJECTIVE_SIZE])
    if all(min(block_shape(values.shape, block, i)) < 2 for i in ids):
        return DEFAULT_ORDER
    bits = [_trial(values, ids, block, step, levels, (False,), k)[0]
            for k in range(len(AXIS_ORDERS))]
    # Ties (e.g. a field of zero codes) keep the default order.
    return min(range(len(AXIS_ORDERS)), key=lambda k: (bits[k], k != DEFAULT_ORDER))
