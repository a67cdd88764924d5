"""Encode a volume as a bricked ensemble (format 1.1, ``spec/bricks.md``).

Steps: one streaming pass over the bricks (value range, NaN check, per-brick statistics
and a rate-distortion probe); constant or near-constant bricks become constant payloads;
the byte budget left after the header, index and constants is split over the other
bricks to minimise their predicted error; each such brick gets the largest model its
share affords (configs are solved per budget tier, so a file holds few distinct
configs); the bricks are fitted as independent jobs (in-process, local process pool or
Dask), a failed fit is redone with the next candidate architecture; the client
assembles the file.
"""
from __future__ import annotations

import dataclasses
import heapq
import json
import logging
import math
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .. import __version__
from ..compress import encode_constant
from ..container import NvolReader, serialize_nvol
from ..errors import NeurvolBudgetError, NeurvolInputError
from ..volume_checks import FLOAT32_MAX, MAX_AXIS, MAX_VOXELS
from .geometry import BrickLayout
from .job import BrickJob, brick_seed
from .executors import run_jobs
from .source import SpecReader, read_block, source_spec

log = logging.getLogger("neurvol")

#: Minor format version of bricked files (spec/bricks.md).
BRICKED_MINOR = 1
#: Torch threads per brick job. Fixed (not "all cores") so a job's float results, hence the
#: file's bytes, do not depend on the executor or the worker count.
JOB_THREADS = 1
#: Per-brick budgets are rounded down to tiers 2^(1/4) apart for sizing the model (the
#: byte budget itself stays exact), so a file holds few distinct configs.
_TIERS_PER_OCTAVE = 4
#: Bytes of a tensors payload outside the weights (kind byte, zstd frame, record headers).
_PAYLOAD_OVERHEAD = 32
#: Smallest share of a model brick: at least this many bytes (a small model fits) and
#: this fraction of the mean share, unless the mean share is smaller.
_MIN_SHARE_BYTES = 640
_MIN_SHARE_FRACTION = 0.1
#: The weight codec of bricks unless ``encode(codec=)`` says otherwise: k-means for every
#: tensor (v2 records, entropy coder chosen per stream), no Lorenzo grids, no fine-tuning.
#: Measured on 2x2x2 bricks of the 256^3 volumes at ratio 100 (1500 steps): the
#: single-model default (Lorenzo grids sized at 4 bits/value, fine-tuning) lost 1.6 dB on
#: sim_richtmyer_meshkov_t20 (34.32 -> 32.76 dB; its most turbulent brick fell from 29.9 to
#: 16.2 dB, the grid step search ending far too coarse) and gained 0.1 dB on bio_embryo.
BRICK_CODEC = {"grids": "kmeans", "finetune": 0.0}
#: Fits shorter than this are never judged failed (see the jobs loop).
_MIN_JUDGED_STEPS = 200
#: Failed fits of bricks whose error is below this fraction of the probe's predicted mean
#: error are not redone (see encode_bricked).
_NEGLIGIBLE = 0.25
_FIT_PLACEHOLDER = {"steps": 10 ** 12, "k": 65536, "psnr": -999.999}
#: Exact PSNR (a full decode) up to this many voxels; above, the bricks' own estimate.
EXACT_PSNR_VOXELS = 1 << 24
_MIN_BATCH = 1024


