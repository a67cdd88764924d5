"""Encode a volume as a bricked ensemble (format 1.1, ``spec/bricks.md``).

Steps: one streaming pass over the bricks (value range, NaN check, per-brick statistics
and a rate-distortion probe); constant or near-constant bricks become constant payloads;
the byte budget left after the header, index and constants is split over the other
bricks to minimise their predicted error (:mod:`neurvol.ensemble.allocate`); each such
brick gets the largest model its share affords (configs are solved per budget tier, so a
file holds few distinct configs); the bricks are fitted as independent jobs
(:mod:`.brick_job`: the single-model routine; in-process, local process pool or Dask), a
failed fit is redone with the next candidate architecture; the client assembles the file.
"""
from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import json
import logging
import math
import time
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from ..compress import encode_constant
from ..container import NvolReader, serialize_nvol
from ..ensemble import BrickJob, BrickLayout, brick_seed, run_jobs
from ..ensemble.allocate import (BrickStats, check_array_like, predicted_mse, rd_shares,
                                 scan_bricks, split_budget, tier_bytes)
from ..ensemble.source import SpecReader, read_block, source_spec
from ..errors import NeurvolBudgetError, NeurvolInputError
from ..fit import FitSettings
from ..metrics import psnr_from_mse
from ..models import Architecture, ModelConfig, get_architecture
from ..neural_volume import NeuralVolume
from ..pipeline import MAX_LEVELS, CodecSettings
from ..volume_checks import FLOAT32_MAX
from .brick_job import release_freed_memory, run_brick_job
from .pilot import rate_candidates, rate_is_default
from .plan import (CODEC, FIT_PLACEHOLDER, WIDEST_PIPELINE, codec_settings, fit_settings_for,
                   solve_config, volume_header)

log = logging.getLogger("neurvol")

#: Minor format version of bricked files (spec/bricks.md).
BRICKED_MINOR = 1
#: Torch threads per brick job. Fixed (not "all cores") so a job's float results, hence the
#: file's bytes, do not depend on the executor or the worker count.
JOB_THREADS = 1
#: Smallest share of a model brick: at least this many bytes (a small model fits) and
#: this fraction of the mean share, unless the mean share is smaller.
_MIN_SHARE_BYTES = 640
_MIN_SHARE_FRACTION = 0.1
#: Fits shorter than this are never judged failed (see the jobs loop).
_MIN_JUDGED_STEPS = 200
#: Failed fits of bricks whose error is below this fraction of the probe's predicted mean
#: error are not redone (see encode_bricked).
_NEGLIGIBLE = 0.25
#: Exact PSNR (a full decode) up to this many voxels; above, the bricks' own estimate.
EXACT_PSNR_VOXELS = 1 << 24
#: Smallest batch of a brick's fit.
_MIN_BATCH = 1024
#: Bytes of a constant brick's payload.
CONSTANT_PAYLOAD_BYTES = len(encode_constant(0.0))
#: Bits per byte (the probe's scale counts grid values in the budget's bits).
_BITS_PER_BYTE = 8.0
#: Fewest vertices the rate-distortion probe resamples a brick through.
_MIN_PROBE_VERTICES = 8.0
#: Benchmarks of volumes too large to encode in full (``benchmarks/run_large.py``): at
#: most this many model bricks are fitted (the first ones in brick order, or those with
#: the largest budget shares), the others stored as their mean. Every brick keeps the
#: budget share and model of a full encode, so the fitted bricks cost (time, memory)
#: what they would in a full encode.
_BRICK_LIMIT: "contextvars.ContextVar[Optional[Tuple[int, bool]]]" = contextvars.ContextVar(
    "neurvol_brick_limit", default=None)
#: Rounds of sizing the header (its model table depends on the configs, and the configs
#: on the bytes the header leaves).
_SIZING_ROUNDS = 4


