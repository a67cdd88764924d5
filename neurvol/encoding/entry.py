"""``neurvol.encode``: check the arguments, then dispatch to a ``psnr=`` search, a
bricked encode or a single model."""
from __future__ import annotations

import logging
import math
import time
from typing import Any, Dict, Optional, Sequence

import numpy as np
import torch

from ..ensemble.job import torch_threads
from ..errors import NeurvolBudgetError, NeurvolInputError
from ..models.base import resolve_device
from ..neural_volume import NeuralVolume
from ..volume_checks import check_masked_volume, check_ratio
from .masked import MaskedInput, fill_normalized, masked_input
from .plan import (AUTO_ARCH, CONSTANT_BRICK_PSNR, brick_grid, candidates_for, check_int, codec_settings,
                   first_solvable, fit_settings_for, normalized_tensor, triple,
                   volume_header)
from .pilot import rate_candidates, rate_is_default, rate_pilot
from .beside import SideFit, SideWork
from .hybrid import Candidate, predictor_candidate, split_codec
from .search import encode_to_psnr
from .single import ModelFit, advance_with_bar, constant_file, pack_file, start_fit

log = logging.getLogger("neurvol")

#: What the bricked path's refusal of NaN voxels says (neurvol/ensemble/allocate.py).
_NAN_REFUSAL = "NaN or infinite values in brick"
#: Largest k-means bits (``2 ** bits`` levels).
MAX_BITS = 16


def encode_volume(volume: Any, ratio: float, *, psnr: Optional[float], arch: str, seed: int,
                  device: Any, steps: Optional[int], bits: int,
                  spacing: Optional[Sequence[float]], origin: Optional[Sequence[float]],
                  fit_settings: Optional[Dict[str, Any]], codec: Optional[Dict[str, Any]],
                  quiet: bool, brick: Optional[int], ghost: int,
                  bricks: Optional[Sequence[int]], blend: bool, workers: Optional[int],
                  devices: Optional[Sequence[str]], executor: Any, retries: int,
                  fill_value: Optional[float] = None, **arch_options: Any) -> NeuralVolume:
    """:func:`neurvol.encode` (see its docstring for the arguments)."""
    explicit_auto_rate = isinstance(codec, dict) and isinstance(codec.get("rate"), str)
    hybrid, codec_only = split_codec(codec)
    kwargs = dict(
        psnr=None, arch=arch, seed=seed, device=device, steps=steps, bits=bits,
        spacing=spacing, origin=origin, fit_settings=fit_settings, codec=codec, quiet=quiet,
        brick=brick, ghost=ghost, bricks=bricks, blend=blend, workers=workers,
        devices=devices, executor=executor, retries=retries, fill_value=fill_value,
        **arch_options)
    if psnr is not None:     # a search: several encodes with these arguments
        return encode_to_psnr(encode_volume, volume, psnr, ratio, kwargs)
    codec = codec_only       # bricked volumes keep model-only bricks
    t_start = time.perf_counter()
    grid = brick_grid(volume, brick, bricks)   # None: one model (format 1.0 files)
    masked: Optional[MaskedInput] = None
    if grid is None:
        volume, lo, hi, mask = check_masked_volume(volume, fill_value)
        masked = masked_input(mask, fill_value)
    elif fill_value is not None:
        raise NeurvolInputError(
            "masked volumes (fill_value=, NaN regions) are stored with one model: bricked "
            f"files do not take masks; pass bricks=(1, 1, 1) (asked for a {grid} grid)")
    ratio = check_ratio(ratio)
    check_int(seed, "seed", 0, what="a non-negative int")
    if not 0 <= seed < 2 ** 63:
        raise NeurvolInputError(f"seed must be a non-negative int, got {seed!r}")
    if not isinstance(arch, str):
        raise NeurvolInputError(f"arch must be an architecture name (str), got {arch!r}")
    if isinstance(bits, bool) or isinstance(steps, bool):
        raise NeurvolInputError("bits and steps must be ints, not booleans")
    check_int(bits, "bits", 1, MAX_BITS)
    if steps is not None:
        check_int(steps, "steps", 0, what="a non-negative int")
    candidates = candidates_for(arch, arch_options)
    dev = resolve_device(device)
    spacing_t, origin_t = triple(spacing, 1.0, "spacing"), triple(origin, 0.0, "origin")
    if grid is not None:
        from .bricked import encode_bricked

        check_int(retries, "retries", 0, what="a non-negative int")
        if workers is not None:
            check_int(workers, "workers", 1, what="a positive int")
        if devices is not None:
            devices = [str(resolve_device(d)) for d in devices]
            if not devices:
                raise NeurvolInputError("devices must list at least one device, e.g. ['cuda:0']")
        try:
            return encode_bricked(
                volume, ratio=ratio, grid=grid, ghost=ghost, blend=bool(blend),
                candidates=candidates, arch_options=arch_options, seed=seed,
                device=str(dev), devices=devices, steps=steps, bits=bits, spacing=spacing_t,
                origin=origin_t, fit_settings=fit_settings, codec=codec, quiet=quiet,
                workers=workers, executor=executor, retries=retries,
                const_psnr=CONSTANT_BRICK_PSNR)
        except NeurvolInputError as exc:
            # Bricks refuse NaN one brick at a time (spec/mask.md: no bricked masks); say
            # how a masked volume is stored instead.
            if _NAN_REFUSAL in str(exc):
                raise NeurvolInputError(
                    f"{exc}. NaN regions are stored as a mask by a single-model encode: "
                    f"pass bricks=(1, 1, 1) (CLI: --bricks 1,1,1); asked for a {grid} grid"
                ) from exc
            raise
    # arch="auto" lets neurvol choose the model, and no model at all is one choice: a pure
    # predictor file (numpy, no fit). Masked volumes stay model-only: error-bounded files
    # do not combine with masks.
    nv = encode_single_or_predictor(
        volume, lo, hi, ratio=ratio, predictor=hybrid and arch == AUTO_ARCH and masked is None,
        candidates=candidates, arch_options=arch_options, seed=seed, dev=dev, steps=steps,
        bits=bits, spacing=spacing_t, origin=origin_t, fit_settings=fit_settings, codec=codec,
        auto_rate=explicit_auto_rate or rate_is_default(codec), quiet=quiet, masked=masked)
    # Timings vary run to run, so they live on the object, not in the (deterministic) file.
    nv.encode_seconds = time.perf_counter() - t_start
    return nv


