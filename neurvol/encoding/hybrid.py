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
from typing import Any, Callable, Dict, Optional, Tuple

import numpy as np

from ..compress import encode_constant
from ..compress.correction import (BoundTooSmallError, CorrectionStream, block_slices,
                                   encode_correction)
from ..compress.correction.encode import ENCODE_BATCH_VOXELS
from ..container import NvolReader
from ..errors import NeurvolInputError
from ..metrics import psnr
from ..neural_volume import NeuralVolume
from .bounded import bounded_file
from .plan import CODEC, FIT_PLACEHOLDER, HYBRID_KEY

log = logging.getLogger("neurvol")

#: Correction-stream encodes the bound search may run (each a numpy pass over the volume).
MAX_BOUND_TRIALS = 10
#: The search stops at a file within this fraction below the budget (bytes left unused).
FILL_TOLERANCE = 0.03
#: Bounds searched, as fractions of the data range: the smallest is near float32 rounding
#: of most fields, the largest codes almost nothing.
MIN_REL_BOUND, MAX_REL_BOUND = 1e-7, 0.5
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
    streams: Dict[float, bytes] = {}

    def file_at(e: float, fit: Optional[Dict[str, Any]] = None) -> Optional[bytes]:
        if x.dtype.kind in "iu":
            # Integers are within floor(E) whatever E is: one stream per integer bound.
            e = float(math.floor(e))
        if e not in streams:
            try:
                streams[e], _ = encode_correction(x, e, None)
            except BoundTooSmallError:
                return None
        return bounded_file(base_header, constant, streams[e], e, None,
                            extra=dict(extra, fit=fit or _FIT_PLACEHOLDER))

    data, e = search_bound(file_at, hi - lo, budget)
    if data is None:
        return None
    if x.dtype.kind in "iu":
        e = float(math.floor(e))
    quality = psnr(x, _decoded(streams[e], x.shape, x.dtype))
    # The PSNR goes into the header (as a model's fit PSNR does) so psnr= searches and
    # info() see it; the search accounted for these bytes with a placeholder.
    final = file_at(e, {"psnr": _rounded(quality)})
    if final is not None and len(final) <= budget:
        data = final      # else the PSNR's digits did not fit: the placeholder's file
    log.info("encode: pure predictor at max_error %g: %d bytes, %.2f dB", e, len(data), quality)
    out = NeuralVolume(NvolReader(data))
    out.bounded_choice = {"model_ratio": None}      # as an error-bounded encode reports it
    return Candidate(out, quality, "predictor")


def _decoded(stream: bytes, shape: Tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """A pure predictor stream decoded as a reader decodes its file (the cast, then the
    exceptions), a batch of blocks at a time: no float64 copy of the whole volume."""
    cs = CorrectionStream(stream, shape, dtype)
    out = np.empty(shape, dtype=dtype)
    per = max(1, ENCODE_BATCH_VOXELS // cs.block ** 3)
    for first in range(0, cs.nblocks, per):
        for dec in cs.decode_blocks(range(first, min(first + per, cs.nblocks))):
            for j, i in enumerate(dec.ids):
                out[block_slices(shape, cs.block, i)] = dec.values(j, None, dtype)
    return out


def _rounded(quality: float) -> Optional[float]:
    return round(quality, 3) if math.isfinite(quality) else None


def search_bound(file_at: Callable[[float], Optional[bytes]], data_range: float,
                 budget: int) -> Tuple[Optional[bytes], float]:
    """The file of the smallest bound found whose ``file_at(bound)`` fits ``budget``:
    regula falsi on log(size) against log(bound), bracketed (sizes fall as bounds grow,
    not strictly). ``(None, nan)`` when the largest bound does not fit."""
    span = data_range if data_range > 0 else 1.0
    lo_t, hi_t = math.log(span * MIN_REL_BOUND), math.log(span * MAX_REL_BOUND)
    best = file_at(math.exp(hi_t))
    if best is None or len(best) > budget:
        return None, math.nan
    best_e = math.exp(hi_t)
    # Brackets: (log bound, log size) that fits / does not fit; the lower one starts open.
    fit_pt = (hi_t, math.log(len(best)))
    over_pt: Optional[Tuple[float, float]] = None
    target = math.log(budget * (1.0 - FILL_TOLERANCE / 2))
    for _ in range(MAX_BOUND_TRIALS - 1):
        if len(best) >= budget * (1.0 - FILL_TOLERANCE):
            break
        if over_pt is not None and fit_pt[0] - over_pt[0] < _SAME_BOUND:
            break       # bracketed to within the bounds' resolution
        if over_pt is None:
            t = 0.5 * (lo_t + fit_pt[0])
        else:
            (t1, s1), (t2, s2) = over_pt, fit_pt
            t = t2 + (target - s2) * (t1 - t2) / (s1 - s2) if s1 != s2 else 0.5 * (t1 + t2)
            lo_edge, hi_edge = sorted((t1, t2))
            width = hi_edge - lo_edge
            t = min(max(t, lo_edge + _MIN_STEP * width), hi_edge - _MIN_STEP * width)
        data = file_at(math.exp(t))
        if data is not None and len(data) <= budget:
            fit_pt, best, best_e = (t, math.log(len(data))), data, math.exp(t)
        else:
            over_pt = (t, math.log(len(data)) if data is not None else math.log(budget) + 1.0)
    return best, best_e
