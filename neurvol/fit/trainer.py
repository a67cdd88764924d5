"""Fit a volume model to a normalized volume: Adam, warm-up + cosine schedule, MSE on voxels."""
from __future__ import annotations

import dataclasses
import logging
import math
import time
from typing import Any, Callable, Dict, List, Optional

import torch
import torch.nn.functional as F

from ..models import VolumeModel
from ..models.adam import FUSED_DEVICES, Adam, LambdaSchedule
from .prefetch import Prefetch
from .sampling import ErrorSampler, VoxelSampler

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class FitSettings:
    """Optimisation settings. ``steps`` batches of ``batch`` random voxels each."""

    steps: int = 1500
    batch: int = 65536
    lr: float = 3e-3
    warmup: float = 0.05
    # Weight of the gradient loss: MSE between the model's autograd gradient and the
    # target's finite-difference gradient, both per unit of normalized coordinate
    # (neurcomp's ``grad_lambda``). 0 turns it off (and costs nothing).
    grad_lambda: float = 0.0
    # "warmup_cosine" (default), or "step": lr x ``decay`` every ``decay_every`` steps
    # (neurcomp's published schedule: x0.2 every 20 passes over the volume).
    schedule: str = "warmup_cosine"
    decay: float = 0.2
    decay_every: int = 0
    # "uniform": every voxel equally likely; "error": three quarters of each batch drawn
    # where the running error is high, importance-weighted so the loss is still the
    # volume's MSE (:class:`~neurvol.fit.sampling.ErrorSampler`).
    sampling: str = "uniform"

    def __post_init__(self) -> None:
        if self.schedule not in ("warmup_cosine", "step"):
            raise ValueError(f"schedule must be 'warmup_cosine' or 'step', got {self.schedule!r}")
        if self.sampling not in ("uniform", "error"):
            raise ValueError(f"sampling must be 'uniform' or 'error', got {self.sampling!r}")
        if self.sampling == "error" and self.grad_lambda > 0:
            raise ValueError("sampling='error' does not combine with grad_lambda > 0 (the "
                             "gradient loss samples uniformly); use sampling='uniform'")


@dataclasses.dataclass
class FitResult:
    steps: int
    seconds: float
    final_loss: float


def warmup_cosine(steps: int, warmup: float, floor: float = 0.01) -> Callable[[int], float]:
    """lr factor: linear warm-up over ``warmup * steps`` steps, then cosine decay to ``floor``."""
    warm = max(1, int(round(warmup * steps)))

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        t = min(1.0, (step - warm) / max(1, steps - warm))
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * t))

    return factor


#: Draw each batch on a thread of its own during the step before (:mod:`.prefetch`): the
#: same batches, off the step's critical path.
PREFETCH = True

#: Devices whose Adam has a fused kernel: one pass over each parameter per step instead of
#: a dozen small ops (the per-step cost of many small tensors, e.g. amgsrn's transforms).
FUSED_ADAM_DEVICES = FUSED_DEVICES


def adam(groups: List[Dict[str, Any]], device: torch.device) -> Any:
    """Adam over ``groups`` of parameters on ``device``, fused where the device has it:
    :class:`neurvol.models.adam.Adam` (torch's bits without torch.optim's import of
    torch._dynamo), or ``torch.optim.Adam`` on devices without the fused kernel."""
    if torch.device(device).type in FUSED_ADAM_DEVICES:
        return Adam(groups, fused=True)
    return torch.optim.Adam(groups, fused=False)


def lr_schedule(opt: Any, factor: Callable[[int], float]) -> Any:
    """``factor(step)`` times each group's initial lr, for an optimizer of :func:`adam`."""
    if isinstance(opt, Adam):
        return LambdaSchedule(opt, factor)
    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def fit(
    model: VolumeModel,
    volume: torch.Tensor,
    settings: FitSettings,
    *,
    seed: int = 0,
    device: torch.device = torch.device("cpu"),
    progress: Optional[Callable[[int, float], None]] = None,
    stop: Optional[Callable[[int, float], bool]] = None,
    regularizer: Optional["Regularizer"] = None,
) -> FitResult:
    """Train ``model`` on ``volume`` ((D, H, W) float32 in [0, 1]) in place.

    ``progress(step, loss)`` is called every few steps (for a progress bar). ``stop(step,
    loss)``, called at the same steps, ends training early when it returns True (e.g. on a
    loss plateau); the result's ``steps`` counts the steps actually run. ``regularizer``,
    when given, adds its penalty to the data loss (e.g. :class:`~neurvol.fit.rate.GridRate`)
    and trains its own parameters along.
    """
    fitting = Fitting(model, volume, settings, seed=seed, device=device, regularizer=regularizer)
    fitting.run(progress=progress, stop=stop)
    return fitting.finish()


