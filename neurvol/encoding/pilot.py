"""``codec={"rate": "auto"}``: choose between the default codec and rate-aware fitting
from a pilot (part of the rate-aware fit, coded), not from two whole encodes.

Rate-aware fitting wins on rough volumes and loses on smooth ones (BENCHMARKS.md,
"choosing rate-aware fitting per volume"); the pilot tells them apart per volume.
"""
from __future__ import annotations

import copy
import dataclasses
import logging
from typing import Any, Callable, Dict, List, Optional

import torch

from ..errors import NeurvolInputError
from ..fit.evaluate import model_sse
from ..metrics import psnr_from_mse
from ..models import VolumeModel
from .single import ModelFit, advance_with_bar, pack_file

log = logging.getLogger("neurvol")

#: The candidate ``codec={"rate": "auto"}`` tries beside the default codec: rate-aware
#: fitting of a model sized for 2 bits per grid value.
AUTO_RATE: Dict[str, float] = {"rate": 12.0, "grid_bits": 2.0}
#: The rate-aware fit runs to this fraction of its steps (its penalty has then acted for a
#: tenth of them) before it is judged ...
RATE_PILOT = 0.4
#: ... and its float PSNR there is compared with that at this fraction (before the
#: penalty starts):
RATE_PILOT_EARLY = 0.2
#: a fit whose float PSNR fell by more than this, dB, is unstable (grids that left
#: structure uncovered) and the default is fitted instead;
RATE_PILOT_DECLINE_DB = 1.0
#: and it is finished unless coding it at that point costs more than this, dB (PSNR of
#: the float model minus that of the file it makes): a model sized for 2 bits per grid
#: value loses that much only where the volume needs finer values than that sizing
#: affords (smooth fields at high PSNR), where the default codec does better.
RATE_CODING_LOSS_DB = 2.4
#: The pilot's float PSNRs are taken on every this-many-th voxel along each axis.
FLOAT_PSNR_STRIDE = 2


def rate_is_default(codec: Any) -> bool:
    """Whether ``codec`` leaves the model's sizing to ``encode``: no ``rate`` or
    ``grid_bits`` of its own and the default (interp) grid coder, so ``rate="auto"``
    applies."""
    if codec is None:
        return True
    return (isinstance(codec, dict) and "rate" not in codec and "grid_bits" not in codec
            and codec.get("grids", "interp") == "interp")


def rate_candidates(codec: Dict[str, Any]) -> List[Optional[Dict[str, Any]]]:
    """The ``codec`` settings of the two candidates ``codec={"rate": "auto"}`` chooses
    from: the default codec and rate-aware fitting (:data:`AUTO_RATE`), each with
    ``codec``'s other fields."""
    rest = dict(codec)
    if rest.pop("rate") != "auto":
        raise NeurvolInputError("codec rate= must be a number >= 0 or 'auto'")
    if rest.get("grids", "interp") != "interp":
        raise NeurvolInputError("codec rate='auto' tries rate-aware fitting, which needs "
                                "grids='interp'")
    return [rest or None, {**AUTO_RATE, **rest, "rate": AUTO_RATE["rate"]}]


def float_psnr(model: VolumeModel, data: torch.Tensor,
               valid: Optional[torch.Tensor] = None) -> float:
    """PSNR of ``model``'s float values (a CPU model in eval mode) on the (``valid``)
    voxels of ``data`` (normalized), every :data:`FLOAT_PSNR_STRIDE`-th along each axis:
    the pilot's rules compare it with margins of a dB or more, which an estimate on an
    eighth of the voxels keeps to within a few hundredths."""
    sse, voxels = model_sse(model, data.numpy(), valid=None if valid is None else valid.numpy(),
                            stride=FLOAT_PSNR_STRIDE)
    if voxels == 0:     # a masked volume whose valid voxels all fall between the samples
        sse, voxels = model_sse(model, data.numpy(), valid=valid.numpy())
    return psnr_from_mse(sse / voxels)


def drop_gradients(model: VolumeModel) -> None:
    """Free ``model``'s gradients while it is not training (a fit sets them anew at its
    next step), so that they are not held beside a copy being coded."""
    for p in model.parameters():
        p.grad = None


def pilot_keeps(run: ModelFit, advance_to: Callable[[int], None],
                coded_psnr: Callable[[ModelFit], float],
                max_coding_loss: Optional[float] = None) -> bool:
    """Whether to finish the rate-aware fit ``run``: fit it to :data:`RATE_PILOT` of its
    steps (``advance_to(step)``) and code a copy as the file would store it (no
    fine-tune; ``coded_psnr(copy)``); keep it if its fit was stable (float PSNR at most
    :data:`RATE_PILOT_DECLINE_DB` below that at :data:`RATE_PILOT_EARLY`) and coding cost
    at most ``max_coding_loss`` dB (default :data:`RATE_CODING_LOSS_DB`). The one rule of
    single models and bricks (bricks pass their own bound,
    :data:`.brick_job.BRICK_CODING_LOSS_DB`)."""
    advance_to(int(RATE_PILOT_EARLY * run.settings.steps))
    early_psnr = float_psnr(copy.deepcopy(run.model).cpu().eval(), run.data, run.valid)
    advance_to(int(RATE_PILOT * run.settings.steps))
    drop_gradients(run.model)
    probe = dataclasses.replace(
        run, model=copy.deepcopy(run.model),
        # Learned pruning (smallify, vd) trains in the fine-tune; magnitude pruning to the
        # same fraction stands in for it here.
        codec=dataclasses.replace(run.codec, finetune=0.0, prune_method="magnitude"))
    probe.model.cpu().eval()
    fitted_psnr = float_psnr(probe.model, run.data, run.valid)
    coded = coded_psnr(probe)
    stable = fitted_psnr >= early_psnr - RATE_PILOT_DECLINE_DB
    bound = RATE_CODING_LOSS_DB if max_coding_loss is None else max_coding_loss
    keep = stable and fitted_psnr - coded <= bound
    log.info("encode: rate='auto' pilot at %d%% of the steps: the rate-aware model codes "
             "at %.2f dB from %.2f dB in float (%.2f dB at %d%%); %s",
             round(100 * RATE_PILOT), coded, fitted_psnr, early_psnr,
             round(100 * RATE_PILOT_EARLY),
             "finishing it" if keep else "fitting the default instead")
    return keep


def rate_pilot(rated: ModelFit, start_default: Callable[[], ModelFit], volume: Any,
               header: Dict[str, Any], budget: int, k0: int, quiet: bool,
               masked: Any = None) -> ModelFit:
    """A single model's choice (:func:`pilot_keeps`, the coded copy scored by the PSNR of
    the whole file it makes): ``rated``, fitted on to the pilot's end, or the default
    candidate ``start_default()`` starts. ``volume``, ``header``, ``budget``, ``k0``: the
    encode's; ``masked``: its :class:`~neurvol.encoding.masked.MaskedInput` or None."""
    desc = "fitting (rate-aware, pilot)"

    def coded_psnr(probe: ModelFit) -> float:
        return pack_file(probe, dict(header), volume, budget, k0,
                         steps=rated.fitting.step, masked=masked).fit_psnr

    keep = pilot_keeps(rated, lambda step: advance_with_bar(rated, step, quiet, desc),
                       coded_psnr)
    return rated if keep else start_default()
