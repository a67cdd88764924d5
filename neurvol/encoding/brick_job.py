"""One brick job: read the brick, fit its model and compress it to its byte budget with
the routine single models use (:mod:`.single`); redo a failed fit.

:func:`run_brick_job` is a top-level function, so the same job runs in-process, in a
local process pool or on a Dask worker and gives the same bytes everywhere
(:mod:`neurvol.ensemble.job`).
"""
from __future__ import annotations

import copy
import ctypes
import ctypes.util
import dataclasses
import gc
import time
import math
from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from ..compress import decode_payload, jit
from ..ensemble.job import BrickJob, BrickResult, Plateau, Slices3, torch_threads
from ..ensemble.source import read_spec
from ..fit import FitSettings
from ..fit.evaluate import model_sse
from ..models import get_architecture
from ..metrics import psnr_from_mse
from ..pipeline import Compressed
from .pilot import drop_gradients, pilot_keeps
from .plan import codec_settings
from .single import ModelFit, advance, compress_fitted, start_fit

#: A brick's fit has failed when its quantized model is not at least this much better (dB,
#: on the core voxels) than trilinear resampling through as many vertices as the model has
#: parameters (fvsrn and amgsrn both start from such data): sound fits clear it, fits
#: whose grids left much of the brick uncovered do not (BENCHMARKS.md, "bricked
#: ensembles").
FALLBACK_MARGIN_DB = 1.5
#: The pilot's largest coding loss (dB) for a brick's rate-aware fit to be finished (single
#: models: :data:`.pilot.RATE_CODING_LOSS_DB`). A brick's pilot codes a model of a fraction
#: of the volume's bytes, fitted with a proportionally smaller batch, and loses more at
#: 40 % of its steps than a whole-volume model of the same field, yet its finished
#: rate-aware fit still beats the default; the smooth fields where rate-aware fitting
#: loses code several dB worse still (BENCHMARKS.md, "bricked ensembles against one
#: model").
BRICK_CODING_LOSS_DB = 6.0
#: ... unless the model is this good anyway (the tolerance of constant bricks, 50 dB) or
#: its error is negligible in the volume's (``BrickJob.negligible_mse``).
_GOOD_ENOUGH_MSE = 1e-5


def run_brick_job(job: BrickJob) -> BrickResult:
    """Fit and quantize one brick. Deterministic for a given job (see module docstring)."""
    t0 = time.perf_counter()
    # numpy decoders only (the same values): a brick worker's memory counts, numba's
    # LLVM would add ~130 MiB to it (neurvol/compress/jit.py).
    with torch_threads(job.threads), jit.suspended():
        sl = tuple(slice(a, b) for a, b in job.extent)
        raw = job.data if job.data is not None else read_spec(job.source, sl)  # type: ignore[arg-type]
        scale = 1.0 / (job.hi - job.lo)
        target = ((np.asarray(raw, dtype=np.float64) - job.lo) * scale).astype(np.float32)
        del raw
        best = _fit_first(job, target)
        baseline = _downsample_sse(target, job.core, best.params)
        steps, tried = best.steps, 1
        # A failed fit is redone (another seed, then the next architecture) until one is
        # sound; the brick keeps the best model tried.
        for n, (arch, config, fit_settings) in enumerate(job.fallbacks, 1):
            if not _failed(best, baseline, job.negligible_mse):
                break
            alt = _fit_quantized(job, arch, config, fit_settings, job.codec, target, job.seed + n)
            steps, tried = steps + alt.steps, tried + 1
            if alt.sse < best.sse:
                best = alt
    out = dataclasses.replace(best, steps=steps, tried=tried, baseline_sse=baseline,
                              seconds=time.perf_counter() - t0)
    del best, target
    release_freed_memory()
    return out


def release_freed_memory() -> None:
    """Hand the memory a finished brick freed back to the system. glibc's malloc keeps
    freed heap memory (and raises its mmap threshold after large frees, so later large
    arrays come from that heap too): a worker's resident memory would creep up brick
    after brick through fragmentation although what it uses stays flat."""
    gc.collect()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def _malloc_trim() -> Optional[Any]:
    """glibc's ``malloc_trim``, or None on other C libraries."""
    global _TRIM
    if _TRIM is False:
        name = ctypes.util.find_library("c")
        try:
            _TRIM = getattr(ctypes.CDLL(name), "malloc_trim") if name else None
        except (OSError, AttributeError):
            _TRIM = None
    return _TRIM


_TRIM: Any = False      # not looked up yet


def _fit_first(job: BrickJob, target: np.ndarray) -> BrickResult:
    """The job's own model: with a pilot (``job.pilot``), the rate-aware model if the rule
    of single models keeps it (:func:`.pilot.pilot_keeps`), else the default; its
    ``steps`` count the pilot's."""
    if job.pilot is None:
        return _fit_quantized(job, job.arch, job.config, job.fit, job.codec, target, job.seed)
    config, codec = job.pilot
    run, stop = _start(job, job.arch, config, job.fit, codec, target, job.seed)

    def coded_psnr(probe: ModelFit) -> float:
        """PSNR on the whole extent of the model the probe's payload stores."""
        packed = _compress(job, probe, target, None)
        return psnr_from_mse(_stored_sse(probe.model, packed.payload, target, None)
                             / target.size)

    if pilot_keeps(run, lambda step: advance(run, step, stop=stop), coded_psnr,
                   max_coding_loss=BRICK_CODING_LOSS_DB):
        return dataclasses.replace(_finish(job, run, stop, target, config), rate_aware=True)
    pilot_steps = run.fitting.step
    # The pilot's model, optimizer state and sampler go before the default's fit starts
    # (both at once would double the worker's memory).
    del run, stop
    res = _fit_quantized(job, job.arch, job.config, job.fit, job.codec, target, job.seed)
    return dataclasses.replace(res, steps=res.steps + pilot_steps)


