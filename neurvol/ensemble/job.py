"""One brick job: read the brick, fit its model, quantize it to its byte budget.

Jobs are plain picklable dataclasses and :func:`run_brick_job` is a top-level function, so
the same job runs in-process, in a local process pool or on a Dask worker, and gives the
same bytes everywhere: its seed is derived from (seed, brick id), torch's thread count is
fixed for the job's duration, and model initialisation uses a private RNG state.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import math
import threading
import time
from typing import Any, Dict, Iterator, Optional, Tuple

import numpy as np
import torch

from ..errors import NeurvolBudgetError
from .source import SourceSpec, read_spec

Slices3 = Tuple[Tuple[int, int], Tuple[int, int], Tuple[int, int]]

_INIT_LOCK = threading.Lock()      # torch's global RNG is shared by threads of a process
_THREADS_LOCK = threading.Lock()
_threads_active = 0
_threads_saved = 0


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


@dataclasses.dataclass
class BrickResult:
    brick: int
    payload: bytes
    k: int
    steps: int
    sse: float          # squared error on the core voxels, normalized units, quantized model
    voxels: int         # core voxel count
    seconds: float


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run with ``torch.set_num_threads(n)``; nested/concurrent scopes in one process share
    the setting and the last one out restores the previous value."""
    global _threads_active, _threads_saved
    with _THREADS_LOCK:
        if _threads_active == 0:
            _threads_saved = torch.get_num_threads()
            torch.set_num_threads(n)
        _threads_active += 1
    try:
        yield
    finally:
        with _THREADS_LOCK:
            _threads_active -= 1
            if _threads_active == 0:
                torch.set_num_threads(_threads_saved)


class Plateau:
    """Early stop: True once the smoothed loss improved by less than ``tol`` (relative)
    over ``patience`` consecutive windows, after at least ``min_frac`` of the steps."""

    def __init__(self, steps: int, tol: float = 0.01, patience: int = 3, min_frac: float = 0.3):
        self.window = max(20, steps // 20)
        self.min_step = int(min_frac * steps)
        self.tol, self.patience = tol, patience
        self.ema: Optional[float] = None
        self.best = math.inf
        self.next_check = self.window
        self.stale = 0

    def __call__(self, step: int, loss: float) -> bool:
        self.ema = loss if self.ema is None else 0.8 * self.ema + 0.2 * loss
        if step < self.next_check:
            return False
        self.next_check = step + self.window
        if self.ema < self.best * (1.0 - self.tol):
            self.best, self.stale = self.ema, 0
        else:
            self.stale += 1
        return step >= self.min_step and self.stale >= self.patience


def run_brick_job(job: BrickJob) -> BrickResult:
    """Fit and quantize one brick. Deterministic for a given job (see module docstring)."""
    from ..api import _largest_fitting_k, _plans   # lazy: api imports this package
    from ..compress import decode_payload, encode_tensors
    from ..fit import FitSettings, fit
    from ..models import get_architecture

    t0 = time.perf_counter()
    with torch_threads(job.threads):
        sl = tuple(slice(a, b) for a, b in job.extent)
        raw = job.data if job.data is not None else read_spec(job.source, sl)  # type: ignore[arg-type]
        scale = 1.0 / (job.hi - job.lo)
        target = ((np.asarray(raw, dtype=np.float64) - job.lo) * scale).astype(np.float32)
        del raw
        data = torch.from_numpy(target)
        arch = get_architecture(job.arch)
        config = arch.config_cls.from_dict(job.config)
        with _INIT_LOCK, torch.random.fork_rng(devices=[]):
            torch.manual_seed(job.seed)
            model = arch.build(config)
        settings = FitSettings(**job.fit)
        stop = Plateau(settings.steps) if job.plateau else None
        result = fit(model, data, settings, seed=job.seed, device=torch.device(job.device),
                     stop=stop)
        model = model.cpu()
        arrays = [(n, t.detach().numpy()) for n, t in model.state_dict().items()]

        def quantized(k: int):
            payload = encode_tensors(arrays, _plans(model, k), seed=job.seed)
            return payload, len(payload)

        k, (payload, size) = _largest_fitting_k(quantized, job.k0, job.budget)
        if size > job.budget:
            raise NeurvolBudgetError(
                f"brick {job.brick}: its {job.arch} model needs {size} bytes even with 2 "
                f"levels per tensor, but its share of the budget is {job.budget}; use a "
                "smaller ratio or fewer, larger bricks")
        specs = [(n, tuple(a.shape)) for n, a in arrays]
        decoded = decode_payload(payload, specs)
        model.load_state_dict({n: torch.from_numpy(decoded[n]) for n, _ in specs})
        sse, voxels = _core_error(model, target, job.core)
    return BrickResult(job.brick, payload, k, result.steps, sse, voxels,
                       time.perf_counter() - t0)


def _core_error(model: torch.nn.Module, target: np.ndarray, core: Slices3) -> Tuple[float, int]:
    """Sum of squared errors of the (quantized) model over the core voxels, as the reader
    evaluates them (values clamped to [0, 1])."""
    shape = target.shape
    axes = [np.arange(a, b, dtype=np.float64) * (2.0 / (n - 1)) - 1.0
            for (a, b), n in zip(core, shape)]
    sub = target[tuple(slice(a, b) for a, b in core)]
    sse = 0.0
    with torch.inference_mode():
        for z in range(sub.shape[0]):
            yy, xx = np.meshgrid(axes[1], axes[2], indexing="ij")
            pts = np.stack([np.full(yy.size, axes[0][z]), yy.ravel(), xx.ravel()], axis=1)
            pred = model(torch.from_numpy(pts.astype(np.float32))).float().numpy()
            err = np.clip(pred, 0.0, 1.0) - sub[z].ravel()
            sse += float(np.dot(err.astype(np.float64), err.astype(np.float64)))
    return sse, int(sub.size)
