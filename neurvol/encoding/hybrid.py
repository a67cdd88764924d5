"""Hybrid rate allocation of a ``ratio=`` encode: the budget goes either to a model (today's
single-model file) or to the correction stream alone (a pure predictor-coded grid,
``spec/correction.md``, its error bound searched so the whole file fits the budget); the
encode keeps the candidate with the better PSNR over the volume.

The predictor candidate costs a few numpy encodes of the correction stream (no fit), so it
runs first; when no model fits the budget (a tiny budget) it is the file. Model plus
correction at one budget is not a candidate: a model's residual is noisier than the data,
so at equal bytes it coded larger than the data itself (issue 22's measurements), and it
would cost a second fit.
"""
from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from ..compress import encode_constant
from ..compress.correction import BoundTooSmallError, decode_correction, encode_correction
from ..compress.correction.layout import (DEFAULT_BLOCK, NO_LEVELS, integer_bound,
                                          quantization_bound)
from ..compress.correction.levels import (OBJECTIVE_QUALITY, choose_order, rank_levels,
                                          sample_bits_per_value)
from ..compress.correction.predict import DEFAULT_ORDER
from ..container import NvolReader
from ..errors import NeurvolInputError
from ..metrics import psnr
from ..neural_volume import NeuralVolume
from .bounded import bounded_file
from .plan import CODEC, FIT_PLACEHOLDER, HYBRID_KEY

log = logging.getLogger("neurvol")

#: Level-wise bins (the best of a trial first) a pure predictor search is run with, besides
#: one bin width everywhere: the trial on sample blocks ranks them roughly, the searches
#: measure the file.
LEVELS_TRIED = 2
#: Their searches bracket the bound within this factor of where the flat bins meet the
#: budget (below) and of ``beta`` times that (above).
LEVELS_BRACKET = 2.0
#: The bound (fraction of the data range) the axis order is chosen at, once per volume.
ORDER_TRIAL_BOUND = 0.01
#: Correction-stream encodes the bound search may run (each a numpy pass over the volume).
MAX_BOUND_TRIALS = 10
#: The search stops at a file within this fraction below the budget (bytes left unused).
FILL_TOLERANCE = 0.03
#: Bounds searched, as fractions of the data range: the smallest is near float32 rounding
#: of most fields; at the largest (the whole range) only the coarse levels' narrower bins
#: code anything, so the tightest budgets still get a file.
MIN_REL_BOUND, MAX_REL_BOUND = 1e-7, 1.0
#: Until the budget is bracketed, a search steps along this slope of log(size) against
#: log(bound) (about what pure predictor streams show near their budgets) ...
ASSUMED_SLOPE = 1.0
#: ... or along the secant of its last two trials, where it is at least this steep,
_MIN_SLOPE = 0.2
#: moving log(bound) by at least / at most this per trial.
_MIN_MOVE, _MAX_MOVE = 0.05, 4.0
#: The flat-bin search starts where the sample blocks' rate meets the budget, estimated
#: from trials at these bounds (fractions of the data range; where most budgets of a
#: ``ratio=`` encode land).
START_TRIAL_BOUNDS = (0.1, 0.02)
#: Sample codings that estimate may take, stopping within this of the target (log rate).
START_TRIALS = 4
START_TOLERANCE = 0.1
#: Each trial lands at least this fraction inside the bracket, so a lopsided
#: interpolation still halves it within a few trials.
_MIN_STEP = 0.1
#: Bounds closer than this in log(bound) count as one (0.2 %).
_SAME_BOUND = 2e-3
#: The fit entry the search sizes files with: as wide as any PSNR it is replaced by
#: (the PSNR of the planner's placeholder: one widest value for every encode path).
_FIT_PLACEHOLDER = {"psnr": FIT_PLACEHOLDER["psnr"]}


@dataclasses.dataclass
class Candidate:
    """One file a ``ratio=`` encode may return, and how good it is."""

    volume: NeuralVolume
    psnr: float
    kind: str            # "model" or "predictor"