@dataclasses.dataclass
class BrickStats:
    lo: float
    hi: float
    mean: float
    std: float
    voxels: int       # extent voxels (ghosts included)
    core: int         # owned voxels
    # Rate-distortion probe: MSE on the core (original units) of the extent resampled
    # through a grid of RD_LADDER[i] * ``probe`` vertices (see _rd_shares).
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
    :func:`_rd_shares`)."""
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


def _rd_shares(stats: Sequence[BrickStats], floor: float) -> np.ndarray:
    """Shares of the model bytes that minimise the expected squared error of the volume.

    Each brick's error is modelled from its probe as ``c_b * x^-a_b`` (``x``: its share of
    the vertices relative to the mean; :func:`_power_laws`), weighted by the brick's core
    voxels. The minimum of the sum under ``sum x = n`` has equal marginal gains,
    ``x_b = (w_b c_b a_b / lam)^(1 / (a_b + 1))``; ``lam`` is found by bisection, each
    ``x_b`` kept >= ``floor`` (relative to the mean). Measured at ratio 100: the former
    split (30 % by voxels, 70 % by RMS gradient) lost 0.5 dB to a split by voxel count on
    sim_richtmyer_meshkov_t20[::2] (2x2x2); on 4x4x4 bricks of bio_embryo, whose
    near-empty bricks need few bytes, this probe predicts +2.5 dB over a split by voxels.
    """
    n = len(stats)
    if n == 0:
        return np.zeros(0)
    w = np.array([s.core for s in stats], dtype=np.float64)
    a, logc = _power_laws(stats)
    if not np.isfinite(logc).all() or max(max(s.rd) for s in stats) <= 0:
        return w / w.sum()
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


def _predicted_mse(stats: Sequence[BrickStats], share: np.ndarray) -> float:
    """The probe's mean squared error over the bricks' voxels at ``share`` (original
    units): resampling's error, a few dB above what the models reach."""
    if len(stats) == 0:
        return 0.0
    w = np.array([s.core for s in stats], dtype=np.float64)
    a, logc = _power_laws(stats)
    x = np.maximum(share * len(stats), 1e-12)
    return float(np.sum(w * np.exp(logc - a * np.log(x))) / w.sum())