class Fitting:
    """A fit in progress, run in stages: :meth:`run` up to a step, look at the model (a
    copy of it: it is still training), :meth:`run` on, :meth:`finish`. The steps, their
    order and their random draws are those of one :func:`fit` call, so a fit stopped part
    way and resumed gives the same model. ``encode(codec={"rate": "auto"})`` uses it to fit
    two candidate models part way, compare them and finish only the better one."""

    def __init__(self, model: VolumeModel, volume: torch.Tensor, settings: FitSettings, *,
                 seed: int = 0, device: torch.device = torch.device("cpu"),
                 regularizer: Optional["Regularizer"] = None,
                 valid: Optional[torch.Tensor] = None, prefetch: Optional[bool] = None):
        # A model built with training options (e.g. neurcomp's grad_lambda) carries them here.
        overrides = getattr(model, "fit_overrides", None)
        if overrides:
            settings = dataclasses.replace(settings, **overrides)
        self.model, self.settings, self.device = model, settings, device
        self.regularizer = regularizer
        gen = torch.Generator().manual_seed(seed)
        model.init_from_volume(volume)
        model.to(device).train()
        self.weighted = settings.sampling == "error"
        # ``valid``: a masked volume's valid voxels (spec/mask.md), the only ones sampled.
        self.sampler = (ErrorSampler(volume, gen, valid=valid) if self.weighted
                        else VoxelSampler(volume, gen, valid))
        groups = list(model.param_groups(settings.lr))
        if regularizer is not None:
            regularizer.to(device).train()
            regularizer.begin(self.sampler.voxels)
            groups += regularizer.param_groups(settings.lr)
        self.opt = adam(groups, device)
        if settings.schedule == "step":
            every = settings.decay_every or settings.steps
            factor = lambda step: settings.decay ** (step // every)  # noqa: E731
        else:
            factor = warmup_cosine(settings.steps, settings.warmup)
        self.sched = lr_schedule(self.opt, factor)
        self.batch = min(settings.batch, self.sampler.voxels)
        # ``prefetch``: draw each batch beside the step before (None: :data:`PREFETCH`);
        # worth it where a core is idle beside the fit, not where others fit beside it.
        self._next: Optional[Prefetch[Any]] = Prefetch(
            self._draw, enabled=PREFETCH if prefetch is None else bool(prefetch) and PREFETCH)
        #: Steps run so far.
        self.step = 0
        self.stopped = False
        self.seconds = 0.0
        self.loss = math.nan

    def _draw(self) -> Any:
        """One batch of this fit's kind: ``(coords, values)``, plus the target's gradients
        (gradient loss) or the weights and blocks (error-driven sampling)."""
        if self.settings.grad_lambda > 0:
            return self.sampler.sample_with_gradient(self.batch)
        if self.weighted:
            return self.sampler.sample_weighted(self.batch)
        return self.sampler.sample(self.batch)

    @property
    def done(self) -> bool:
        return self.stopped or self.step >= self.settings.steps

    def run(self, until: Optional[int] = None,
            progress: Optional[Callable[[int, float], None]] = None,
            stop: Optional[Callable[[int, float], bool]] = None) -> None:
        """Run steps up to ``until`` (default: the last). ``progress`` / ``stop``: as for
        :func:`fit`; a ``stop`` that returns True ends the fit for good."""
        settings, model, sampler = self.settings, self.model, self.sampler
        device, regularizer = self.device, self.regularizer
        last = settings.steps if until is None else min(int(until), settings.steps)
        t0 = time.perf_counter()
        model.train()
        loss = None
        while not self.stopped and self.step < last:
            step = self.step
            grad_target = weights = None
            assert self._next is not None
            batch = self._next.take()
            if settings.grad_lambda > 0:
                coords, target, grad_target = batch
                grad_target = grad_target.to(device)
            elif self.weighted:
                coords, target, weights, blocks = batch
                weights = weights.to(device)
            else:
                coords, target = batch
            model.on_step(step, settings.steps)
            coords, target = coords.to(device), target.to(device)
            if grad_target is not None:
                coords.requires_grad_(True)
            pred = model(coords)
            if weights is None:
                loss = F.mse_loss(pred, target)
            else:
                sq_err = (pred - target).square()
                loss = (weights * sq_err).mean()
                # A masked volume's invalid draws (weight 0) carry no error.
                counted = None if sampler.valid is None else weights.detach().cpu() > 0
                sampler.record_error(blocks, sq_err.detach().cpu(), counted)
            if step + 1 < settings.steps:
                # The next batch depends on nothing after this point (errors recorded).
                self._next.ahead()
            if regularizer is not None:
                loss = loss + regularizer.penalty(loss.detach())
            if grad_target is not None:
                (grad,) = torch.autograd.grad(pred.sum(), coords, create_graph=True)
                loss = loss + settings.grad_lambda * F.mse_loss(grad, grad_target)
                coords = coords.detach()
            extra = model.extra_loss(coords, pred, target)
            if extra is not None:
                loss = loss + extra
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            self.sched.step()
            if regularizer is not None:
                regularizer.after_step()
            self.step += 1
            if (progress is not None or stop is not None) and (
                    step % 10 == 0 or step == settings.steps - 1):
                loss_value = float(loss.detach())
                if progress is not None:
                    progress(step + 1, loss_value)
                if stop is not None and stop(step + 1, loss_value):
                    self.stopped = True
        if loss is not None:
            self.loss = float(loss.detach())
        if regularizer is not None:
            # Paused (a pilot codes a copy of the model now) or done: its work buffers go.
            regularizer.release_buffers()
        self.seconds += time.perf_counter() - t0

    def finish(self) -> FitResult:
        """The fit's result; the model (and regularizer) left in eval mode. The optimizer
        state and the sampler are dropped (the model is coded next, beside them otherwise);
        the fit cannot be run on."""
        log.debug("fit: %d steps in %.1fs, final loss %.3g", self.step, self.seconds, self.loss)
        if self._next is not None:
            self._next.close()
            self._next = None
        self.model.eval()
        if self.regularizer is not None:
            self.regularizer.eval()
        self.opt = self.sched = self.sampler = None
        self.stopped = True
        return FitResult(steps=self.step, seconds=self.seconds, final_loss=self.loss)


class Regularizer(torch.nn.Module):
    """A term :func:`finetune` adds to the MSE, with parameters of its own that live
    outside the model (e.g. Smallify's neuron switches, variational dropout's variances):
    it acts on the model through hooks it installs itself, so the model's tensors (and
    its files) stay as they are. Subclasses override :meth:`penalty` and may override
    :meth:`param_groups` and :meth:`after_step`."""

    def param_groups(self, lr: float) -> List[Dict[str, Any]]:
        """Optimizer groups of the regularizer's own parameters (``lr``: the model's)."""
        return []

    def begin(self, voxels: int) -> None:
        """Called once before training, with the number of voxels trained on (the data
        set's size, e.g. to weigh a KL term per voxel)."""

    def penalty(self, mse: torch.Tensor) -> torch.Tensor:
        """The term added to the loss; ``mse``: this batch's data loss (detached), e.g.
        to scale the term to the data."""
        raise NotImplementedError

    def after_step(self) -> None:
        """Called after every optimizer step (e.g. to track parameter statistics)."""

    def release_buffers(self) -> None:
        """Called when a fit pauses or ends: drop work buffers that the next step makes
        anew (they would otherwise be held while the model is coded)."""


def finetune(
    model: VolumeModel,
    volume: torch.Tensor,
    *,
    steps: int,
    lr: float,
    trainable: Callable[[str], bool],
    batch: int = 65536,
    seed: int = 0,
    device: torch.device = torch.device("cpu"),
    regularizer: Optional[Regularizer] = None,
    valid: Optional[torch.Tensor] = None,
) -> FitResult:
    """Continue training the parameters whose names ``trainable`` accepts, the others held
    fixed (e.g. a feature grid already quantized to what the file will store, so the rest
    of the network learns to work with the stored grid: quantization-aware fine-tuning).

    No re-initialisation, no architecture schedule or extra loss: plain MSE, Adam, cosine
    decay from ``lr``; ``regularizer``, when given, adds its penalty to the MSE and trains
    its own parameters along (moved to ``device``; it stays there). The model is left in
    eval mode. ``valid``: a masked volume's valid voxels, the only ones sampled.
    """
    gen = torch.Generator().manual_seed(seed + 1)
    model.to(device).train()
    if regularizer is not None:
        regularizer.to(device).train()
    fixed = model.fixed_tensors() if isinstance(model, VolumeModel) else frozenset()
    params = [p for n, p in model.named_parameters() if trainable(n) and n not in fixed]
    frozen = [(p, p.requires_grad) for n, p in model.named_parameters()
              if not trainable(n) or n in fixed]
    for p, _ in frozen:
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    t0 = time.perf_counter()
    loss_value = math.nan
    try:
        if params and steps > 0:
            sampler = VoxelSampler(volume, gen, valid)
            groups = [{"params": params, "lr": lr}]
            if regularizer is not None:
                regularizer.begin(sampler.voxels)
                groups += regularizer.param_groups(lr)
            opt = adam(groups, device)
            sched = lr_schedule(opt, warmup_cosine(steps, 0.0))
            n = min(batch, sampler.voxels)
            for _ in range(steps):
                coords, target = sampler.sample(n)
                loss = F.mse_loss(model(coords.to(device)), target.to(device))
                if regularizer is not None:
                    loss = loss + regularizer.penalty(loss.detach())
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                if regularizer is not None:
                    regularizer.after_step()
            loss_value = float(loss.detach())
    finally:
        for p, flag in frozen:
            p.requires_grad_(flag)
        model.eval()
        if regularizer is not None:
            regularizer.eval()
    return FitResult(steps=steps if params else 0, seconds=time.perf_counter() - t0,
                     final_loss=loss_value)