def split_codec(codec: Optional[Dict[str, Any]]) -> Tuple[bool, Optional[Dict[str, Any]]]:
    """``(hybrid on, codec without the hybrid key)`` of an ``encode(codec=)`` value."""
    if not isinstance(codec, dict) or HYBRID_KEY not in codec:
        return True, codec
    on = codec[HYBRID_KEY]
    if not isinstance(on, bool):
        raise NeurvolInputError(f"codec {HYBRID_KEY!r} must be True or False, got {on!r}")
    rest = {k: v for k, v in codec.items() if k != HYBRID_KEY}
    return on, (rest or None)


def predictor_candidate(volume: np.ndarray, header: Dict[str, Any],
                        budget: int) -> Optional[Candidate]:
    """The pure predictor file of ``volume`` (checked, not constant) with the smallest
    error bound the search finds whose file fits ``budget`` bytes, or ``None`` when even
    the coarsest does not fit (the file's fixed overhead). ``header``: the encode's
    (volume entry, budget)."""
    x = np.asarray(volume)
    lo, hi = float(header["volume"]["min"]), float(header["volume"]["max"])
    extra = {"budget": header.get("budget")}
    base_header = {"volume": header["volume"], "bricks": {"grid": [1, 1, 1]},
                   "codec": CODEC}
    constant = encode_constant(0.5 * (lo + hi))
    streams: Dict[Tuple[float, Any], Tuple[bytes, Any]] = {}
    levels: Any = NO_LEVELS

    def file_at(e: float, fit: Optional[Dict[str, Any]] = None) -> Optional[bytes]:
        # Integers: ``e`` is the bins' half width, the bound the integer it guarantees.
        bound, half = integer_bound(e) if x.dtype.kind in "iu" else (e, None)
        key = (e, levels)
        if key not in streams:
            try:
                streams[key] = encode_correction(x, bound, None, levels=levels,
                                                 bin_bound=half, order=order)
            except BoundTooSmallError:
                return None
        return bounded_file(base_header, constant, streams[key][0], bound, None,
                            extra=dict(extra, fit=fit or _FIT_PLACEHOLDER))

    # Sizes fall as bounds grow only while the level-wise bins stay the same, so each
    # search runs with them fixed: one bin width first, then the best LEVELS_TRIED bins of
    # a trial at that search's rate; the file with the best PSNR is kept.
    # The predictor starts from 0 (each block's anchor), so the bound that codes nothing
    # is the largest magnitude when the values sit away from 0, not the range.
    span = max(hi - lo, abs(lo), abs(hi))
    order = order_for(x, ORDER_TRIAL_BOUND * (hi - lo))
    data, e = search_bound(file_at, span, budget,
                           start=start_bound(x, span, budget, order, hi - lo))
    if data is None:
        return None
    quality = psnr(x, decode_correction(streams[(e, NO_LEVELS)][0], x.shape, x.dtype))
    # The trial's rate: the flat-bin file nearest the budget (the one kept may be far
    # below it where sizes fall off a cliff near the largest bound).
    room = budget - (len(data) - len(streams[(e, NO_LEVELS)][0]))     # for the stream
    sizes = {k[0]: len(v[0]) for k, v in streams.items() if k[1] == NO_LEVELS}
    e_ref = min(sizes, key=lambda k: abs(math.log(sizes[k] / max(room, 1))))
    kept = NO_LEVELS
    for levels in levels_for_rate(x, e_ref, order)[:LEVELS_TRIED]:
        if levels == NO_LEVELS:
            continue
        # Narrower coarse bins (by up to ``beta``) move the bound that fills the budget
        # up from the flat bins' by up to about ``beta``; at most to the bound whose
        # coarsest bins span the values.
        top = min(span * levels[1], e_ref * levels[1] * LEVELS_BRACKET)
        found, found_e = search_bound(file_at, span, budget,
                                      bounds=(e_ref / LEVELS_BRACKET, top), start=e_ref)
        if found is not None:
            found_q = psnr(x, decode_correction(streams[(found_e, levels)][0], x.shape,
                                                x.dtype))
            if found_q > quality:
                data, e, quality, kept = found, found_e, found_q, levels
    levels = kept           # file_at's bins: those of the file kept
    # The PSNR goes into the header (as a model's fit PSNR does) so psnr= searches and
    # info() see it; the search accounted for these bytes with a placeholder.
    final = file_at(e, {"psnr": _rounded(quality)})
    if final is not None and len(final) <= budget:
        data = final      # else the PSNR's digits did not fit: the placeholder's file
    out = NeuralVolume(NvolReader(data))
    log.info("encode: pure predictor at max_error %g: %d bytes, %.2f dB", out.max_error,
             len(data), quality)
    out.bounded_choice = {"model_ratio": None}      # as an error-bounded encode reports it
    return Candidate(out, quality, "predictor")