def encode_bricked(volume: Any, *, ratio: float, grid: Tuple[int, int, int], ghost: int,
                   blend: bool, candidates: Sequence[Any], arch_options: Dict[str, Any],
                   seed: int, device: str, devices: Optional[Sequence[str]],
                   steps: Optional[int], bits: int, spacing: List[float], origin: List[float],
                   fit_settings: Optional[Dict[str, Any]], codec: Any, quiet: bool,
                   workers: Optional[int], executor: Any, retries: int,
                   const_psnr: float) -> Any:
    """See :func:`neurvol.encode` (``brick``/``bricks`` arguments). ``codec``: the
    ``encode(codec=)`` dict (:class:`neurvol.pipeline.CodecSettings` fields) every brick's
    weights go through; default :data:`BRICK_CODEC`."""
    from ..api import (_CODEC, _WIDEST_PIPELINE, DEFAULT_STEPS,  # lazy: api imports us
                       _codec_settings, _solve_config, _with_fit_settings)
    from ..pipeline import MAX_LEVELS, CodecSettings

    codec = CodecSettings(**BRICK_CODEC) if codec is None else _codec_settings(codec)
    from ..fit import FitSettings
    from ..neural_volume import NeuralVolume

    t_start = time.perf_counter()
    shape, dtype = check_array_like(volume)
    layout = BrickLayout.checked(shape, grid, ghost, blend)
    budget = int(math.prod(shape) * dtype.itemsize // ratio)
    spec = source_spec(volume)
    if spec is not None:           # workers read the file themselves; so does the client
        volume = SpecReader(spec, shape, dtype)
    # Mean vertices per brick if every brick held a model (bits per value): the probe's scale.
    probe = max(8.0, budget * 8.0 / bits / layout.count)
    stats = scan_bricks(volume, layout, probe)
    lo = min(s.lo for s in stats)
    hi = max(s.hi for s in stats)
    if max(abs(lo), abs(hi), hi - lo) > FLOAT32_MAX:
        raise NeurvolInputError(
            f"the volume's values [{lo:g}, {hi:g}] exceed the float32 range that decoding "
            "computes in; rescale it first")
    rng = (hi - lo) or 1.0
    tol = 10.0 ** (-const_psnr / 20.0)
    constant = [s.hi == s.lo or s.std / rng <= tol for s in stats]
    model_bricks = [b for b in range(layout.count) if not constant[b]]

    bricks_hdr: Dict[str, Any] = {"grid": list(layout.grid), "ghost": layout.ghost,
                                  "blend": "linear" if layout.blend else "none"}
    header: Dict[str, Any] = {
        "volume": {"shape": list(shape), "dtype": dtype.str, "min": lo, "max": hi,
                   "spacing": spacing, "origin": origin},
        "bricks": bricks_hdr,
        "codec": dict(_CODEC, pipeline=_WIDEST_PIPELINE),     # sizing; the real list below
        "budget": {"ratio": ratio, "bytes": budget},
        "writer": f"neurvol {__version__}",
    }

    # ---- budget: overhead, constants, then rate-distortion shares of the rest
    uniform = budget / max(len(model_bricks), 1)
    floor = max(_MIN_SHARE_BYTES, _MIN_SHARE_FRACTION * uniform) / uniform
    share = _rd_shares([stats[b] for b in model_bricks], floor)
    # A brick whose error is this small (normalized) hardly counts in the volume's: a fit
    # of it is never redone (job.py). Without it, 13 of the 64 bricks of bio_embryo
    # (4x4x4), near-empty and fitted to 40-50 dB, were refitted twice for nothing.
    negligible = _NEGLIGIBLE * _predicted_mse([stats[b] for b in model_bricks], share) / rng ** 2
    nominal = layout.max_extent_shape()
    n_const = layout.count - len(model_bricks)
    overhead = _overhead(header, layout.count)
    options: Dict[int, List[Tuple[Any, Any]]] = {}
    budgets: Dict[int, int] = {}
    for _round in range(4):
        rest = budget - overhead - 9 * n_const
        if model_bricks and rest <= 0:
            raise NeurvolBudgetError(
                f"the budget of {budget} bytes does not even cover the header and brick index "
                f"({overhead} bytes); use a smaller ratio or fewer, larger bricks")
        if not model_bricks and rest < 0:
            raise NeurvolBudgetError(
                f"the smallest bricked file is {overhead + 9 * n_const} bytes but the budget is "
                f"{budget}; use a smaller ratio or fewer bricks")
        budgets, tiers = split_budget(model_bricks, share, rest)
        options = _assign_configs(budgets, tiers, candidates, nominal, bits, arch_options,
                                  lambda *a: _solve_config(*a, codec))
        _reserve_models(header, options, layout.count)
        new = _overhead(header, layout.count)
        if new <= overhead:
            break
        overhead = new
    else:
        raise NeurvolBudgetError("could not size the bricks' header; use fewer bricks")

    # ---- jobs
    per_arch: Dict[str, FitSettings] = {}

    def settings_for(architecture: Any) -> FitSettings:
        if architecture.name not in per_arch:
            s = dataclasses.replace(FitSettings(steps=DEFAULT_STEPS), **architecture.fit_defaults)
            if fit_settings:
                s = _with_fit_settings(s, fit_settings)
            if steps is not None:
                s = dataclasses.replace(s, steps=steps)
            per_arch[architecture.name] = s
        return per_arch[architecture.name]

    total_voxels = float(math.prod(shape))
    devs = list(devices) if devices else [device]
    jobs: List[BrickJob] = []
    for b in model_bricks:
        fits = []
        for architecture, config in options[b]:
            s = settings_for(architecture)
            # Scale the batch with the brick: every brick sees as many passes over its voxels
            # as a whole-volume fit would, so all bricks together cost about one
            # (smaller-model) fit. Doubling it gained 0.02 dB (bio_embryo[::2], 2x2x2).
            batch = int(min(s.batch, max(_MIN_BATCH, round(s.batch * stats[b].voxels / total_voxels))))
            fits.append((architecture.name, config.to_dict(),
                         dataclasses.asdict(dataclasses.replace(s, batch=batch))))
        ext = layout.extent(b)
        core = tuple((c.start - e[0], c.stop - e[0]) for c, e in zip(layout.core_slices(b), ext))
        jobs.append(BrickJob(
            brick=b, arch=fits[0][0], config=fits[0][1], fit=fits[0][2],
            # arch="auto": a failed fit is redone with another seed (the same model), then
            # with the next candidate architecture (job.py). Short fits are not judged: at
            # 20 steps most fits are no better than resampling, and refits tripled the steps.
            fallbacks=list(fits) if len(candidates) > 1 and min(
                f[2]["steps"] for f in fits) >= _MIN_JUDGED_STEPS else [],
            negligible_mse=negligible, codec=dataclasses.asdict(codec),
            seed=brick_seed(seed, b), budget=budgets[b], k0=min(2 ** bits, MAX_LEVELS),
            lo=lo, hi=hi, extent=tuple((a, z + 1) for a, z in ext), core=core,  # type: ignore[arg-type]
            source=spec, device=str(devs[b % len(devs)]), threads=JOB_THREADS))
    log.info("encode: %d bricks %s (ghost %d), %d constant, %d models in %d configs, budget %d bytes",
             layout.count, layout.grid, layout.ghost, n_const, len(model_bricks),
             len(header["bricks"].get("models", [])), budget)

    def with_data(job: BrickJob) -> BrickJob:
        if job.source is None and job.data is None:
            job.data = np.array(read_block(volume, tuple(slice(a, z) for a, z in job.extent)))
        return job

    if workers is None:
        workers = len(devs) if devices else 1
    results = run_jobs(jobs, with_data, workers=workers, executor=executor, retries=retries,
                       quiet=quiet)

    # ---- assemble
    models, ids = _config_table({b: (r.arch, r.config) for b, r in results.items()},
                                layout.count)
    _set_models(header, models, ids)
    header["codec"] = dict(_CODEC, pipeline=_pipeline(models, codec))
    fallen = sum(1 for r in results.values() if r.tried > 1)
    if fallen:
        log.info("encode: %d brick(s) refitted after a failed fit (%d now use another "
                 "architecture)", fallen,
                 sum(1 for b, r in results.items() if r.arch != options[b][0][0].name))
    payloads: List[bytes] = []
    for b in range(layout.count):
        if constant[b]:
            s = stats[b]
            payloads.append(encode_constant(s.lo if s.lo == s.hi else min(max(s.mean, lo), hi)))
        else:
            payloads.append(results[b].payload)
    header["fit"] = dict(_FIT_PLACEHOLDER)
    data = serialize_nvol(header, payloads, minor=BRICKED_MINOR)
    if len(data) > budget:   # cannot happen: every share was checked; keep the promise anyway
        raise NeurvolBudgetError(
            f"the bricked file is {len(data)} bytes but the budget is {budget}; use a smaller ratio")
    total_steps = sum(r.steps for r in results.values())
    ks = [r.k for r in results.values()]
    if math.prod(shape) <= EXACT_PSNR_VOXELS:
        quality = _exact_psnr(volume, NeuralVolume(NvolReader(data)), layout, lo, hi)
    else:
        quality = _estimated_psnr(results, stats, constant, layout, volume, lo, hi)
    header["fit"] = {"steps": total_steps, "k": min(ks) if ks else 0,
                     "psnr": round(quality, 3) if math.isfinite(quality) else None}
    data = serialize_nvol(header, payloads, minor=BRICKED_MINOR)
    nv = NeuralVolume(NvolReader(data))
    nv.encode_seconds = time.perf_counter() - t_start
    return nv


def _pipeline(models: List[Dict[str, Any]], codec: Any) -> List[str]:
    """The header's ``codec.pipeline`` (informative): the stages of any brick's model."""
    from ..models import get_architecture

    stages: List[str] = []
    for entry in models:
        arch = get_architecture(entry["arch"])
        for stage in codec.pipeline(arch.build(arch.config_cls.from_dict(entry["config"]))):
            if stage not in stages:
                stages.append(stage)
    return stages


def _overhead(header: Dict[str, Any], count: int) -> int:
    probe = dict(header, fit=_FIT_PLACEHOLDER)
    return len(serialize_nvol(probe, [b""] * count, minor=BRICKED_MINOR))


def _tier_bytes(tier: int) -> int:
    return int(2.0 ** (tier / _TIERS_PER_OCTAVE))


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
        avail = int(target[b]) - _PAYLOAD_OVERHEAD
        if avail < 1:
            raise NeurvolBudgetError(
                f"brick {b}'s share of the budget is {int(target[b])} bytes, too small for a "
                "model; use a smaller ratio or fewer, larger bricks")
        tiers[b] = int(math.floor(math.log2(avail) * _TIERS_PER_OCTAVE))

    def size(tier: int) -> int:
        return _tier_bytes(tier) + _PAYLOAD_OVERHEAD

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


def _assign_configs(budgets: Dict[int, int], tiers: Dict[int, int], candidates: Sequence[Any],
                    nominal: Tuple[int, int, int], bits: int, options: Dict[str, Any],
                    solve: Any) -> Dict[int, List[Tuple[Any, Any]]]:
    """(architecture, config) options per model brick: the first candidate architecture
    whose model fits the brick's tier, then the other candidates that fit it (fitted only
    when the first fit fails, see ``job.FALLBACK_MARGIN_DB``). Bricks of a tier share
    configs, so a file holds few."""
    cache: Dict[int, List[Tuple[Any, Any]]] = {}
    out = {}
    for b, tier in tiers.items():
        if tier not in cache:
            found: List[Tuple[Any, Any]] = []
            last: Optional[Exception] = None
            for architecture in candidates:
                try:
                    found.append((architecture, solve(architecture, nominal, _tier_bytes(tier),
                                                      bits, options)))
                except NeurvolBudgetError as exc:
                    last = exc
            if not found:
                raise NeurvolBudgetError(
                    f"brick {b}'s share of the budget ({budgets[b]} bytes) is too small for any "
                    f"{'/'.join(a.name for a in candidates)} model; use a smaller ratio or fewer, "
                    f"larger bricks ({last})")
            cache[tier] = found
        out[b] = cache[tier]
    return out


def _config_table(used: Dict[int, Tuple[str, Dict[str, Any]]], count: int
                  ) -> Tuple[List[Dict[str, Any]], List[int]]:
    """The header's ``models`` (distinct entries, in brick order) and ``model_ids``."""
    models: List[Dict[str, Any]] = []
    index: Dict[str, int] = {}
    ids = [0] * count
    for b in sorted(used):
        arch, config = used[b]
        entry = {"arch": arch, "config": config}
        key = json.dumps(entry, sort_keys=True)
        if key not in index:
            index[key] = len(models)
            models.append(entry)
        ids[b] = index[key]
    return models, ids


def _reserve_models(header: Dict[str, Any], options: Dict[int, List[Tuple[Any, Any]]],
                    count: int) -> None:
    """Put the widest ``models``/``model_ids`` the finished file can have into the header
    (for sizing): every option's config, and every model brick's id as the largest id."""
    table, _ = _config_table({b: (o[0][0].name, o[0][1].to_dict()) for b, o in options.items()},
                             count)
    seen = {json.dumps(e, sort_keys=True) for e in table}
    for b in sorted(options):
        for architecture, config in options[b][1:]:
            entry = {"arch": architecture.name, "config": config.to_dict()}
            if json.dumps(entry, sort_keys=True) not in seen:
                seen.add(json.dumps(entry, sort_keys=True))
                table.append(entry)
    widest = [len(table) - 1 if b in options else 0 for b in range(count)]
    _set_models(header, table, widest)


def _set_models(header: Dict[str, Any], models: List[Dict[str, Any]], ids: List[int]) -> None:
    bricks = header["bricks"]
    bricks.pop("models", None)
    bricks.pop("model_ids", None)
    header.pop("model", None)
    if models:
        bricks["models"] = models
        bricks["model_ids"] = ids
        # A 1.0 reader looks at the top-level "model": with it, it refuses the file with
        # "upgrade neurvol" instead of misreading it.
        header["model"] = models[0]


def _exact_psnr(volume: Any, nv: Any, layout: BrickLayout, lo: float, hi: float) -> float:
    """PSNR of the decoded file (float32 values, as the single-model path reports it),
    brick core by brick core, so memory stays bounded by one brick."""
    from ..neural_volume import _IndexAxis

    sq = 0.0
    for b in range(layout.count):
        sl = layout.core_slices(b)
        orig = read_block(volume, sl).astype(np.float64)
        rec = np.empty(orig.shape, dtype=np.float32)
        axes = [_IndexAxis(np.arange(s.start, s.stop), n) for s, n in zip(sl, layout.shape)]
        nv._fill_grid(axes, rec, np.dtype(np.float32))
        sq += float(np.sum((orig - rec.astype(np.float64)) ** 2))
    mse = sq / math.prod(layout.shape)
    rng = (hi - lo) or 1.0
    return math.inf if mse == 0 else 10.0 * math.log10(rng * rng / mse)


def _estimated_psnr(results: Dict[int, Any], stats: List[BrickStats], constant: List[bool],
                    layout: BrickLayout, volume: Any, lo: float, hi: float) -> float:
    """PSNR from each model brick's error on its own voxels (no blending) plus the constant
    bricks' exact error; avoids a full decode of a large volume."""
    rng = (hi - lo) or 1.0
    sq = sum(r.sse for r in results.values()) * rng * rng
    for b, c in enumerate(constant):
        if c and stats[b].lo != stats[b].hi:
            core = read_block(volume, layout.core_slices(b)).astype(np.float64)
            value = min(max(stats[b].mean, lo), hi)
            sq += float(np.sum((core - value) ** 2))
    mse = sq / math.prod(layout.shape)
    return math.inf if mse == 0 else 10.0 * math.log10(rng * rng / mse)