def encode_single_or_predictor(volume: Any, lo: float, hi: float, *, ratio: float,
                               predictor: bool, dev: torch.device, spacing: Sequence[float],
                               origin: Sequence[float], **single: Any) -> NeuralVolume:
    """One model of the whole volume (:func:`_encode_single`, ``single`` its other
    arguments) and, when ``predictor``, the pure predictor file at the same budget, made on
    a side thread while the model fits (:mod:`.beside`): the one with the better PSNR (the
    predictor where no model fits the budget). Its ``hybrid_candidates`` say what each
    scored."""
    with SideWork(enabled=dev.type == "cpu") as side:
        pending = (side.submit(_predictor, volume, lo, hi, ratio, spacing, origin)
                   if predictor else None)
        try:
            nv: Optional[NeuralVolume] = _encode_single(
                volume, lo, hi, ratio=ratio, dev=dev, spacing=spacing, origin=origin,
                side=side, **single)
            budget_error: Optional[NeurvolBudgetError] = None
        except NeurvolBudgetError as exc:
            nv, budget_error = None, exc
        pred = None if pending is None else pending.result()
    if budget_error is not None:
        if pred is None:
            raise budget_error
        model_psnr, nv = None, pred.volume    # no model fits this budget; the predictor does
    else:
        assert nv is not None
        model_psnr = nv.fit_psnr
        if pred is not None and pred.psnr > model_psnr:
            log.info("encode: the pure predictor (%.2f dB) beats the model (%.2f dB)",
                     pred.psnr, model_psnr)
            nv = pred.volume
    if pred is not None:
        nv.hybrid_candidates = {"model": model_psnr, "predictor": pred.psnr,
                                "predictor_max_error": pred.volume.max_error}
    return nv


