"""Brick jobs: what a worker gets and returns, and what makes its bytes reproducible.

Jobs are plain picklable dataclasses, run by a top-level function the encoder gives
:func:`neurvol.ensemble.run_jobs` (``neurvol.encoding.brick_job.run_brick_job``), so the
same job runs in-process, in a local process pool or on a Dask worker, and gives the same
bytes everywhere: its seed is derived from (seed, brick id) (:func:`brick_seed`), torch's
thread count is fixed for the job's duration (:func:`torch_threads`), and model
initialisation uses a private RNG state.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import math
from typing import Any, Dict, Iterator, List, Optional, Tuple

import numpy as np
import torch

from .source import SourceSpec

Slices3 = Tuple[Tuple[int, int], Tuple[int, int], Tuple[int, int]]


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
    # Draw each batch beside the step before (neurvol.fit.prefetch): only where the fit has
    # the machine to itself (one local worker); beside other workers it competes for cores.
    prefetch: bool = False
    plateau: bool = True
    # (arch, config, fit) fitted in turn, each with another seed, while the best fit so far
    # has failed (see FALLBACK_MARGIN_DB); the brick keeps the model with the smallest error.
    fallbacks: List[Tuple[str, Dict[str, Any], Dict[str, Any]]] = dataclasses.field(
        default_factory=list)
    negligible_mse: float = 0.0         # a fit with a smaller MSE is never redone
    # CodecSettings fields (neurvol.pipeline): how the weights become bytes; None: the
    # CodecSettings defaults.
    codec: Optional[Dict[str, Any]] = None
    # (config, CodecSettings fields) of a rate-aware model of ``arch`` that a pilot fit
    # tries first (``neurvol.encoding.pilot``); None: no pilot.
    pilot: Optional[Tuple[Dict[str, Any], Dict[str, Any]]] = None


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
    rate_aware: bool = False    # the kept model is the pilot's (``BrickJob.pilot``)


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
      grid-density loss, 10-70 % of the steps), which an earlier watch mistakes for a
      plateau.
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
