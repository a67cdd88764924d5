"""``encode(psnr=)``: the smallest file that reaches a PSNR, by a search over ratios."""
from __future__ import annotations

import logging
import math
import time
import warnings
from typing import Any, Callable, Dict, List, Tuple

from ..errors import NeurvolBudgetError, NeurvolInputError
from ..neural_volume import NeuralVolume
from ..volume_checks import check_ratio

log = logging.getLogger("neurvol")

#: Encodes a psnr= search may run, and the ratios it stays within.
PSNR_SEARCH_TRIALS = 6
PSNR_TOLERANCE_DB = 0.5
_PSNR_RATIOS = (1.5, 100000.0)
#: Starting slope of PSNR against log2(ratio), dB per doubling (neural codecs: ~3-6).
_PSNR_SLOPE = -4.0
#: Flattest slope the secant may take, dB per doubling (a flatter one jumps too far).
_MIN_SLOPE = -0.5
#: Trial points closer than this in log2(ratio) count as the same.
_SAME_X = 1e-3

#: ``encode(volume, ratio, **kwargs)``.
Encoder = Callable[..., NeuralVolume]


def encode_to_psnr(encode: Encoder, volume: Any, target: float, ratio: float,
                   kwargs: Dict[str, Any]) -> NeuralVolume:
    """The smallest file whose PSNR reaches ``target``: a secant search on log2(ratio),
    starting at ``ratio``, each trial ``encode(volume, ratio, **kwargs)``."""
    if isinstance(target, bool) or not isinstance(target, (int, float)) or not math.isfinite(target):
        raise NeurvolInputError(f"psnr must be a finite number of dB, got {target!r}")
    ratio = check_ratio(ratio)
    t_start = time.perf_counter()
    tried: List[Tuple[float, float, NeuralVolume]] = []   # (log2 ratio, psnr, volume)
    x = math.log2(min(max(ratio, _PSNR_RATIOS[0]), _PSNR_RATIOS[1]))
    lo_x, hi_x = math.log2(_PSNR_RATIOS[0]), math.log2(_PSNR_RATIOS[1])
    for _ in range(PSNR_SEARCH_TRIALS):
        try:
            nv = encode(volume, 2.0 ** x, **kwargs)
            got = nv.fit_psnr
        except NeurvolBudgetError:
            hi_x = min(hi_x, x)          # too small a budget for any model: go bigger
            x = (x + lo_x) / 2 if not tried else min(t[0] for t in tried) - 1
            continue
        log.info("encode(psnr=%.2f): ratio %.1f gives %.2f dB", target, 2.0 ** x, got)
        tried.append((x, got, nv))
        if target <= got <= target + PSNR_TOLERANCE_DB or got == math.inf:
            break
        if got >= target:
            lo_x = max(lo_x, x)
        else:
            hi_x = min(hi_x, x)
        if len(tried) >= 2 and tried[-1][1] != tried[-2][1]:
            (x1, p1, _), (x2, p2, _) = tried[-2], tried[-1]
            slope = min((p2 - p1) / (x2 - x1), _MIN_SLOPE) if x2 != x1 else _PSNR_SLOPE
        else:
            slope = _PSNR_SLOPE
        # Aim a little above the target so the step lands inside the tolerance band.
        nxt = x + (target + PSNR_TOLERANCE_DB / 2 - got) / slope
        if not lo_x < nxt < hi_x:          # keep inside the bracket found so far
            nxt = (lo_x + hi_x) / 2
        if any(abs(nxt - t[0]) < _SAME_X for t in tried):
            break
        x = nxt
    if not tried:
        raise NeurvolBudgetError("no ratio tried could hold a model of this volume; give ratio= instead")
    ok = [t for t in tried if t[1] >= target]
    if ok:
        best = max(ok, key=lambda t: t[0])[2]
    else:
        best = max(tried, key=lambda t: t[1])[2]
        warnings.warn(f"encode(psnr={target}): the best PSNR found is {best.fit_psnr:.2f} dB "
                      f"(ratio {best.ratio:.1f}); more steps or another arch may reach the target",
                      stacklevel=4)
    best.encode_seconds = time.perf_counter() - t_start
    return best