def _failed(res: BrickResult, baseline: float, negligible_mse: float) -> bool:
    if res.sse <= max(_GOOD_ENOUGH_MSE, negligible_mse) * res.voxels:
        return False
    return res.sse * 10.0 ** (FALLBACK_MARGIN_DB / 10.0) > baseline


def _downsample_sse(target: np.ndarray, core: Slices3, values: int) -> float:
    """Squared error on the core of the extent resampled (trilinear) through a grid of
    about ``values`` vertices shaped like the extent."""
    shape = np.array(target.shape)
    s = (values / float(shape.prod())) ** (1.0 / 3.0)
    grid = [int(min(n, max(2, round(n * s)))) for n in shape]
    t = torch.from_numpy(target)[None, None]
    with torch.inference_mode():
        up = F.interpolate(F.interpolate(t, size=grid, mode="trilinear", align_corners=True),
                           size=target.shape, mode="trilinear", align_corners=True)[0, 0]
        sel = tuple(slice(a, b) for a, b in core)
        err = (up[sel].clamp(0.0, 1.0) - t[0, 0][sel]).double()
        return float((err * err).sum())


def _fit_quantized(job: BrickJob, arch_name: str, config_dict: Dict[str, Any],
                   fit_dict: Dict[str, Any], codec: Optional[Dict[str, Any]],
                   target: np.ndarray, seed: int) -> BrickResult:
    """Fit one model to the brick and compress it to the brick's budget (the single-model
    routine, scored by the stored model's error on the brick's core); measure that
    error."""
    run, stop = _start(job, arch_name, config_dict, fit_dict, codec, target, seed)
    return _finish(job, run, stop, target, config_dict)


def _start(job: BrickJob, arch_name: str, config_dict: Dict[str, Any],
           fit_dict: Dict[str, Any], codec: Optional[Dict[str, Any]], target: np.ndarray,
           seed: int) -> Tuple[ModelFit, Optional[Plateau]]:
    """A model's fit on the brick, started, and its early stop."""
    # What an earlier model of this brick left (a pilot, a failed fit) goes back first:
    # its freed buffers would otherwise stay resident beside the new fit's.
    release_freed_memory()
    arch = get_architecture(arch_name)
    settings = FitSettings(**fit_dict)
    run = start_fit(arch, arch.config_cls.from_dict(config_dict), settings,
                    codec_settings(codec), torch.from_numpy(target), seed,
                    torch.device(job.device), prefetch=job.prefetch)
    return run, (Plateau(settings.steps) if job.plateau else None)


def _finish(job: BrickJob, run: ModelFit, stop: Optional[Plateau], target: np.ndarray,
            config_dict: Dict[str, Any]) -> BrickResult:
    """Fit ``run`` to its end, compress it to the brick's budget, measure the stored
    model's error on the core."""
    advance(run, stop=stop)
    result = run.fitting.finish()
    drop_gradients(run.model)
    packed = _compress(job, run, target, job.core)
    model = run.model
    sse = _stored_sse(model, packed.payload, target, job.core, into=model)
    return BrickResult(job.brick, packed.payload, packed.k, result.steps, sse,
                       _voxels(target, job.core), 0.0, arch=run.architecture.name,
                       config=dict(config_dict),
                       params=sum(int(t.numel()) for t in model.state_dict().values()))


def _compress(job: BrickJob, run: ModelFit, target: np.ndarray,
              core: Optional[Slices3]) -> Compressed:
    """The single-model routine at the brick's budget, scored by the stored model's
    squared error on ``core`` (None: the whole extent)."""
    # The fit's per-step buffers, freed, go back before coding allocates its own.
    release_freed_memory()
    model = run.model.cpu()
    return compress_fitted(
        run, file_size=len, budget=job.budget, k0=job.k0,
        score=lambda payload: _stored_sse(model, payload, target, core),
        too_large=f"brick {job.brick}: its {run.architecture.name} model needs {{size}} "
                  "bytes even at the coarsest quantization, but its share of the budget is "
                  "{budget}; use a smaller ratio or fewer, larger bricks")


def _stored_sse(model: torch.nn.Module, payload: bytes, target: np.ndarray,
                core: Optional[Slices3], into: Optional[torch.nn.Module] = None) -> float:
    """Squared error on ``core`` (None: all) of ``model`` with the weights ``payload``
    stores (loaded into ``into``, default a copy of ``model``)."""
    specs = [(n, tuple(t.shape)) for n, t in model.state_dict().items()]
    stored = copy.deepcopy(model) if into is None else into
    decoded = decode_payload(payload, specs)
    stored.load_state_dict({n: torch.from_numpy(decoded[n]) for n, _ in specs})
    return model_sse(stored, target, core)[0]


def _voxels(target: np.ndarray, core: Slices3) -> int:
    return math.prod(b - a for a, b in core)
