"""How a bricked encode shares its byte budget among the bricks.

One streaming pass over the bricks measures each (value range, NaN check, mean and
spread, and a rate-distortion probe: the error of resampling the brick through grids of
a few sizes); the model bytes are then split to minimise the predicted error of the
volume (:func:`rd_shares`) and rounded to model-size tiers (:func:`split_budget`), so a
file holds few distinct configs.
"""
from __future__ import annotations

import dataclasses
import heapq
import math
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np

from ..errors import NeurvolBudgetError, NeurvolInputError
from ..volume_checks import MAX_AXIS, MAX_VOXELS
from .geometry import BrickLayout
from .source import read_block

#: Per-brick budgets are rounded down to tiers 2^(1/4) apart for sizing the model (the
#: byte budget itself stays exact), so a file holds few distinct configs.
TIERS_PER_OCTAVE = 4
#: Bytes of a tensors payload outside the weights (kind byte, zstd frame, record headers).
PAYLOAD_OVERHEAD = 32


@dataclasses.dataclass
class BrickStats:
    lo: float
    hi: float
    mean: float
    std: float
    voxels: int       # extent voxels (ghosts included)
    core: int         # owned voxels
    # Rate-distortion probe: MSE on the core (original units) of the extent resampled
    # through a grid of RD_LADDER[i] * ``probe`` vertices (see rd_shares).
    rd: List[float]


def check_array_like(volume: Any) -> Tuple[Tuple[int, int, int], np.dtype]:
    """Shape/dtype checks of ``check_volume`` without reading any voxel."""
    if not (hasattr(volume, "shape") and hasattr(volume, "dtype") and hasattr(volume, "__getitem__")):
        raise NeurvolInputError(
            f"cannot read {type(volume).__name__} brick by brick: pass a numpy array, memmap, "
            "h5py dataset or an array-like with shape, dtype and slicing")
    shape = tuple(int(s) for s in volume.shape)
    if len(shape) != 3:
        raise NeurvolInputError(f"expected a 3-D volume indexed [z, y, x], got shape {shape}")
    if min(shape) < 2:
        raise NeurvolInputError(f"every axis needs at least 2 voxels, got shape {shape}")
    if max(shape) > MAX_AXIS or math.prod(shape) > MAX_VOXELS:
        raise NeurvolInputError(f"shape {shape} is too large for an .nvol volume")
    dtype = np.dtype(volume.dtype)
    if dtype.kind not in "iuf":
        raise NeurvolInputError(
            f"dtype {dtype} is not supported; neurvol compresses integer and float volumes "
            "(convert booleans with .astype(np.uint8))")
    return shape, dtype  # type: ignore[return-value]


def scan_bricks(volume: Any, layout: BrickLayout, probe: float) -> List[BrickStats]:
    """Read each brick's extent once (one at a time) and measure it: value range, NaN
    check, mean and spread, and the rate-distortion probe (``probe`` vertices: see
    :func:`rd_shares`)."""
    stats = []
    for b in range(layout.count):
        sl = layout.extent_slices(b)
        block = read_block(volume, sl).astype(np.float64)
        if not np.isfinite(block).all():
            bad = int(np.count_nonzero(~np.isfinite(block)))
            raise NeurvolInputError(
                f"the volume contains {bad} NaN or infinite values in brick {b} (voxels "
                f"{[(s.start, s.stop - 1) for s in sl]}); replace them (e.g. np.nan_to_num) "
                "before compressing")
        core = tuple(slice(c.start - e.start, c.stop - e.start)
                     for c, e in zip(layout.core_slices(b), sl))
        lo, hi = float(block.min()), float(block.max())
        rd = [0.0] * len(RD_LADDER) if lo == hi else _resample_mse(block, core, probe)
        stats.append(BrickStats(lo, hi, float(block.mean()), float(block.std()), block.size,
                                int(block[core].size), rd))
        del block
    return stats


#: Vertex counts of the rate-distortion probe, as multiples of the mean per-brick count.
RD_LADDER = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0)


def _resample_mse(block: np.ndarray, core: Tuple[slice, slice, slice], probe: float
                  ) -> List[float]:
    """MSE on ``core`` of ``block`` resampled (trilinear, down and up) through grids of
    ``probe * RD_LADDER[i]`` vertices shaped like the block."""
    import torch
    import torch.nn.functional as F

    mid = 0.5 * (float(block.max()) + float(block.min()))
    t = torch.from_numpy((block - mid).astype(np.float32))[None, None]
    orig = block[core] - mid
    shape = np.array(block.shape, dtype=np.float64)
    out = []
    with torch.inference_mode():
        for f in RD_LADDER:
            s = (probe * f / shape.prod()) ** (1.0 / 3.0)
            grid = [int(min(n, max(2, round(n * s)))) for n in block.shape]
            up = F.interpolate(F.interpolate(t, size=grid, mode="trilinear", align_corners=True),
                               size=block.shape, mode="trilinear", align_corners=True)
            err = up[0, 0].numpy()[core].astype(np.float64) - orig
            out.append(float(np.mean(err * err)))
    return out


