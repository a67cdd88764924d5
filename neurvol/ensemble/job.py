"""One brick job: read the brick, fit its model, compress it to its byte budget; redo a
failed fit.

Jobs are plain picklable dataclasses and :func:`run_brick_job` is a top-level function, so
the same job runs in-process, in a local process pool or on a Dask worker, and gives the
same bytes everywhere: its seed is derived from (seed, brick id), torch's thread count is
fixed for the job's duration, and model initialisation uses a private RNG state.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import math
import threading
import time
from typing import Any, Dict, Iterator, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import NeurvolBudgetError
from ..fit.evaluate import model_sse
from .source import SourceSpec, read_spec

Slices3 = Tuple[Tuple[int, int], Tuple[int, int], Tuple[int, int]]

_INIT_LOCK = threading.Lock()      # torch's global RNG is shared by threads of a process


def brick_seed(seed: int, brick: int) -> int:
    """The seed of brick ``brick``'s job: independent of executor, worker count, order."""
    digest = hashlib.blake2b(f"neurvol-brick:{seed}:{brick}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


@dataclasses.dataclass
class BrickJob:
    """Everything a worker needs to produce one brick's payload."""

    brick: int
    arch: str
    config: Dict[str, Any]
    fit: Dict[str, Any]                 # FitSettings fields
    seed: int                           # already derived with brick_seed
    budget: int                         # most payload bytes
    k0: int                             # first k-means level count tried
    lo: float                           # the volume's value range (normalisation)
    hi: float
    extent: Slices3                     # [start, stop) per axis, in the volume
    core: Slices3                       # owned voxels, relative to the extent
    source: SourceSpec = None           # where to read the extent (None: ``data``)
    data: Optional[np.ndarray] = None
    device: str = "cpu"
    threads: int = 1
    plateau: bool = True
    # (arch, config, fit) fitted in turn, each with another seed, while the best fit so far
    # has failed (see FALLBACK_MARGIN_DB); the brick keeps the model with the smallest error.
    fallbacks: List[Tuple[str, Dict[str, Any], Dict[str, Any]]] = dataclasses.field(
        default_factory=list)
    negligible_mse: float = 0.0         # a fit with a smaller MSE is never redone
    # CodecSettings fields (neurvol.pipeline): how the weights become bytes; None: k-means
    # for every tensor, no fine-tuning.
    codec: Optional[Dict[str, Any]] = None


@dataclasses.dataclass
class BrickResult:
    brick: int
    payload: bytes
    k: int
    steps: int          # fit steps run (all models tried)
    sse: float          # squared error on the core voxels, normalized units, quantized model
    voxels: int         # core voxel count
    seconds: float
    arch: str = ""      # the kept model (the job's own, or a fallback)
    config: Dict[str, Any] = dataclasses.field(default_factory=dict)
    tried: int = 1      # models fitted
    params: int = 0     # parameters of the kept model
    baseline_sse: float = 0.0   # core error of resampling through the first model's params


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the calling thread's torch ops on ``n`` threads, then restore its count.

    Torch's count is per OS thread (OpenMP's), plus a default that threads take at their
    first parallel op. Every scope sets its own thread's count: a shared count set by the
    first of concurrent scopes (brick jobs on a thread pool, e.g. dask's) left the others
    with whatever count they had, and the bytes of a brick depended on that race."""
    saved = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


class Plateau:
    """Early stop of a brick's fit: True once the brick is fitted beyond what matters, or
    once its loss stopped improving in the tail of the schedule.

    * ``floor``: the smoothed loss (normalized units; extra loss terms are >= 0, so it bounds
      the MSE) is below ``floor`` (default: 1e-5, an RMS error at 50 dB below the data
      range, the tolerance under which a brick is stored as a constant); watched after the
      warm-up (5 %).
    * plateau: the smoothed loss improved by less than ``tol`` (relative) over ``patience``
      consecutive windows of ``steps // 20`` steps, watched from ``start_frac`` of the steps
      on. Not earlier: with warm-up + cosine the loss keeps falling while the learning rate
      decays, and architectures add loss terms that stay flat for a while (amgsrn's
      grid-density loss, 10-70 % of the steps). Watching from 30 % of the steps stopped
      every brick of bio_embryo[::2] (2x2x2, 1500 steps) at step 481 and cost 0.5 dB.
    """

    def __init__(self, steps: int, tol: float = 0.01, patience: int = 2,
                 start_frac: float = 0.75, floor: float = 1e-5):
        self.window = max(20, steps // 20)
        self.warm = max(1, steps // 20)
        self.start = int(start_frac * steps)
        self.tol, self.patience, self.floor = tol, patience, floor
        self.ema: Optional[float] = None
        self.tail_ema: Optional[float] = None
        self.best = math.inf
        self.next_check = self.start + self.window
        self.stale = 0

    def __call__(self, step: int, loss: float) -> bool:
        self.ema = loss if self.ema is None else 0.8 * self.ema + 0.2 * loss
        if step >= self.warm and self.ema < self.floor:
            return True
        if step < self.start:          # earlier losses are not comparable (see above)
            return False
        self.tail_ema = loss if self.tail_ema is None else 0.8 * self.tail_ema + 0.2 * loss
        if step < self.next_check:
            return False
        self.next_check = step + self.window
        if self.tail_ema < self.best * (1.0 - self.tol):
            self.best, self.stale = self.tail_ema, 0
        else:
            self.stale += 1
        return self.stale >= self.patience


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


#: A brick's fit has failed when its quantized model is not at least this much better (dB,
#: on the core voxels) than trilinear resampling through as many vertices as the model has
#: parameters (fvsrn and amgsrn both start from such data). Measured at ratio 100: sound
#: fits were 2.2-10 dB above it (bricks of bio_embryo and sim_richtmyer_meshkov_t20, 2x2x2
#: of the 128^3 subsamples, 4x4x4 of the 256^3 volumes), the hardest bricks of the latter
#: 1.4-1.8 dB (refitting them did not help); amgsrn fits whose grids had shrunk onto a
#: feature, leaving much of the brick uncovered, 0.3-1.2 dB (seed-dependent; up to 6 dB
#: lost on the brick), and 8 dB below it on a flat brick with one blob (a 64^3 crop of RM
#: at ratio 10) or with a grid step search that ended far too coarse (Lorenzo grids).
FALLBACK_MARGIN_DB = 1.5
#: ... unless the model is this good anyway (the tolerance of constant bricks, 50 dB) or
#: its error is negligible in the volume's (``BrickJob.negligible_mse``).
_GOOD_ENOUGH_MSE = 1e-5


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
    """Fit one model to the brick, compress it to the brick's budget (the weight pipeline
    of a single model: k-means, Lorenzo grids, quantization-aware fine-tuning, ...),
    measure the stored model's error."""
    from ..api import FINETUNE_LR         # lazy: api imports this package
    from ..compress import decode_payload
    from ..fit import FitSettings, finetune, fit
    from ..models import get_architecture
    from ..pipeline import CodecSettings, compress_model, fit_regularizer

    arch = get_architecture(arch_name)
    config = arch.config_cls.from_dict(config_dict)
    with _INIT_LOCK, torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = arch.build(config)
    settings = FitSettings(**fit_dict)
    stop = Plateau(settings.steps) if job.plateau else None
    data = torch.from_numpy(target)
    device = torch.device(job.device)
    codec = (CodecSettings(**{k: tuple(v) if k == "coders" else v for k, v in job.codec.items()})
             if job.codec is not None else CodecSettings(grids="kmeans", finetune=0.0))
    result = fit(model, data, settings, seed=seed, device=device, stop=stop,
                 regularizer=fit_regularizer(model, codec, settings.steps))
    model = model.cpu()
    tune_steps = int(round(codec.finetune * settings.steps))

    def tune(trainable: Any, regularizer: Any = None) -> None:
        if tune_steps > 0:      # its sampler has a private generator: no global RNG state
            finetune(model, data, steps=tune_steps, lr=settings.lr * FINETUNE_LR,
                     trainable=trainable, batch=settings.batch, seed=seed, device=device,
                     regularizer=regularizer)
            model.cpu()

    specs = [(n, tuple(t.shape)) for n, t in model.state_dict().items()]

    def stored_sse(payload: bytes) -> float:
        """Core squared error of the model a payload stores."""
        stored = copy.deepcopy(model)
        decoded = decode_payload(payload, specs)
        stored.load_state_dict({n: torch.from_numpy(decoded[n]) for n, _ in specs})
        return model_sse(stored, target, job.core)[0]

    packed = compress_model(model, len, job.budget, job.k0, codec, finetune=tune,
                            score=stored_sse)
    if packed.size > job.budget:
        raise NeurvolBudgetError(
            f"brick {job.brick}: its {arch_name} model needs {packed.size} bytes even at the "
            f"coarsest quantization, but its share of the budget is {job.budget}; use a "
            "smaller ratio or fewer, larger bricks")
    decoded = decode_payload(packed.payload, specs)
    model.load_state_dict({n: torch.from_numpy(decoded[n]) for n, _ in specs})
    sse, voxels = model_sse(model, target, job.core)
    return BrickResult(job.brick, packed.payload, packed.k, result.steps, sse,
                       voxels, 0.0, arch=arch_name, config=dict(config_dict),
                       params=sum(int(t.numel()) for t in model.state_dict().values()))