def start_bound(volume: np.ndarray, span: float, budget: int, order: int,
                data_range: float) -> Optional[float]:
    """Where the flat-bin bound search starts: the bound at which the sample blocks' rate
    (:func:`..compress.correction.levels.sample_bits_per_value`) meets the budget's bits
    per value, by a secant search in log-log from :data:`START_TRIAL_BOUNDS` of
    ``data_range`` (:data:`START_TRIALS` sample codings at most); None (the search starts
    at the largest bound) where the samples cannot tell."""
    if budget <= 0 or volume.size == 0:
        return None
    target = math.log(8.0 * budget / volume.size)
    lo_t, hi_t = math.log(span * MIN_REL_BOUND), math.log(span * MAX_REL_BOUND)
    rng = data_range if data_range > 0 else span
    pts: List[Tuple[float, float]] = []
    t = math.log(START_TRIAL_BOUNDS[0] * rng)
    for k in range(START_TRIALS):
        step = _step_at(volume, math.exp(t))
        if step is None:
            return None
        bits = sample_bits_per_value(volume, step, DEFAULT_BLOCK, NO_LEVELS, order)
        pts.append((t, math.log(max(bits, 1e-9))))
        if abs(pts[-1][1] - target) < START_TOLERANCE:
            break
        if k + 1 < len(START_TRIAL_BOUNDS):
            t = math.log(START_TRIAL_BOUNDS[k + 1] * rng)
            continue
        # The secant of the two trials nearest the target.
        (t1, b1), (t2, b2) = sorted(pts, key=lambda p: abs(p[1] - target))[:2]
        if b1 == b2:
            break
        t = min(max(t1 + (target - b1) * (t2 - t1) / (b2 - b1), lo_t), hi_t)
    best_t, _ = min(pts, key=lambda p: abs(p[1] - target))
    return math.exp(best_t)


def _step_at(volume: np.ndarray, e: float) -> Optional[float]:
    """The finest bin width of a pure predictor stream of ``volume`` at bound ``e`` (for
    integers, ``e`` the half width: :func:`integer_bound`); None if none can hold it."""
    if volume.dtype.kind in "iu":
        return 2.0 * integer_bound(e)[1]
    try:
        return 2.0 * quantization_bound(e, volume.dtype, float(np.abs(volume).max()))
    except BoundTooSmallError:
        return None


def levels_for_rate(volume: np.ndarray, e: float, order: int) -> List[Tuple[float, float]]:
    """The level-wise bins (``(alpha, beta)``) best first for PSNR at the rate of a pure
    predictor stream of ``volume`` at bound ``e`` with one bin width (a trial on sample
    blocks: :func:`..compress.correction.levels.rank_levels`)."""
    step = _step_at(volume, e)
    if step is None:
        return [NO_LEVELS]
    return rank_levels(volume, step, OBJECTIVE_QUALITY,
                       DEFAULT_BLOCK, integer=volume.dtype.kind in "iu", order=order)


def order_for(volume: np.ndarray, e: float) -> int:
    """The axis order of a volume's pure predictor streams (chosen once, at bound ``e``:
    sizes fall with the bound only while it stays the same)."""
    step = _step_at(volume, e)
    if step is None:
        return DEFAULT_ORDER
    return choose_order(volume, step, DEFAULT_BLOCK)


def _rounded(quality: float) -> Optional[float]:
    return round(quality, 3) if math.isfinite(quality) else None


