"""Encode a volume as a bricked ensemble (format 1.1, ``spec/bricks.md``).

Steps: one streaming pass over the bricks (value range, NaN check, per-brick statistics);
constant or near-constant bricks become constant payloads; the byte budget left after
the header, index and constants is split over the other bricks by measured difficulty;
each such brick gets the largest model its share affords (configs are solved per budget
tier, so a file holds few distinct configs); the bricks are fitted as independent jobs
(in-process, local process pool or Dask); the client assembles the file.
"""
from __future__ import annotations

import dataclasses
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
from .source import read_block, source_spec

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
#: Fraction of the model bytes shared uniformly; the rest follows brick difficulty.
_UNIFORM_SHARE = 0.3
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
    grad: float       # RMS finite difference per voxel step (original units)
    voxels: int


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


def scan_bricks(volume: Any, layout: BrickLayout) -> List[BrickStats]:
    """Read each brick's extent once (one at a time) and measure it."""
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
        sq, cnt = 0.0, 0
        for axis in range(3):
            if block.shape[axis] > 1:
                d = np.diff(block, axis=axis)
                sq += float(np.sum(d * d))
                cnt += d.size
        stats.append(BrickStats(float(block.min()), float(block.max()), float(block.mean()),
                                float(block.std()), math.sqrt(sq / max(cnt, 1)), block.size))
        del block
    return stats