def _predictor(volume: Any, lo: float, hi: float, ratio: float, spacing: Sequence[float],
               origin: Sequence[float]) -> Optional[Candidate]:
    """The pure predictor candidate of a single-model encode (None: a constant volume, or
    a budget below its fixed overhead)."""
    if lo == hi:
        return None
    shape = tuple(int(s) for s in volume.shape)
    budget = int(math.prod(shape) * np.dtype(volume.dtype).itemsize // ratio)
    header = volume_header(shape, np.dtype(volume.dtype), lo, hi, list(spacing), list(origin),
                           {"grid": [1, 1, 1]}, ratio, budget)
    return predictor_candidate(np.asarray(volume), header, budget)


def _encode_single(volume: Any, lo: float, hi: float, *, ratio: float, candidates: Sequence[Any],
                   arch_options: Dict[str, Any], seed: int, dev: torch.device,
                   steps: Optional[int], bits: int, spacing: Sequence[float],
                   origin: Sequence[float], fit_settings: Optional[Dict[str, Any]],
                   codec: Optional[Dict[str, Any]], auto_rate: bool, quiet: bool,
                   masked: Optional[MaskedInput] = None,
                   side: Optional[SideWork] = None) -> NeuralVolume:
    """One model of the whole volume (a format 1.0 file; 1.3 with a mask). ``side``: where
    work beside the fit goes (the default candidate's fit during the rate pilot); the fits
    run on its :meth:`~.beside.SideWork.fit_threads`."""
    shape = tuple(int(s) for s in volume.shape)
    dtype = np.dtype(volume.dtype)
    budget = int(math.prod(shape) * dtype.itemsize // ratio)
    header = volume_header(shape, dtype, lo, hi, list(spacing), list(origin),
                           {"grid": [1, 1, 1]}, ratio, budget)
    if masked is not None:
        masked.add_to(header)
    if lo == hi:  # constant volume: stored exactly, no model
        return constant_file(header, lo, budget, masked)
    data = normalized_tensor(volume, lo, hi)
    valid = None
    if masked is not None:
        fill_normalized(data.numpy(), masked)
        valid = torch.from_numpy(~masked.mask)
    k0 = 2 ** bits

    def start(codec_fields: Optional[Dict[str, Any]]) -> ModelFit:
        settings = codec_settings(codec_fields)
        architecture, config = first_solvable(candidates, header, tuple(data.shape), budget,
                                              bits, arch_options, settings)
        fit = fit_settings_for(architecture, fit_settings, steps)
        run = start_fit(architecture, config, fit, settings, data, seed, dev, valid)
        log.info("encode: %s %s, budget %d bytes, %d parameters, %d steps on %s",
                 architecture.name, config.to_dict(), budget,
                 sum(p.numel() for p in run.model.parameters()), fit.steps, dev)
        return run

    side = side if side is not None else SideWork(enabled=False)
    with torch_threads(side.fit_threads()):
        if auto_rate:
            default_codec, rate_codec = rate_candidates({"rate": "auto", **(codec or {})})
            # The default's refusals (budget, options) come first, as without auto.
            first_solvable(candidates, header, tuple(data.shape), budget, bits, arch_options,
                           codec_settings(default_codec))
            try:
                rated: Optional[ModelFit] = start(rate_codec)
            except (NeurvolInputError, NeurvolBudgetError):
                rated = None     # an architecture without feature grids: the default it is
            if rated is None:
                run = start(default_codec)
            else:
                default = SideFit(side, lambda: start(default_codec))
                try:
                    run = rate_pilot(rated, default.take, volume, header, budget, k0, quiet,
                                     masked)
                finally:
                    default.drop()
        else:
            run = start(codec)
        advance_with_bar(run, None, quiet, "fitting")
    result = run.fitting.finish()
    return pack_file(run, dict(header), volume, budget, k0, steps=result.steps, masked=masked)
