"""A fixed reference workload, timed beside neurvol's own figures.

The machines we benchmark on are shared and noisy: a second measured at 14:00 is not a
second at 15:00. The same fixed work, timed in the same run, turns neurvol's seconds into
ratios ("encode took 11.2 reference units") that compare across runs and machines. The
work mixes what an encode and a query spend their time on: a small MLP trained with Adam
on random points (matmuls, autograd, optimiser), trilinear lookups, and numpy passes.
It never changes; change it only with a note in BENCHMARKS.md, since old ratios then
stop being comparable.
"""
from __future__ import annotations

import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F

#: Number of timed repetitions; the median is reported.
REPEATS = 3


def _work() -> float:
    gen = torch.Generator().manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 32),
                              torch.nn.ReLU(), torch.nn.Linear(32, 1))
    opt = torch.optim.Adam(mlp.parameters(), lr=1e-3)
    grid = torch.rand(1, 8, 24, 24, 24, generator=gen)
    x = torch.rand(16384, 3, generator=gen) * 2 - 1
    y = torch.rand(16384, generator=gen)
    t0 = time.perf_counter()
    for _ in range(60):
        feats = F.grid_sample(grid, x.view(1, -1, 1, 1, 3), align_corners=True).view(8, -1).t()
        loss = F.mse_loss(mlp(feats).squeeze(-1), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    a = np.random.default_rng(0).random(1 << 21)
    for _ in range(10):
        np.sort(a * 3.0 + 1.0)
    return time.perf_counter() - t0


def reference_seconds(repeats: int = REPEATS) -> float:
    """Median wall seconds of the fixed workload (about 0.3-1 s on a 2-core machine)."""
    _work()  # warm-up: thread pools, allocator
    return statistics.median(_work() for _ in range(max(1, repeats)))