def search_bound(file_at: Callable[[float], Optional[bytes]], data_range: float,
                 budget: int, bounds: Optional[Tuple[float, float]] = None,
                 start: Optional[float] = None) -> Tuple[Optional[bytes], float]:
    """The file of the smallest bound found whose ``file_at(bound)`` fits ``budget``, in
    log(size) against log(bound) (sizes fall as bounds grow, not strictly): from ``start``
    (default: the largest bound), steps along :data:`ASSUMED_SLOPE` (then the secant of
    the last two trials) until the budget is bracketed, then regula falsi. ``(None, nan)``
    when the largest bound does not fit. ``bounds``: the smallest and largest bound
    searched (default: ``MIN_REL_BOUND`` and ``MAX_REL_BOUND`` of ``data_range``)."""
    span = data_range if data_range > 0 else 1.0
    lo_t, hi_t = math.log(span * MIN_REL_BOUND), math.log(span * MAX_REL_BOUND)
    if bounds is not None:
        lo_t, hi_t = math.log(bounds[0]), math.log(bounds[1])
    if budget <= 0:
        return None, math.nan       # no file is that small
    target = math.log(budget * (1.0 - FILL_TOLERANCE / 2))
    t = hi_t if start is None else min(max(math.log(start), lo_t), hi_t)
    best: Optional[bytes] = None
    best_e = math.nan
    # Brackets: (log bound, log size) of the smallest bound that fits and of the largest
    # one below it that does not.
    fit_pt: Optional[Tuple[float, float]] = None
    over_pt: Optional[Tuple[float, float]] = None
    trials: List[Tuple[float, float]] = []
    sides: list = []        # which end each bracketed trial moved (True: the fitting one)
    for _ in range(MAX_BOUND_TRIALS):
        data = file_at(math.exp(t))
        fits = data is not None and len(data) <= budget
        s = math.log(len(data)) if data is not None else math.log(budget) + 1.0
        trials.append((t, s))
        if fits and (fit_pt is None or t < fit_pt[0]):
            fit_pt, best, best_e = (t, s), data, math.exp(t)
            if over_pt is not None and over_pt[0] >= t:
                over_pt = None      # sizes not monotone here: bracket anew below
        elif not fits:
            if t >= hi_t and fit_pt is None:
                return None, math.nan       # even the largest bound is over the budget
            if (fit_pt is None or t < fit_pt[0]) and (over_pt is None or t > over_pt[0]):
                over_pt = (t, s)
        if best is not None and len(best) >= budget * (1.0 - FILL_TOLERANCE):
            break
        if fit_pt is not None and over_pt is not None:
            if fit_pt[0] - over_pt[0] < _SAME_BOUND:
                break       # bracketed to within the bounds' resolution
            sides.append(fits)
            (t1, s1), (t2, s2) = over_pt, fit_pt
            t = t2 + (target - s2) * (t1 - t2) / (s1 - s2) if s1 != s2 else 0.5 * (t1 + t2)
            width = t2 - t1
            t = min(max(t, t1 + _MIN_STEP * width), t2 - _MIN_STEP * width)
            if len(sides) >= 2 and sides[-2:] == [sides[-1]] * 2:
                # Two trials moved the same end: a curved size curve that regula falsi
                # approaches from one side only; halve the bracket instead.
                t = 0.5 * (t1 + t2)
            continue
        # Not bracketed yet: step towards the budget along the secant of the last two
        # trials where they slope as sizes do, else along the assumed slope.
        slope = ASSUMED_SLOPE
        if len(trials) >= 2:
            (ta, sa), (tb, sb) = trials[-2], trials[-1]
            if tb != ta and (sa - sb) / (tb - ta) > _MIN_SLOPE:
                slope = (sa - sb) / (tb - ta)
        move = (s - target) / slope
        move = math.copysign(min(max(abs(move), _MIN_MOVE), _MAX_MOVE), move)
        nxt = min(max(t + move, lo_t), hi_t)
        if nxt == t:
            break           # at the end of the range already
        t = nxt
    if best is None and t < hi_t:
        # Out of trials below the budget's bound: the largest bound, if anything fits.
        data = file_at(math.exp(hi_t))
        if data is not None and len(data) <= budget:
            return data, math.exp(hi_t)
        return None, math.nan
    return best, best_e
