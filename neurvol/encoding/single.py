"""The one ``fit -> fine-tune -> compress -> pack`` routine, and single-model encodes.

:func:`start_fit` builds and starts a model's fit, :func:`advance` runs it on,
:func:`compress_fitted` fine-tunes and compresses it to a byte budget. A single-model
encode (:func:`pack_file`) and every brick job (:mod:`.brick_job`) go through them, so
both get the same codec: rate-aware fitting, interp grids, quantization-aware fine-tuning
kept only where it lowers the stored model's error.
"""
from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import torch

from ..compress import encode_constant
from ..container import NvolReader, serialize_nvol
from ..container.format import COMPACT_MINOR
from ..errors import NeurvolBudgetError
from ..fit import FitSettings, Fitting
from ..fit import finetune as _finetune
from ..metrics import psnr
from ..models import Architecture, ModelConfig, VolumeModel
from ..neural_volume import NeuralVolume
from ..pipeline import CodecSettings, Compressed, compress_model, fit_regularizer
from .masked import MaskedInput
from .plan import CODEC, FINETUNE_LR, FIT_JITTER, FIT_PLACEHOLDER

log = logging.getLogger("neurvol")


@dataclasses.dataclass
class ModelFit:
    """One model of an encode: its codec, sizing and fit in progress."""

    codec: CodecSettings
    architecture: Architecture
    config: ModelConfig
    settings: FitSettings
    model: VolumeModel
    fitting: Fitting
    data: torch.Tensor          # the normalized values it is fitted to
    seed: int
    device: torch.device
    valid: Optional[torch.Tensor] = None   # a masked volume's valid voxels (spec/mask.md)


def start_fit(architecture: Architecture, config: ModelConfig, settings: FitSettings,
              codec: CodecSettings, data: torch.Tensor, seed: int,
              device: torch.device, valid: Optional[torch.Tensor] = None,
              prefetch: Optional[bool] = None) -> ModelFit:
    """Build ``architecture``'s model of ``config`` and start fitting it to ``data`` (no
    steps run yet; ``valid``: a masked volume's valid voxels, the only ones fitted). The
    model is initialised by :meth:`~neurvol.models.base.Architecture.seeded_build` and the
    fit draws from generators of its own, so the same seed gives the same file in any
    process or thread. ``prefetch``: as :class:`~neurvol.fit.Fitting` takes it."""
    model = architecture.seeded_build(config, seed)
    regularizer = fit_regularizer(model, codec, settings.steps)
    fitting = Fitting(model, data, settings, seed=seed, device=device, regularizer=regularizer,
                      valid=valid, prefetch=prefetch)
    return ModelFit(codec, architecture, config, settings, model, fitting, data, seed, device,
                    valid)


def advance(run: ModelFit, until: Optional[int] = None, *,
            progress: Optional[Callable[[int, float], None]] = None,
            stop: Optional[Callable[[int, float], bool]] = None) -> None:
    """Fit ``run`` on to step ``until`` (None: the end); ``progress`` and ``stop`` as for
    :func:`neurvol.fit.fit`."""
    run.fitting.run(until, progress=progress, stop=stop)


def advance_with_bar(run: ModelFit, until: Optional[int], quiet: bool, desc: str) -> None:
    """:func:`advance` with a progress bar (unless ``quiet``)."""
    from tqdm.auto import tqdm

    with tqdm(total=run.settings.steps, initial=run.fitting.step, desc=desc, unit="step",
              disable=quiet, leave=False) as bar:
        def progress(step: int, loss: float) -> None:
            bar.set_postfix(loss=f"{loss:.2e}", refresh=False)
            bar.update(step - bar.n)  # tqdm throttles redraws itself
        advance(run, until, progress=progress)