@contextlib.contextmanager
def partial_bricks(max_bricks: int, largest: bool = False) -> Iterator[None]:
    """Within this context a bricked encode fits only ``max_bricks`` of its model bricks
    and stores the others as constants (their mean): a partial file, for measuring the
    time and memory per brick of volumes too large to encode in full. The fitted bricks
    are the first ones in brick order, or with ``largest`` those with the largest budget
    shares (ties in brick order): the largest models, where a full encode's memory peaks.
    The encoded volume's ``partial_bricks`` attribute lists the fitted bricks."""
    if isinstance(max_bricks, bool) or not isinstance(max_bricks, int) or max_bricks < 1:
        raise NeurvolInputError(f"max_bricks must be a positive int, got {max_bricks!r}")
    token = _BRICK_LIMIT.set((max_bricks, bool(largest)))
    try:
        yield
    finally:
        _BRICK_LIMIT.reset(token)


def encode_bricked(volume: Any, *, ratio: float, grid: Tuple[int, int, int], ghost: int,
                   blend: bool, candidates: Sequence[Architecture], arch_options: Dict[str, Any],
                   seed: int, device: str, devices: Optional[Sequence[str]],
                   steps: Optional[int], bits: int, spacing: List[float], origin: List[float],
                   fit_settings: Optional[Dict[str, Any]], codec: Any, quiet: bool,
                   workers: Optional[int], executor: Any, retries: int,
                   const_psnr: float) -> NeuralVolume:
    """See :func:`neurvol.encode` (``brick``/``bricks`` arguments). ``codec``: the
    ``encode(codec=)`` dict (:class:`neurvol.pipeline.CodecSettings` fields) every brick's
    weights go through. As for a single model, a codec that leaves rate and sizing alone
    (or sets ``rate="auto"``) lets each brick choose between the default codec and
    rate-aware fitting by the pilot's rule (:func:`.pilot.pilot_keeps`)."""
    rated: Optional[CodecSettings] = None
    if rate_is_default(codec) or (isinstance(codec, dict) and isinstance(codec.get("rate"), str)):
        default_fields, rate_fields = rate_candidates({"rate": "auto", **(codec or {})})
        codec, rated = codec_settings(default_fields), codec_settings(rate_fields)
    else:
        codec = codec_settings(codec)

    t_start = time.perf_counter()
    shape, dtype = check_array_like(volume)
    layout = BrickLayout.checked(shape, grid, ghost, blend)
    budget = int(math.prod(shape) * dtype.itemsize // ratio)
    spec = source_spec(volume)
    if spec is not None:           # workers read the file themselves; so does the client
        volume = SpecReader(spec, shape, dtype)
    # Mean vertices per brick if every brick held a model (bits per value): the probe's scale.
    probe = max(_MIN_PROBE_VERTICES, budget * _BITS_PER_BYTE / bits / layout.count)
    stats = scan_bricks(volume, layout, probe)
    # The scan's float64 copies of each brick would otherwise stay in the C heap while
    # the client waits for its workers' fits.
    release_freed_memory()
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
    # The widest pipeline for sizing; the real list below.
    header = volume_header(shape, dtype, lo, hi, spacing, origin, bricks_hdr, ratio, budget,
                           codec_pipeline=WIDEST_PIPELINE)

    # ---- budget: overhead, constants, then rate-distortion shares of the rest
    uniform = budget / max(len(model_bricks), 1)
    floor = max(_MIN_SHARE_BYTES, _MIN_SHARE_FRACTION * uniform) / uniform
    share = rd_shares([stats[b] for b in model_bricks], floor)
    # A brick whose error is this small (normalized) hardly counts in the volume's: a fit
    # of it is never redone (brick_job.py): near-empty bricks would be refitted for
    # nothing.
    negligible = _NEGLIGIBLE * predicted_mse([stats[b] for b in model_bricks], share) / rng ** 2
    per_arch: Dict[str, FitSettings] = {}

    def settings_for(architecture: Architecture) -> FitSettings:
        if architecture.name not in per_arch:
            per_arch[architecture.name] = fit_settings_for(architecture, fit_settings, steps)
        return per_arch[architecture.name]

    # arch="auto": a failed fit is redone with another seed (the same model), then with
    # the next candidate architecture (brick_job.py). Short fits are not judged: most are
    # no better than resampling, and refits would multiply the steps.
    fallbacks_on = len(candidates) > 1 and min(
        settings_for(a).steps for a in candidates) >= _MIN_JUDGED_STEPS
    nominal = layout.max_extent_shape()
    n_const = layout.count - len(model_bricks)
    overhead = _overhead(header, layout.count)
    options: Dict[int, List[Tuple[Any, Any]]] = {}
    pilots: Dict[int, ModelConfig] = {}
    budgets: Dict[int, int] = {}
    for _round in range(_SIZING_ROUNDS):
        rest = budget - overhead - CONSTANT_PAYLOAD_BYTES * n_const
        if model_bricks and rest <= 0:
            raise NeurvolBudgetError(
                f"the budget of {budget} bytes does not even cover the header and brick index "
                f"({overhead} bytes); use a smaller ratio or fewer, larger bricks")
        if not model_bricks and rest < 0:
            raise NeurvolBudgetError(
                f"the smallest bricked file is {overhead + CONSTANT_PAYLOAD_BYTES * n_const} bytes but the budget is "
                f"{budget}; use a smaller ratio or fewer bricks")
        budgets, tiers = split_budget(model_bricks, share, rest)
        options = _assign_configs(budgets, tiers, candidates, nominal, bits, arch_options,
                                  lambda *a: solve_config(*a, codec))
        pilots = {} if rated is None else _rated_configs(tiers, options, nominal, bits,
                                                         arch_options, rated)
        _reserve_models(header, options if fallbacks_on else
                        {b: o[:1] for b, o in options.items()}, pilots, layout.count)
        new = _overhead(header, layout.count)
        if new <= overhead:
            break
        overhead = new
    else:
        raise NeurvolBudgetError("could not size the bricks' header; use fewer bricks")

    # ---- jobs
    total_voxels = float(math.prod(shape))
    devs = list(devices) if devices else [device]
    jobs: List[BrickJob] = []
    for b in model_bricks:
        fits = []
        for architecture, config in options[b]:
            s = settings_for(architecture)
            # Scale the batch with the brick: every brick sees as many passes over its voxels
            # as a whole-volume fit would, so all bricks together cost about one
            # (smaller-model) fit.
            batch = int(min(s.batch, max(_MIN_BATCH, round(s.batch * stats[b].voxels / total_voxels))))
            fits.append((architecture.name, config.to_dict(),
                         dataclasses.asdict(dataclasses.replace(s, batch=batch))))
        ext = layout.extent(b)
        core = tuple((c.start - e[0], c.stop - e[0]) for c, e in zip(layout.core_slices(b), ext))
        jobs.append(BrickJob(
            brick=b, arch=fits[0][0], config=fits[0][1], fit=fits[0][2],
            fallbacks=list(fits) if fallbacks_on else [],
            negligible_mse=negligible, codec=dataclasses.asdict(codec),
            pilot=(pilots[b].to_dict(), dataclasses.asdict(rated))
            if rated is not None and b in pilots else None,
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

    partial = _BRICK_LIMIT.get()
    skipped: List[int] = []
    if partial is not None and len(jobs) > partial[0]:
        limit, largest = partial
        chosen = jobs[:limit] if not largest else sorted(
            sorted(jobs, key=lambda j: (-j.budget, j.brick))[:limit], key=lambda j: j.brick)
        skipped = sorted(set(j.brick for j in jobs) - set(j.brick for j in chosen))
        jobs = chosen
        log.info("encode: partial encode, %d of %d model bricks fitted", limit,
                 len(model_bricks))
    if workers is None:
        workers = len(devs) if devices else 1
    for job in jobs:
        job.prefetch = executor is None and workers == 1
    t_jobs = time.perf_counter()
    results = run_jobs(fit_order(jobs), with_data, fn=run_brick_job, workers=workers,
                       executor=executor, retries=retries, quiet=quiet)
    jobs_seconds = time.perf_counter() - t_jobs
    # In brick order whatever order the jobs finished in: the sums over bricks below
    # (quality) then do not depend on the executor.
    results = dict(sorted(results.items()))

    # ---- assemble
    models, ids = _config_table({b: (r.arch, r.config) for b, r in results.items()},
                                layout.count)
    _set_models(header, models, ids)
    header["codec"] = dict(CODEC, pipeline=_pipeline(
        [({"arch": r.arch, "config": r.config}, rated if r.rate_aware else codec)
         for _, r in sorted(results.items())]))
    fallen = sum(1 for r in results.values() if r.tried > 1)
    if fallen:
        log.info("encode: %d brick(s) refitted after a failed fit (%d now use another "
                 "architecture)", fallen,
                 sum(1 for b, r in results.items() if r.arch != options[b][0][0].name))
    for b in skipped:
        constant[b] = True
    payloads: List[bytes] = []
    for b in range(layout.count):
        if constant[b]:
            s = stats[b]
            payloads.append(encode_constant(s.lo if s.lo == s.hi else min(max(s.mean, lo), hi)))
        else:
            payloads.append(results[b].payload)
    header["fit"] = dict(FIT_PLACEHOLDER)
    data = serialize_nvol(header, payloads, minor=BRICKED_MINOR)
    if len(data) > budget:   # cannot happen: every share was checked; keep the promise anyway
        raise NeurvolBudgetError(
            f"the bricked file is {len(data)} bytes but the budget is {budget}; use a smaller ratio")
    total_steps = sum(r.steps for r in results.values())
    ks = [r.k for r in results.values()]
    if skipped:
        # A partial encode's PSNR is the fitted bricks' (on their cores): the constants
        # standing in for the others say nothing, and scoring them would read them all.
        quality = psnr_from_mse(sum(r.sse for r in results.values())
                                / max(1, sum(r.voxels for r in results.values())))
    elif math.prod(shape) <= EXACT_PSNR_VOXELS:
        quality = _exact_psnr(volume, NeuralVolume(NvolReader(data)), layout, lo, hi)
    else:
        quality = _estimated_psnr(results, stats, constant, layout, volume, lo, hi)
    header["fit"] = {"steps": total_steps, "k": min(ks) if ks else 0,
                     "psnr": round(quality, 3) if math.isfinite(quality) else None}
    data = serialize_nvol(header, payloads, minor=BRICKED_MINOR)
    nv = NeuralVolume(NvolReader(data))
    nv.encode_seconds = time.perf_counter() - t_start
    nv.jobs_seconds = jobs_seconds     # the bricks' fits alone (what workers speed up)
    # Each fitted brick's PSNR on its core (over the volume's range), as the fit measured
    # it: the spread says how fair the budget's split was.
    nv.brick_psnr = {b: psnr_from_mse(r.sse / max(r.voxels, 1))
                     for b, r in sorted(results.items())}
    if partial is not None:
        nv.partial_bricks = sorted(results)
    return nv


def fit_order(jobs: Sequence[BrickJob]) -> List[BrickJob]:
    """The order to hand the jobs to the executor: the largest budget share (the largest
    model, the longest fit) first, then the smallest, the second largest, the second
    smallest, ... A local pool is kept two jobs ahead while the calling process fits one
    job at a time, and the last job is the caller's; in brick order the caller could end
    up with the largest ones while the pool idles (bricks of similar content are
    neighbours). Alternating keeps both sides' work about equal, with few jobs or many.
    Each job's bytes do not depend on the order."""
    ranked = sorted(jobs, key=lambda j: (-j.budget, j.brick))
    out: List[BrickJob] = []
    lo, hi = 0, len(ranked) - 1
    while lo <= hi:
        out.append(ranked[lo])
        if lo < hi:
            out.append(ranked[hi])
        lo, hi = lo + 1, hi - 1
    return out


def _pipeline(used: List[Tuple[Dict[str, Any], Optional[CodecSettings]]]
              ) -> List[Dict[str, Any]]:
    """The header's ``codec.pipeline`` (informative): the stage configs of any brick's model
    (``{"arch", "config"}``) under the codec it went through, each listed once."""
    stages: List[Dict[str, Any]] = []
    built: Dict[Tuple[str, str], List[Dict[str, Any]]] = {}
    for entry, codec in used:
        key = (json.dumps(entry, sort_keys=True), repr(codec))
        if key not in built:
            arch = get_architecture(entry["arch"])
            model = arch.build(arch.config_cls.from_dict(entry["config"]))
            built[key] = codec.pipeline_configs(model)
        for stage in built[key]:
            if stage not in stages:
                stages.append(stage)
    return stages


def _overhead(header: Dict[str, Any], count: int) -> int:
    probe = dict(header, fit=FIT_PLACEHOLDER)
    return len(serialize_nvol(probe, [b""] * count, minor=BRICKED_MINOR))

def _assign_configs(budgets: Dict[int, int], tiers: Dict[int, int], candidates: Sequence[Any],
                    nominal: Tuple[int, int, int], bits: int, options: Dict[str, Any],
                    solve: Any) -> Dict[int, List[Tuple[Any, Any]]]:
    """(architecture, config) options per model brick: the first candidate architecture
    whose model fits the brick's tier, then the other candidates that fit it (fitted only
    when the first fit fails, see :data:`.brick_job.FALLBACK_MARGIN_DB`). Bricks of a tier share
    configs, so a file holds few."""
    cache: Dict[int, List[Tuple[Any, Any]]] = {}
    out = {}
    for b, tier in tiers.items():
        if tier not in cache:
            found: List[Tuple[Any, Any]] = []
            last: Optional[Exception] = None
            for architecture in candidates:
                try:
                    found.append((architecture, solve(architecture, nominal, tier_bytes(tier),
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


def _rated_configs(tiers: Dict[int, int], options: Dict[int, List[Tuple[Any, Any]]],
                   nominal: Tuple[int, int, int], bits: int, arch_options: Dict[str, Any],
                   rated: CodecSettings) -> Dict[int, ModelConfig]:
    """The pilot's model per model brick: its first architecture sized for rate-aware
    fitting at the brick's tier; none where that architecture has no grids to fit
    rate-aware or no such model fits."""
    cache: Dict[int, Optional[ModelConfig]] = {}
    out: Dict[int, ModelConfig] = {}
    for b, tier in tiers.items():
        architecture = options[b][0][0]
        if tier not in cache:
            try:
                config: Optional[ModelConfig] = solve_config(
                    architecture, nominal, tier_bytes(tier), bits, arch_options, rated)
            except NeurvolBudgetError:
                config = None
            if config is not None and not rated.grid_names(architecture.build(config)):
                config = None
            cache[tier] = config
        if cache[tier] is not None:
            out[b] = cache[tier]  # type: ignore[assignment]
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
                    pilots: Dict[int, ModelConfig], count: int) -> None:
    """Put the widest ``models``/``model_ids`` the finished file can have into the header
    (for sizing): every option's and pilot's config, and every model brick's id as the
    largest id."""
    table, _ = _config_table({b: (o[0][0].name, o[0][1].to_dict()) for b, o in options.items()},
                             count)
    seen = {json.dumps(e, sort_keys=True) for e in table}
    for b in sorted(options):
        extra = options[b][1:] + ([(options[b][0][0], pilots[b])] if b in pilots else [])
        for architecture, config in extra:
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


#: Points per query of the exact PSNR pass.
_PSNR_POINTS = 1 << 18


def _exact_psnr(volume: Any, nv: NeuralVolume, layout: BrickLayout, lo: float, hi: float
                ) -> float:
    """PSNR of the decoded file (float32 values, as the single-model path reports it),
    brick core by brick core and a few z slices at a time, so memory stays bounded by one
    brick."""
    sq = 0.0
    for b in range(layout.count):
        sl = layout.core_slices(b)
        orig = read_block(volume, sl).astype(np.float64)
        zz = np.arange(sl[0].start, sl[0].stop)
        yx = np.stack(np.meshgrid(np.arange(sl[1].start, sl[1].stop),
                                  np.arange(sl[2].start, sl[2].stop), indexing="ij"),
                      -1).reshape(-1, 2).astype(np.float64)
        per = max(1, _PSNR_POINTS // len(yx))
        for z0 in range(0, len(zz), per):
            z = zz[z0:z0 + per]
            pts = np.concatenate([np.repeat(z, len(yx))[:, None].astype(np.float64),
                                  np.tile(yx, (len(z), 1))], axis=1)
            rec = nv.query(pts).astype(np.float64).reshape(orig[z0:z0 + per].shape)
            sq += float(np.sum((orig[z0:z0 + per] - rec) ** 2))
    return psnr_from_mse(sq / math.prod(layout.shape), (hi - lo) or 1.0)


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
    return psnr_from_mse(sq / math.prod(layout.shape), rng)