def _power_laws(stats: Sequence[BrickStats]) -> Tuple[np.ndarray, np.ndarray]:
    """``(a, log c)`` per brick: the line ``log mse = log c - a log x`` fitted (least
    squares) through the brick's probe over RD_LADDER, ``a`` clamped to [0.05, 2]."""
    logx = np.log(np.array(RD_LADDER))
    mse = np.array([s.rd for s in stats], dtype=np.float64)
    tiny = max(float(mse.max()), 1e-300) * 1e-12
    logm = np.log(np.maximum(mse, tiny))
    xc = logx - logx.mean()
    slope = (logm - logm.mean(axis=1, keepdims=True)) @ xc / float(xc @ xc)
    a = np.clip(-slope, 0.05, 2.0)
    return a, logm.mean(axis=1) + a * logx.mean()          # log mse at x = 1


#: How much wider the fitted models' errors spread across bricks than the probe's, as a
#: power of the probe's error: a model beats resampling by more on a smooth brick than on
#: a rough one, so the probe alone under-serves the hardest bricks (BENCHMARKS.md,
#: "bricked ensembles against one model").
FIT_SPREAD = 1.5


def rd_shares(stats: Sequence[BrickStats], floor: float, spread: float = FIT_SPREAD
              ) -> np.ndarray:
    """Shares of the model bytes that minimise the expected squared error of the volume.

    Each brick's error is modelled from its probe as ``c_b * x^-a_b`` (``x``: its share of
    the vertices relative to the mean; :func:`_power_laws`), its difficulty ``c_b``
    widened to the fitted models' spread (``c_b^spread``, relative to the bricks' geometric
    mean), weighted by the brick's core voxels. The minimum of the sum under ``sum x = n``
    has equal marginal gains, ``x_b = (w_b c_b a_b / lam)^(1 / (a_b + 1))``; ``lam`` is
    found by bisection, each ``x_b`` kept >= ``floor`` (relative to the mean).
    (BENCHMARKS.md, "bricked ensembles".)
    """
    n = len(stats)
    if n == 0:
        return np.zeros(0)
    w = np.array([s.core for s in stats], dtype=np.float64)
    a, logc = _power_laws(stats)
    if not np.isfinite(logc).all() or max(max(s.rd) for s in stats) <= 0:
        return w / w.sum()
    logc = spread * (logc - logc.mean())
    logk = np.log(w) + logc + np.log(a)                  # log(w_b c_b a_b)
    floor = min(1.0, floor)

    def alloc(loglam: float) -> np.ndarray:
        return np.maximum(floor, np.exp((logk - loglam) / (a + 1.0)))

    lo_l, hi_l = float(logk.min()) - 200.0, float(logk.max()) + 200.0
    for _ in range(200):
        mid = 0.5 * (lo_l + hi_l)
        if alloc(mid).sum() > n:
            lo_l = mid
        else:
            hi_l = mid
    x = alloc(hi_l)
    return x / x.sum()


def predicted_mse(stats: Sequence[BrickStats], share: np.ndarray) -> float:
    """The probe's mean squared error over the bricks' voxels at ``share`` (original
    units): resampling's error, a few dB above what the models reach."""
    if len(stats) == 0:
        return 0.0
    w = np.array([s.core for s in stats], dtype=np.float64)
    a, logc = _power_laws(stats)
    x = np.maximum(share * len(stats), 1e-12)
    return float(np.sum(w * np.exp(logc - a * np.log(x))) / w.sum())


def tier_bytes(tier: int) -> int:
    return int(2.0 ** (tier / TIERS_PER_OCTAVE))


def split_budget(bricks: Sequence[int], share: np.ndarray, rest: int
                 ) -> Tuple[Dict[int, int], Dict[int, int]]:
    """Byte budgets and model-size tiers of the model bricks, from their shares of ``rest``.

    Each share is rounded down to a tier (the model is sized for the tier's bytes), which
    leaves on average ~9 % of the bytes unused. Those bytes raise the tiers of the bricks
    furthest below their share, one step at a time while the next step fits (largest
    remainder); what is left after that is spread over the bricks in proportion to their
    tier bytes (it buys finer quantization). Budgets sum to at most ``rest``.
    """
    tiers: Dict[int, int] = {}
    target: Dict[int, float] = {}
    for n, b in enumerate(bricks):
        target[b] = float(share[n]) * rest
        avail = int(target[b]) - PAYLOAD_OVERHEAD
        if avail < 1:
            raise NeurvolBudgetError(
                f"brick {b}'s share of the budget is {int(target[b])} bytes, too small for a "
                "model; use a smaller ratio or fewer, larger bricks")
        tiers[b] = int(math.floor(math.log2(avail) * TIERS_PER_OCTAVE))

    def size(tier: int) -> int:
        return tier_bytes(tier) + PAYLOAD_OVERHEAD

    left = rest - sum(size(t) for t in tiers.values())
    # Most under-served first: the largest target / size; a brick whose next step does not
    # fit now never will (steps only grow), so it leaves the heap.
    heap = [(-target[b] / size(t), b) for b, t in tiers.items()]
    heapq.heapify(heap)
    while heap and left > 0:
        _, b = heapq.heappop(heap)
        cost = size(tiers[b] + 1) - size(tiers[b])
        if cost <= left:
            left -= cost
            tiers[b] += 1
            heapq.heappush(heap, (-target[b] / size(tiers[b]), b))
    total = sum(size(t) for t in tiers.values())
    budgets = {b: size(t) + (max(left, 0) * size(t)) // max(total, 1) for b, t in tiers.items()}
    return budgets, tiers