def compress_fitted(run: ModelFit, *, file_size: Callable[[bytes], int], budget: int,
                    k0: int, score: Callable[[bytes], float], too_large: str) -> Compressed:
    """The fitted model of ``run`` through the codec: quantization-aware fine-tuning
    (``codec.finetune`` of the fit's steps) and compression to the finest quantization
    whose file (``file_size(payload)``) fits ``budget`` (:func:`neurvol.pipeline.compress_model`;
    ``score``: the error of the model a payload stores). ``too_large`` (formatted with
    ``size`` and ``budget``) is the error when even the coarsest quantization does not
    fit. Modifies the model: fine-tuned, grids at their stored values, on the CPU."""
    model, settings, codec = run.model, run.settings, run.codec
    tune_steps = int(round(codec.finetune * settings.steps))

    def finetune(trainable: Callable[[str], bool], regularizer: Any = None) -> None:
        if tune_steps > 0:
            _finetune(model, run.data, steps=tune_steps, lr=settings.lr * FINETUNE_LR,
                      trainable=trainable, batch=settings.batch, seed=run.seed,
                      device=run.device, regularizer=regularizer, valid=run.valid)
            model.cpu()

    model.cpu()
    packed = compress_model(model, file_size, budget, k0, codec, finetune=finetune,
                            score=score)
    if packed.size > budget:
        raise NeurvolBudgetError(too_large.format(size=packed.size, budget=budget))
    return packed


def pack_file(run: ModelFit, header: Dict[str, Any], volume: Any, budget: int, k0: int,
              steps: int, masked: Optional[MaskedInput] = None) -> NeuralVolume:
    """The single-model file of ``run``'s fitted model within ``budget`` bytes; the stored
    model is scored by the PSNR of the whole decoded file. ``header``: the encode's, to
    which the model's entries are added; ``steps``: the fit steps it records; ``masked``:
    a masked volume's mask, stored in the file (its bytes count in the budget) and the
    PSNR taken over the valid voxels."""
    sections = None if masked is None else masked.sections
    # A masked file keeps a JSON header (an extra section, spec/nvol.md §3.3): no compact
    # header whose size could move with the final "fit".
    minor = COMPACT_MINOR if masked is None else masked.minor
    jitter = FIT_JITTER if masked is None else 0
    valid = None if masked is None else ~masked.mask
    header["model"] = {"arch": run.architecture.name, "config": run.config.to_dict()}
    header["codec"] = dict(CODEC, pipeline=run.codec.pipeline_configs(run.model))
    header["fit"] = dict(FIT_PLACEHOLDER, steps=steps)

    scores: Dict[bytes, float] = {}

    def stored_error(payload: bytes) -> float:
        """Minus the PSNR of the file a payload makes (the whole volume decoded; each
        payload once: the kept one is scored again for the header)."""
        if payload not in scores:
            decoded = finish(header, [payload], None, sections, minor).decode(dtype=np.float32)
            scores[payload] = -psnr(volume, decoded, valid)
        return scores[payload]

    packed = compress_fitted(
        run, budget=budget,
        file_size=lambda payload: jitter + len(
            serialize_nvol(header, [payload], sections, minor=minor)),
        k0=k0, score=stored_error,
        too_large="the model does not fit the budget of {budget} bytes even at the coarsest "
                  "quantization; use a smaller ratio")
    quality = -stored_error(packed.payload)
    header["fit"] = {"steps": steps, "k": packed.k,
                     "psnr": round(quality, 3) if math.isfinite(quality) else None}
    return finish(header, [packed.payload], budget, sections, minor)


def constant_file(header: Dict[str, Any], value: float, budget: int,
                  masked: Optional[MaskedInput] = None) -> NeuralVolume:
    """The file of a constant volume (over its valid voxels): stored exactly, no model."""
    header["codec"] = CODEC
    if masked is None:
        return finish(header, [encode_constant(value)], budget)
    return finish(header, [encode_constant(value)], budget, masked.sections, masked.minor)


def finish(header: Dict[str, Any], bricks: List[bytes], budget: Optional[int],
           sections: Optional[Dict[str, bytes]] = None,
           minor: int = COMPACT_MINOR) -> NeuralVolume:
    """The file of ``header``, brick payloads and extra ``sections`` (format ``minor``),
    refused if over ``budget`` bytes; a one-brick file without extra sections gets the
    compact header of format 1.4 (spec/nvol.md §3.3)."""
    data = serialize_nvol(header, bricks, sections, minor=minor)
    if budget is not None and len(data) > budget:
        raise NeurvolBudgetError(
            f"the smallest file neurvol can make is {len(data)} bytes but the budget is {budget} "
            f"bytes; use a smaller ratio (at most {int(header['budget']['ratio'] * budget / len(data))})"
        )
    return NeuralVolume(NvolReader(data))