def encode_bricked(volume: Any, *, ratio: float, grid: Tuple[int, int, int], ghost: int,
                   blend: bool, candidates: Sequence[Any], arch_options: Dict[str, Any],
                   seed: int, device: str, devices: Optional[Sequence[str]],
                   steps: Optional[int], bits: int, spacing: List[float], origin: List[float],
                   fit_settings: Optional[Dict[str, Any]], quiet: bool, workers: Optional[int],
                   executor: Any, retries: int, const_psnr: float) -> Any:
    """See :func:`neurvol.encode` (``brick``/``bricks`` arguments)."""
    from ..api import (_CODEC, DEFAULT_STEPS, MAX_LEVELS, _solve_config,  # lazy: api imports us
                       _with_fit_settings)
    from ..fit import FitSettings
    from ..neural_volume import NeuralVolume

    t_start = time.perf_counter()
    shape, dtype = check_array_like(volume)
    layout = BrickLayout.checked(shape, grid, ghost, blend)
    stats = scan_bricks(volume, layout)
    lo = min(s.lo for s in stats)
    hi = max(s.hi for s in stats)
    if max(abs(lo), abs(hi), hi - lo) > FLOAT32_MAX:
        raise NeurvolInputError(
            f"the volume's values [{lo:g}, {hi:g}] exceed the float32 range that decoding "
            "computes in; rescale it first")
    nbytes = math.prod(shape) * dtype.itemsize
    budget = int(nbytes // ratio)
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
        "codec": _CODEC,
        "budget": {"ratio": ratio, "bytes": budget},
        "writer": f"neurvol {__version__}",
    }

    # ---- budget: overhead, constants, then difficulty-weighted shares of the rest
    voxels = np.array([stats[b].voxels for b in model_bricks], dtype=np.float64)
    diff = np.array([stats[b].voxels * (stats[b].grad + 0.1 * stats[b].std) / rng
                     for b in model_bricks], dtype=np.float64)
    share = np.zeros(len(model_bricks))
    if model_bricks:
        share = _UNIFORM_SHARE * voxels / voxels.sum()
        share += (1.0 - _UNIFORM_SHARE) * (diff / diff.sum() if diff.sum() > 0 else voxels / voxels.sum())
    nominal = layout.max_extent_shape()
    n_const = layout.count - len(model_bricks)
    overhead = _overhead(header, layout.count)
    assigned: Dict[int, Tuple[Any, Any]] = {}
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
        budgets = {b: int(math.floor(share[n] * rest)) for n, b in enumerate(model_bricks)}
        assigned = _assign_configs(budgets, candidates, nominal, bits, arch_options,
                                   _solve_config)
        models, ids = _config_table(assigned, layout.count)
        _set_models(header, models, ids)
        new = _overhead(header, layout.count)
        if new <= overhead:
            break
        overhead = new
    else:
        raise NeurvolBudgetError("could not size the bricks' header; use fewer bricks")

    # ---- jobs
    per_arch: Dict[str, FitSettings] = {}
    total_voxels = float(math.prod(shape))
    spec = source_spec(volume)
    devs = list(devices) if devices else [device]
    jobs: List[BrickJob] = []
    for b in model_bricks:
        architecture, config = assigned[b]
        if architecture.name not in per_arch:
            s = dataclasses.replace(FitSettings(steps=DEFAULT_STEPS), **architecture.fit_defaults)
            if fit_settings:
                s = _with_fit_settings(s, fit_settings)
            if steps is not None:
                s = dataclasses.replace(s, steps=steps)
            per_arch[architecture.name] = s
        s = per_arch[architecture.name]
        # Scale the batch with the brick: every brick sees as many passes over its voxels as a
        # whole-volume fit would, so all bricks together cost about one (smaller-model) fit.
        batch = int(min(s.batch, max(_MIN_BATCH, round(s.batch * stats[b].voxels / total_voxels))))
        ext = layout.extent(b)
        core = tuple((c.start - e[0], c.stop - e[0]) for c, e in zip(layout.core_slices(b), ext))
        jobs.append(BrickJob(
            brick=b, arch=architecture.name, config=config.to_dict(),
            fit=dataclasses.asdict(dataclasses.replace(s, batch=batch)),
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


def _overhead(header: Dict[str, Any], count: int) -> int:
    probe = dict(header, fit=_FIT_PLACEHOLDER)
    return len(serialize_nvol(probe, [b""] * count, minor=BRICKED_MINOR))


def _assign_configs(budgets: Dict[int, int], candidates: Sequence[Any],
                    nominal: Tuple[int, int, int], bits: int, options: Dict[str, Any],
                    solve: Any) -> Dict[int, Tuple[Any, Any]]:
    """(architecture, config) per model brick: the first candidate architecture that fits
    the brick's budget rounded down to its tier."""
    cache: Dict[int, Tuple[Any, Any]] = {}
    out = {}
    for b, nbytes in budgets.items():
        avail = nbytes - _PAYLOAD_OVERHEAD
        if avail <= 0:
            raise NeurvolBudgetError(
                f"brick {b}'s share of the budget is {nbytes} bytes, too small for a model; "
                "use a smaller ratio or fewer, larger bricks")
        tier = int(math.floor(math.log2(avail) * _TIERS_PER_OCTAVE))
        if tier not in cache:
            tier_bytes = int(2.0 ** (tier / _TIERS_PER_OCTAVE))
            last: Optional[Exception] = None
            for architecture in candidates:
                try:
                    cache[tier] = (architecture, solve(architecture, nominal, tier_bytes, bits, options))
                    break
                except NeurvolBudgetError as exc:
                    last = exc
            else:
                raise NeurvolBudgetError(
                    f"brick {b}'s share of the budget ({nbytes} bytes) is too small for any "
                    f"{'/'.join(a.name for a in candidates)} model; use a smaller ratio or fewer, "
                    f"larger bricks ({last})")
        out[b] = cache[tier]
    return out


def _config_table(assigned: Dict[int, Tuple[Any, Any]], count: int
                  ) -> Tuple[List[Dict[str, Any]], List[int]]:
    models: List[Dict[str, Any]] = []
    index: Dict[str, int] = {}
    ids = [0] * count
    import json
    for b in sorted(assigned):
        architecture, config = assigned[b]
        entry = {"arch": architecture.name, "config": config.to_dict()}
        key = json.dumps(entry, sort_keys=True)
        if key not in index:
            index[key] = len(models)
            models.append(entry)
        ids[b] = index[key]
    return models, ids


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
