"""One brick job: read the brick, fit its model and compress it to its byte budget with
the routine single models use (:mod:`.single`); redo a failed fit.

:func:`run_brick_job` is a top-level function, so the same job runs in-process, in a
local process pool or on a Dask worker and gives the same bytes everywhere
(:mod:`neurvol.ensemble.job`).
"""
from __future__ import annotations

import copy
import dataclasses
import time
from typing import Any, Dict

import numpy as np
import torch
import torch.nn.functional as F

from ..compress import decode_payload
from ..ensemble.job import BrickJob, BrickResult, Plateau, Slices3, torch_threads
from ..ensemble.source import read_spec
from ..fit import FitSettings
from ..fit.evaluate import model_sse
from ..models import get_architecture
from .plan import codec_settings
from .single import advance, compress_fitted, start_fit

#: A brick's fit has failed when its quantized model is not at least this much better (dB,
#: on the core voxels) than trilinear resampling through as many vertices as the model has
#: parameters (fvsrn and amgsrn both start from such data): sound fits clear it, fits
#: whose grids left much of the brick uncovered do not (BENCHMARKS.md, "Bricked
#: ensembles").
FALLBACK_MARGIN_DB = 1.5
#: ... unless the model is this good anyway (the tolerance of constant bricks, 50 dB) or
#: its error is negligible in the volume's (``BrickJob.negligible_mse``).
_GOOD_ENOUGH_MSE = 1e-5


def run_brick_job(job: BrickJob) -> BrickResult:
    """Fit and quantize one brick. Deterministic for a given job (see module docstring)."""
    t0 = time.perf_counter()
    with torch_threads(job.threads):
        sl = tuple(slice(a, b) for a, b in job.extent)
        raw = job.data if job.data is not None else read_spec(job.source, sl)  # type: ignore[arg-type]
        scale = 1.0 / (job.hi - job.lo)
        target = ((np.asarray(raw, dtype=np.float64) - job.lo) * scale).astype(np.float32)
        del raw
        best = _fit_quantized(job, job.arch, job.config, job.fit, target, job.seed)
        baseline = _downsample_sse(target, job.core, best.params)
        steps, tried = best.steps, 1
        # A failed fit is redone (another seed, then the next architecture) until one is
        # sound; the brick keeps the best model tried.
        for n, (arch, config, fit_settings) in enumerate(job.fallbacks, 1):
            if not _failed(best, baseline, job.negligible_mse):
                break
            alt = _fit_quantized(job, arch, config, fit_settings, target, job.seed + n)
            steps, tried = steps + alt.steps, tried + 1
            if alt.sse < best.sse:
                best = alt
    return dataclasses.replace(best, steps=steps, tried=tried, baseline_sse=baseline,
                               seconds=time.perf_counter() - t0)


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
                   fit_dict: Dict[str, Any], target: np.ndarray, seed: int) -> BrickResult:
    """Fit one model to the brick and compress it to the brick's budget (the single-model
    routine, scored by the stored model's error on the brick's core); measure that
    error."""
    arch = get_architecture(arch_name)
    config = arch.config_cls.from_dict(config_dict)
    settings = FitSettings(**fit_dict)
    run = start_fit(arch, config, settings, codec_settings(job.codec),
                    torch.from_numpy(target), seed, torch.device(job.device))
    advance(run, stop=Plateau(settings.steps) if job.plateau else None)
    result = run.fitting.finish()
    model = run.model.cpu()
    specs = [(n, tuple(t.shape)) for n, t in model.state_dict().items()]

    def stored_sse(payload: bytes) -> float:
        """Core squared error of the model a payload stores."""
        stored = copy.deepcopy(model)
        decoded = decode_payload(payload, specs)
        stored.load_state_dict({n: torch.from_numpy(decoded[n]) for n, _ in specs})
        return model_sse(stored, target, job.core)[0]

    packed = compress_fitted(
        run, file_size=len, budget=job.budget, k0=job.k0, score=stored_sse,
        too_large=f"brick {job.brick}: its {arch_name} model needs {{size}} bytes even at "
                  "the coarsest quantization, but its share of the budget is {budget}; use "
                  "a smaller ratio or fewer, larger bricks")
    decoded = decode_payload(packed.payload, specs)
    model.load_state_dict({n: torch.from_numpy(decoded[n]) for n, _ in specs})
    sse, voxels = model_sse(model, target, job.core)
    return BrickResult(job.brick, packed.payload, packed.k, result.steps, sse,
                       voxels, 0.0, arch=arch_name, config=dict(config_dict),
                       params=sum(int(t.numel()) for t in model.state_dict().values()))
